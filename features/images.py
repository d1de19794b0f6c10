"""Decode any image source into a uint8 RGB array: the single image-decoding path of stage one.

Every image, whatever its origin, goes through the same steps in this order:

1. **Source.** A path (``str``, ``os.PathLike``, or ``bytes`` for names that are not valid
   UTF-8), encoded bytes held in memory, or a uint8 array given inline (``(H, W)`` grey or
   ``(H, W, 3)`` RGB, e.g. Kaggle keypoint CSV rows). A ``bytes`` object is read as encoded
   image data when it contains a NUL byte or is longer than 4096 bytes (every real image
   format has a NUL in its first 16 bytes; a path can never contain one), otherwise as a path.
   Or a blob (any object with ``read_image_bytes()`` and ``name``: a tar member, a file on an
   fsspec filesystem, a parquet cell; :mod:`features.reader.fs`), read in the decoding thread:
   ``OSError`` from it means ``missing``, ``EOFError`` means ``truncated``.
2. **Format by content.** Pillow sniffs the bytes; the file extension is ignored, so a PNG
   named ``.jpg`` decodes fine and an HTML page named ``.jpg`` is rejected as ``not_image``.
   JPEG, PNG, BMP and GIF (first frame only) are expected; anything else Pillow opens works.
3. **Decompression-bomb check.** ``Image.open`` reads only the header; the declared
   width x height is compared with ``max_pixels`` before any pixel memory is allocated.
   The default, 178,956,970, is exactly where Pillow's own ``DecompressionBombError`` fires
   (twice ``Image.MAX_IMAGE_PIXELS``), so both checks agree; a larger ``max_pixels`` cannot
   lift Pillow's limit (its error is reported as ``too_large`` too). Images between Pillow's
   warning and error limits still trigger its ``DecompressionBombWarning``; we do not
   silence it because warning filters are process-global and not thread-safe.
4. **JPEG draft.** When a resize target is given and a JPEG is at least twice the target in
   both dimensions, libjpeg decodes directly at 1/2, 1/4 or 1/8 scale (DCT scaling, never
   below the target), which is several times faster on multi-megapixel photos. The requested
   size accounts for EXIF rotation (orientations 5-8 swap width and height).
5. **EXIF orientation** is applied (the ``ImageOps.exif_transpose`` mapping), so all geometry
   below, including the reported original size, is the image as a viewer displays it.
6. **Mode to RGB**, one rule per mode: 16-bit grey (``I;16*``, ``I``) is scaled to 8 bits by
   ``value >> 8`` (i.e. divided by 256) and clipped; float ``F`` is rounded and clipped to
   0..255; anything with alpha or a transparency key (``LA``, ``RGBA``, ``P`` + transparency,
   ...) is composited onto black, so the result is defined and the arbitrary colour hidden
   under transparent pixels never leaks in; ``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``... use
   Pillow's conversion (grey is replicated to three channels). 16-bit RGB PNGs arrive from
   Pillow already reduced to 8 bits (high byte), i.e. the same ``>> 8`` rule.
7. **Resize** to exactly ``(height, width)``, aspect ratio not preserved (like Keras
   ``flow_from_directory(target_size=...)``), bilinear with antialiasing (Pillow's
   ``BILINEAR`` widens its kernel when downscaling). An image already at the target size is
   returned untouched, bit for bit.

Failures raise :class:`BadImage` with a reason code from :data:`REASONS` (``decode`` returns
the code instead). Truncated files are always errors: ``ImageFile.LOAD_TRUNCATED_IMAGES`` is
never set. There is no module-level mutable state, so calls are safe from a thread pool
(Pillow releases the GIL while decoding).
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

#: Same limit as Pillow's DecompressionBombError: 2 x Image.MAX_IMAGE_PIXELS (2 x 89,478,485).
DEFAULT_MAX_PIXELS = 178_956_970

#: Reason code -> one-line description, for reports of skipped images.
REASONS: dict[str, str] = {
    "missing": "file not found or not readable",
    "empty": "zero-byte file",
    "not_image": "content is not a known image format (e.g. an HTML page saved as .jpg)",
    "truncated": "image data ends early (incomplete download or copy)",
    "too_large": "declared pixel count exceeds max_pixels (possible decompression bomb)",
    "decode_error": "the decoder failed for another reason (corrupt data, unsupported variant)",
}

# Longest bytes object still taken as a path (Linux PATH_MAX).
_MAX_PATH_BYTES = 4096
_SIXTEEN_BIT_GREY = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_EXIF_ORIENTATION = 0x0112
# Same table as ImageOps.exif_transpose; applied directly because exif_transpose also
# re-serialises the EXIF block, which we discard anyway and which can fail on odd tags.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class BadImage(Exception):
    """An undecodable image: ``reason`` is a key of REASONS, ``detail`` names the file."""

    def __init__(self, reason: str, detail: str):
        if reason not in REASONS:
            raise ValueError(f"unknown BadImage reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self):
        # Default pickling would call __init__ with the formatted message only; keep both
        # fields so the exception survives process pools.
        return (BadImage, (self.reason, self.detail))


def load_rgb(src, size=None, *, max_pixels=DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``src`` to a C-contiguous uint8 (H, W, 3) array, resized to ``size=(h, w)``."""
    return _decode(src, _check_size(size), max_pixels)[0]


def decode(src, size=None, *, max_pixels=DEFAULT_MAX_PIXELS):
    """Like load_rgb, never raising on bad data: (arr, (h0, w0), "") or (None, (0, 0), reason)."""
    target = _check_size(size)  # a bad size is a programming error, so it still raises
    try:
        array, orig = _decode(src, target, max_pixels)
    except BadImage as exc:
        return None, (0, 0), exc.reason
    return array, orig, ""


def name_bad(pairs, shown: int = 10) -> str:
    """``"a.jpg (truncated); b.png (empty); and 3 more"`` for a list of (path, reason) pairs."""
    pairs = list(pairs)
    more = f"; and {len(pairs) - shown} more" if len(pairs) > shown else ""
    return "; ".join(f"{p} ({r})" for p, r in pairs[:shown]) + more


def mirror(arr: np.ndarray) -> np.ndarray:
    """Left-right mirror of a decoded (H, W, 3) uint8 image, as a new C-contiguous array.

    Pillow flips in C, about 10x faster than numpy's strided ``arr[:, ::-1]`` copy (1.5 vs 19 ms
    per batch of 32 at 224 px, measured): the stage-one decode threads use it for the mirrored view.
    """
    return np.array(Image.fromarray(arr).transpose(Image.Transpose.FLIP_LEFT_RIGHT), dtype=np.uint8)


def _check_size(size):
    if size is None:
        return None
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be None or (height, width), got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


def _decode(src, target, max_pixels):
    if isinstance(src, np.ndarray):
        return _from_array(src, target)
    if isinstance(src, (bytearray, memoryview)) or (isinstance(src, bytes) and _is_data(src)):
        data = bytes(src)
        name = f"<{len(data)} bytes in memory>"
        if not data:
            raise BadImage("empty", name)
        return _from_stream(io.BytesIO(data), name, target, max_pixels)
    if hasattr(src, "read_image_bytes"):  # a tar member, an object on an fsspec filesystem, a parquet cell
        return _from_blob(src, target, max_pixels)
    if not isinstance(src, (str, bytes, os.PathLike)):
        raise TypeError(f"cannot decode an image from {type(src).__name__}")
    name = _display_name(src)
    try:
        f = open(src, "rb")  # noqa: SIM115  (closed by the with-block below)
    except (OSError, ValueError) as exc:  # ValueError: embedded NUL in a str path
        raise BadImage("missing", f"{name}: {getattr(exc, 'strerror', None) or exc}") from None
    with f:
        if os.fstat(f.fileno()).st_size == 0:
            raise BadImage("empty", name)
        return _from_stream(f, name, target, max_pixels)


def _from_blob(blob, target, max_pixels):
    # The bytes are fetched here, in the decode thread, so remote reads overlap like local ones do.
    name = _display_name(blob.name)
    try:
        data = blob.read_image_bytes()
    except EOFError as exc:
        raise BadImage("truncated", f"{name}: {exc or 'unexpected end of file'}") from None
    except (OSError, ValueError) as exc:
        raise BadImage("missing", f"{name}: {getattr(exc, 'strerror', None) or exc}") from None
    if not data:
        raise BadImage("empty", name)
    return _from_stream(io.BytesIO(data), name, target, max_pixels)


def _is_data(b: bytes) -> bool:
    # Empty bytes are reported as empty data rather than as a path "" that is missing.
    return not b or b"\0" in b or len(b) > _MAX_PATH_BYTES


def _display_name(path) -> str:
    # Undecodable bytes become \xNN escapes so the message is always printable UTF-8.
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _from_stream(fp, name, target, max_pixels):
    try:
        with Image.open(fp) as img:
            w, h = img.size  # header only: no pixel data read yet
            if max_pixels is not None and w * h > max_pixels:
                raise BadImage("too_large", f"{name}: {w}x{h} = {w * h} pixels > {max_pixels}")
            if target is not None and img.format in ("JPEG", "MPO"):
                _draft(img, target, _orientation(img))
            img.load()
            # Read after load: PNG and WebP may store EXIF after the pixel data.
            orientation = _orientation(img)
            shown = img.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else img
            if orientation >= 5:
                w, h = h, w
            # Finish inside the with-block: nothing may touch pixels of a closed image.
            out = _finish(_to_rgb(shown), target)
    except BadImage:
        raise
    except Image.DecompressionBombError as exc:
        raise BadImage("too_large", f"{name}: {exc}") from None
    except Image.DecompressionBombWarning as exc:  # only raised under -W error
        raise BadImage("too_large", f"{name}: {exc}") from None
    except Image.UnidentifiedImageError:
        raise BadImage("not_image", f"{name}: not a recognised image format") from None
    except EOFError as exc:
        raise BadImage("truncated", f"{name}: {exc or 'unexpected end of file'}") from None
    except Exception as exc:  # noqa: BLE001  (anything Pillow raises is a per-file failure)
        # Pillow reports truncation as OSError("image file is truncated ...") or
        # OSError("Truncated File Read"); there is no dedicated exception class.
        truncated = isinstance(exc, OSError) and "truncated" in str(exc).lower()
        reason = "truncated" if truncated else "decode_error"
        raise BadImage(reason, f"{name}: {type(exc).__name__}: {exc}") from None
    return out, (h, w)


def _orientation(img) -> int:
    # A malformed EXIF block should not cost us an otherwise good image: treat it as upright.
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _draft(img, target, orientation):
    # draft() must be called before load(); it works in stored (pre-rotation) coordinates,
    # so for orientations 5-8 the displayed target width is the stored height.
    th, tw = target
    if orientation >= 5:
        th, tw = tw, th
    w, h = img.size
    if w >= 2 * tw and h >= 2 * th:
        # libjpeg picks the largest 1/2, 1/4, 1/8 scale keeping both sides >= the request.
        img.draft("RGB", (tw, th))


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SIXTEEN_BIT_GREY:
        # Divide by 256 (keep the high byte); "I" may hold values beyond 16 bits, hence clip.
        grey = np.asarray(img).astype(np.int64) >> 8
        return _grey_to_rgb(np.clip(grey, 0, 255))
    if mode == "F":
        grey = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)
        return _grey_to_rgb(np.clip(np.rint(grey), 0, 255))
    if img.has_transparency_data:  # LA, La, PA, RGBA, RGBa, or a tRNS/GIF transparency key
        # Composite onto black: a defined result, independent of the colour stored under
        # transparent pixels, and premultiplied so resizing cannot bleed hidden colours.
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        rgb = (rgba[..., :3] * rgba[..., 3:] + 127) // 255
        return Image.fromarray(rgb.astype(np.uint8))
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(grey, dtype=np.uint8)).convert("RGB")


def _from_array(arr: np.ndarray, target):
    shape = arr.shape
    ok_shape = arr.ndim == 2 or (arr.ndim == 3 and shape[2] == 3)
    if arr.dtype != np.uint8 or not ok_shape or 0 in shape:
        raise BadImage(
            "decode_error",
            f"<inline array {arr.dtype} {shape}>: expected uint8 (H, W) or (H, W, 3)",
        )
    img = Image.fromarray(np.ascontiguousarray(arr))  # "L" or "RGB"
    return _finish(_to_rgb(img), target), (int(shape[0]), int(shape[1]))


def _finish(img: Image.Image, target) -> np.ndarray:
    if target is not None and img.size != (target[1], target[0]):
        img = img.resize((target[1], target[0]), Image.Resampling.BILINEAR)
    # np.array (not asarray) so callers get a writable array they own.
    out = np.array(img, dtype=np.uint8)
    assert out.ndim == 3 and out.shape[2] == 3 and out.flags.c_contiguous
    return out


def input_contract(size, *, resize_in_model: bool = False) -> dict:
    """What pixels a model fed by this module expects: the decode and resize above, as JSON-able data.

    ``bneck export`` puts it in its report and in ``model.json`` so an app that feeds an exported
    model can reproduce :func:`load_rgb` (or, with ``resize_in_model``, only decode and hand over
    uint8 pixels of any size). ``size`` is the model's (height, width).
    """
    h, w = _check_size(size)
    contract = {
        "size": [h, w],
        "layout": "NHWC",
        "channel_order": "RGB",
        "dtype": "uint8" if resize_in_model else "float32",
        "range": [0, 255],
        "resize": "bilinear, antialiased (Pillow Image.resize with Resampling.BILINEAR, which widens its "
                  "kernel when downscaling), to exactly the size: aspect ratio not preserved, no crop; "
                  "rounded to uint8",
        "jpeg_reduced_decode": "a JPEG at least twice the size in both dimensions is decoded by libjpeg at "
                               "1/2, 1/4 or 1/8 scale (Pillow Image.draft('RGB', (width, height)), never below "
                               "the size) before the resize",
        "exif_orientation": "applied before the resize",
        "alpha": "composited onto black",
        "grey": "replicated to three channels; 16-bit grey scaled by 1/256",
        "decoder": "features.images.load_rgb(path, size)",
        "resize_in_model": bool(resize_in_model),
    }
    if resize_in_model:
        contract["note"] = ("the model takes uint8 RGB images of any height and width and resizes them itself "
                            "(Keras Resizing, bilinear, antialias=True); JPEGs decoded at full size differ "
                            "slightly from bneck's reduced-size decode (see docs/model-dir.md)")
    else:
        contract["note"] = (f"feed float32 RGB pixels 0..255 at exactly {h}x{w}, decoded and resized as above; "
                            "plain Pillow without the reduced-size JPEG decode gives slightly different pixels")
    return contract


def default_workers() -> int:
    """Decode threads: one per core, at most 8. Decoding shares the cores with the model, and one
    thread per core keeps decode ahead of inference without starving oneDNN (measured in bench/)."""
    return max(1, min(8, (os.cpu_count() or 2)))


def decode_pool(workers: int | None = None, name: str = "decode"):
    """The one thread pool every image decode in bneck runs on (Pillow releases the GIL while it decodes)."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(workers or default_workers(), thread_name_prefix=name)


def decode_all(sources, size=None, *, workers: int | None = None, pool=None) -> list:
    """:func:`decode` of every source in order, on ``pool`` or a fresh :func:`decode_pool`."""
    if pool is not None:
        return list(pool.map(lambda s: decode(s, size), sources))
    with decode_pool(workers) as own:
        return list(own.map(lambda s: decode(s, size), sources))

"""A corpus of hostile and odd image files, generated in the test (nothing downloaded or committed).

``CASES`` lists every kind with the outcome the pipeline must give it: ``""`` (valid, decoded),
a reason code of ``features.images.REASONS`` (kept as an invalid row), or ``None`` (no row at
all: hidden files and directories, special files).
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, bit_depth: int = 8, colour_type: int = 2, raw: bytes = b"") -> bytes:
    """A hand-made PNG: any declared size (e.g. a decompression bomb header on ~100 bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw))
            + _chunk(b"IEND", b""))


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise(rng, h, w, c=3):
    return rng.integers(0, 256, (h, w, c) if c else (h, w), dtype=np.uint8)


def _frombytes(mode: str, arr: np.ndarray) -> Image.Image:
    return Image.frombytes(mode, (arr.shape[1], arr.shape[0]), arr.tobytes())


def _jpeg_bomb(rng) -> bytes:
    """A small valid JPEG whose SOF header is patched to declare 60000 x 60000 pixels."""
    data = bytearray(_encode(Image.fromarray(_noise(rng, 16, 16)), "JPEG"))
    i = data.index(b"\xff\xc0")  # SOF0: marker, length (2), precision (1), height (2), width (2)
    data[i + 5:i + 9] = struct.pack(">HH", 60000, 60000)
    return bytes(data)


def _exif_rotated(rng) -> bytes:
    img = Image.fromarray(_noise(rng, 20, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: displayed 40 x 20 (h x w)
    return _encode(img, "JPEG", exif=exif.tobytes())


def _gif_animated(rng) -> bytes:
    frames = [Image.fromarray(_noise(rng, 24, 24)).convert("P") for _ in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _palette_transparent(rng) -> bytes:
    img = Image.fromarray(_noise(rng, 24, 24)).convert("P")
    return _encode(img, "PNG", transparency=0)


def build(rng) -> list[tuple[str, bytes | None, str | None, str]]:
    """(relative path, file content or None for a special file, expected reason, description)."""
    def good_png():  # distinct content per case, so a row shifted onto another is detected
        return _encode(Image.fromarray(_noise(rng, 32, 32)), "PNG")

    jpeg = _encode(Image.fromarray(_noise(rng, 64, 64)), "JPEG", quality=90)
    jpeg2 = _encode(Image.fromarray(_noise(rng, 48, 64)), "JPEG", quality=90)
    png_big = _encode(Image.fromarray(_noise(rng, 64, 64)), "PNG")
    g16 = Image.fromarray(_noise(rng, 24, 24, 0).astype(np.uint16) * 257)  # mode I;16
    return [
        # --- invalid rows, each with its reason code
        ("bad/empty.jpg", b"", "empty", "zero-byte file"),
        ("bad/random.jpg", rng.integers(0, 256, 4000, dtype=np.uint8).tobytes(), "not_image", "random bytes"),
        ("bad/page.jpg", b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n", "not_image",
         "an HTML error page saved as .jpg"),
        ("bad/notes.txt", b"just some text\n", "not_image", "a text file in a class folder"),
        ("bad/trunc.jpg", jpeg[: len(jpeg) // 2], "truncated", "JPEG cut in half"),
        ("bad/trunc_header.jpg", jpeg[:40], "truncated", "JPEG cut inside its headers"),
        ("bad/trunc.png", png_big[: len(png_big) // 2], "truncated", "PNG cut in half"),
        ("bad/bomb.png", png_bytes(100_000, 100_000), "too_large",
         "decompression bomb: 10^10 pixels declared in a 70-byte PNG"),
        ("bad/bomb.jpg", _jpeg_bomb(rng), "too_large", "decompression bomb: JPEG header declaring 60000x60000"),
        ("bad/dangling.png", None, "missing", "a symlink to a file that does not exist"),
        # --- odd but valid images
        ("odd/png_named.jpg", good_png(), "", "a PNG named .jpg (content decides, not the extension)"),
        ("odd/cmyk.jpg", _encode(_frombytes("CMYK", _noise(rng, 24, 24, 4)), "JPEG"), "", "CMYK JPEG"),
        ("odd/grey16.png", _encode(g16, "PNG"), "", "16-bit greyscale PNG"),
        ("odd/rgb16.png", png_bytes(8, 8, 16, 2, b"".join(b"\0" + rng.integers(0, 256, 48, dtype=np.uint8).tobytes()
                                                           for _ in range(8))), "", "16-bit RGB PNG"),
        ("odd/palette_trns.png", _palette_transparent(rng), "", "palette PNG with a transparent index"),
        ("odd/rgba.png", _encode(_frombytes("RGBA", _noise(rng, 24, 24, 4)), "PNG"), "", "RGBA PNG"),
        ("odd/la.png", _encode(_frombytes("LA", _noise(rng, 24, 24, 2)), "PNG"), "", "grey + alpha PNG"),
        ("odd/grey.jpg", _encode(Image.fromarray(_noise(rng, 24, 24, 0)), "JPEG"), "", "greyscale JPEG"),
        ("odd/bilevel.png", _encode(Image.fromarray(_noise(rng, 24, 24, 0) > 127), "PNG"), "", "1-bit PNG"),
        ("odd/one.png", _encode(Image.fromarray(_noise(rng, 1, 1)), "PNG"), "", "1x1 image"),
        ("odd/tall.png", _encode(Image.fromarray(_noise(rng, 2000, 1)), "PNG"), "", "2000x1 (h x w) extreme aspect"),
        ("odd/wide.png", _encode(Image.fromarray(_noise(rng, 1, 2000)), "PNG"), "", "1x2000 (h x w) extreme aspect"),
        ("odd/exif6.jpg", _exif_rotated(rng), "", "JPEG with EXIF orientation 6"),
        ("odd/anim.gif", _gif_animated(rng), "", "animated GIF (first frame)"),
        ("odd/image.bmp", _encode(Image.fromarray(_noise(rng, 24, 24)), "BMP"), "", "BMP"),
        ("odd/image.tif", _encode(Image.fromarray(_noise(rng, 24, 24)), "TIFF"), "", "TIFF"),
        ("odd/image.webp", _encode(Image.fromarray(_noise(rng, 24, 24)), "WEBP", lossless=True), "", "WebP"),
        ("odd/UPPER.JPG", jpeg2, "", "upper-case extension"),
        ("odd/no_extension", good_png(), "", "no file extension"),
        ("odd/sp ace & ünï.png", good_png(), "", "spaces and non-ASCII (UTF-8) in the name"),
        (os.fsdecode(b"odd/caf\xe9-latin1.png"), good_png(), "", "file name that is not valid UTF-8 (bytes path)"),
        ("odd/nested/deeper/inner.png", good_png(), "", "image in a nested subfolder of a class"),
        # --- no row at all
        ("odd/.DS_Store", b"\0\0\0\1Bud1" + bytes(100), None, "hidden file (.DS_Store)"),
        ("odd/._img000.png", b"\0\5\26\7" + bytes(60), None, "AppleDouble hidden file"),
        ("odd/.thumbs/t.png", good_png(), None, "image inside a hidden directory"),
        (".hidden_class/x.png", good_png(), None, "a hidden folder at class level"),
        ("odd/fifo.png", None, None, "a FIFO named .png (never opened: it would block)"),
        ("empty_class/", None, None, "an empty class folder (a class with no rows)"),
    ]


def write(root, cases) -> None:
    """Write the corpus under ``root`` (paths may carry surrogate escapes for non-UTF-8 bytes)."""
    for rel, content, reason, _ in cases:
        path = os.path.join(os.fsencode(root), os.fsencode(rel))
        if rel.endswith("/"):
            os.makedirs(path, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if content is not None:
            with open(path, "wb") as f:
                f.write(content)
        elif reason == "missing":
            os.symlink(b"does-not-exist.png", path)
        else:
            os.mkfifo(path)

"""Tests for features.images: the single image-decoding path (every fixture is generated here)."""

import ast
import io
import os
import pickle
import resource
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from features import images
from features.images import DEFAULT_MAX_PIXELS, REASONS, BadImage, decode, load_rgb

# ---------------------------------------------------------------- helpers


def _smooth(h, w):
    """Low-frequency RGB content, so lossy codecs and rescaling stay close to each other."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 127 + 120 * np.sin(2 * np.pi * x / w)
    g = 255 * y / max(h - 1, 1)
    b = 127 + 120 * np.cos(2 * np.pi * (x + y) / (w + h))
    return np.stack([r, g, b], axis=-1).round().clip(0, 255).astype(np.uint8)


def _save(img, path, fmt=None, **kw):
    img.save(path, fmt, **kw)
    return path


def _blocks():
    """Four flat colour blocks (exact in every format, palette ones included)."""
    a = np.zeros((20, 30, 3), np.uint8)
    a[:10, :15] = (255, 0, 0)
    a[:10, 15:] = (0, 255, 0)
    a[10:, :15] = (0, 0, 255)
    a[10:, 15:] = (255, 255, 255)
    return a


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width, height, bit_depth, colour_type, raw=b""):
    """A hand-made PNG: lets us declare any size and write 16-bit RGB, which Pillow cannot."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw))
            + _chunk(b"IEND", b""))


def _check_rgb(arr, shape):
    assert arr.dtype == np.uint8 and arr.shape == shape
    assert arr.flags.c_contiguous and arr.flags.writeable


# ---------------------------------------------------------------- formats and content sniffing


@pytest.mark.parametrize(
    "fmt,ext",
    [("PNG", "png"), ("BMP", "bmp"), ("GIF", "gif"), ("JPEG", "jpg"), ("TIFF", "tif"),
     ("WEBP", "webp")],
)
def test_each_format(tmp_path, fmt, ext):
    a = _blocks()
    lossy = {"JPEG": {"quality": 95, "subsampling": 0}}.get(fmt)
    kw = lossy or ({"lossless": True} if fmt == "WEBP" else {})
    path = _save(Image.fromarray(a), tmp_path / f"x.{ext}", fmt, **kw)
    out = load_rgb(path)
    _check_rgb(out, (20, 30, 3))
    if lossy:
        assert np.abs(out.astype(int) - a).mean() < 4
    else:
        np.testing.assert_array_equal(out, a)


def test_content_not_extension(tmp_path):
    a = _smooth(12, 17)
    path = _save(Image.fromarray(a), tmp_path / "really_a_png.jpg", "PNG")
    np.testing.assert_array_equal(load_rgb(str(path)), a)


def test_encoded_bytes_in_memory():
    a = _smooth(9, 11)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    np.testing.assert_array_equal(load_rgb(buf.getvalue()), a)
    np.testing.assert_array_equal(load_rgb(bytearray(buf.getvalue())), a)


def test_non_utf8_filename(tmp_path):
    a = _smooth(8, 8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    bpath = os.path.join(os.fsencode(tmp_path), b"caf\xe9.png")
    with open(bpath, "wb") as f:
        f.write(buf.getvalue())
    np.testing.assert_array_equal(load_rgb(bpath), a)
    with pytest.raises(BadImage) as err:
        load_rgb(os.path.join(os.fsencode(tmp_path), b"caf\xe9_missing.png"))
    assert err.value.reason == "missing" and "caf\\xe9_missing.png" in err.value.detail
    err.value.detail.encode("utf-8")  # printable in logs


# ---------------------------------------------------------------- failures and reason codes


def _reason(src, **kw):
    with pytest.raises(BadImage) as err:
        load_rgb(src, **kw)
    assert err.value.reason in REASONS
    array, orig, reason = decode(src, **kw)  # the non-raising twin agrees
    assert array is None and orig == (0, 0) and reason == err.value.reason
    return err.value


def test_missing_and_directory(tmp_path):
    err = _reason(tmp_path / "nope.jpg")
    assert err.reason == "missing" and "nope.jpg" in err.detail and "nope.jpg" in str(err)
    assert _reason(str(tmp_path)).reason == "missing"


def test_empty(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    assert _reason(tmp_path / "zero.jpg").reason == "empty"
    assert _reason(b"").reason == "empty"


def test_not_image(tmp_path, rng):
    html = b"<!DOCTYPE html>\n<html><body>403 Forbidden</body></html>\n"
    (tmp_path / "page.jpg").write_bytes(html)
    (tmp_path / "noise.png").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert _reason(tmp_path / "page.jpg").reason == "not_image"
    assert _reason(tmp_path / "noise.png").reason == "not_image"
    assert _reason(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()).reason == "not_image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(tmp_path, fmt):
    buf = io.BytesIO()
    Image.fromarray(_smooth(64, 64)).save(buf, fmt)
    data = buf.getvalue()
    (tmp_path / "cut").write_bytes(data[: len(data) // 2])
    assert _reason(tmp_path / "cut").reason == "truncated"
    assert _reason(data[: len(data) // 2]).reason == "truncated"


def test_decompression_bomb_rejected_from_header_only(tmp_path):
    # 50000 x 50000 declared (7.5 GB as RGB) but only ~100 bytes on disk.
    path = tmp_path / "bomb.png"
    path.write_bytes(_png(50_000, 50_000, 8, 2, b"\x00" * 10))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    err = _reason(path)
    assert time.perf_counter() - t0 < 1.0
    assert err.reason == "too_large"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 100_000  # KiB
    # Our own, tighter limit: 5000 x 5000 declared with 1 byte of pixel data. Reading any
    # pixels would report "truncated", so "too_large" proves the check precedes loading.
    (tmp_path / "big.png").write_bytes(_png(5000, 5000, 8, 2, b"\x00"))
    err = _reason(tmp_path / "big.png", max_pixels=1_000_000)
    assert err.reason == "too_large" and "25000000" in err.detail
    assert _reason(tmp_path / "big.png").reason == "truncated"  # default limit lets it through


def test_max_pixels_boundary():
    a = np.zeros((1, 2), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    assert load_rgb(buf.getvalue(), max_pixels=2).shape == (1, 2, 3)
    assert _reason(buf.getvalue(), max_pixels=1).reason == "too_large"
    assert load_rgb(buf.getvalue(), max_pixels=None).shape == (1, 2, 3)
    assert DEFAULT_MAX_PIXELS == 2 * Image.MAX_IMAGE_PIXELS


def test_bad_image_pickles_and_validates():
    err = pickle.loads(pickle.dumps(BadImage("truncated", "a.jpg: cut")))
    assert (err.reason, err.detail) == ("truncated", "a.jpg: cut")
    with pytest.raises(ValueError):
        BadImage("nonsense", "x")
    codes = {"missing", "empty", "not_image", "truncated", "too_large", "decode_error"}
    assert codes <= set(REASONS)


# ---------------------------------------------------------------- modes


def test_cmyk_jpeg(tmp_path):
    path = _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", "JPEG")
    with Image.open(path) as im:
        assert im.mode == "CMYK"
    out = load_rgb(path)
    _check_rgb(out, (16, 16, 3))
    assert np.abs(out.astype(int) - (255, 0, 0)).max() < 8  # red


def test_16bit_grey_png_is_shifted_by_8(tmp_path):
    values = np.array([[0, 255, 256, 0x1234, 0x80FF, 65535]], np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "g16.png", "PNG")
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    out = load_rgb(path)
    _check_rgb(out, (1, 6, 3))
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 1, 0x12, 0x80, 255])
    assert (out == out[..., :1]).all()  # grey replicated


def test_16bit_rgb_png():
    rgb16 = np.array([[[0x1234, 0xABCD, 0xFFFF], [0x00FF, 0x0100, 0x8000]]], ">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in rgb16)  # filter byte 0 per row
    out = load_rgb(_png(2, 1, 16, 2, raw))
    np.testing.assert_array_equal(out, [[[0x12, 0xAB, 0xFF], [0x00, 0x01, 0x80]]])


def test_float_and_bilevel_and_grey(tmp_path):
    f = np.array([[-5.0, 0.4, 127.6, 300.0]], np.float32)
    out = load_rgb(_save(Image.fromarray(f, "F"), tmp_path / "f.tif", "TIFF"))
    np.testing.assert_array_equal(out[0, :, 1], [0, 0, 128, 255])
    bilevel = Image.fromarray(np.array([[0, 255, 0]], np.uint8)).convert("1")
    out = load_rgb(_save(bilevel, tmp_path / "b.png"))
    np.testing.assert_array_equal(out[0, :, 2], [0, 255, 0])
    grey = np.array([[3, 77, 250]], np.uint8)
    out = load_rgb(_save(Image.fromarray(grey), tmp_path / "l.png"))
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))


def test_palette_transparency_composited_on_black(tmp_path):
    img = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    img.putpalette([255, 0, 0, 0, 255, 0])  # 0 = red but transparent, 1 = opaque green
    path = _save(img, tmp_path / "p.png", "PNG", transparency=0)
    black, green = [0, 0, 0], [0, 255, 0]
    np.testing.assert_array_equal(load_rgb(path), [[black, green], [green, black]])


def test_rgba_and_la_composited_on_black(tmp_path):
    rgba = np.array([[[255, 255, 255, 0], [10, 20, 30, 255], [200, 100, 50, 128]]], np.uint8)
    out = load_rgb(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png"))
    np.testing.assert_array_equal(out, [[[0, 0, 0], [10, 20, 30], [100, 50, 25]]])
    la = Image.fromarray(rgba[..., [0, 3]], "LA")
    out = load_rgb(_save(la, tmp_path / "la.png"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 10, 100])


def test_gif_first_frame_only(tmp_path):
    red, blue = Image.new("RGB", (8, 6), (255, 0, 0)), Image.new("RGB", (8, 6), (0, 0, 255))
    path = _save(red, tmp_path / "anim.gif", "GIF", save_all=True, append_images=[blue])
    with Image.open(path) as im:
        assert im.n_frames == 2
    out = load_rgb(path)
    assert (out == (255, 0, 0)).all()


# ---------------------------------------------------------------- geometry


def test_exif_orientation_6(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)  # stored 40 wide, 20 tall
    a[:, :] = (0, 0, 255)
    a[:8, :8] = (255, 0, 0)  # stored top-left corner is red
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    path = _save(Image.fromarray(a), tmp_path / "rot.jpg", "JPEG", exif=exif, quality=95)
    out, orig, reason = decode(path)
    assert reason == "" and orig == (40, 20) and out.shape == (40, 20, 3)
    assert out[2, -3, 0] > 200 and out[2, 2, 2] > 200  # red went to the top-right
    out, orig, _ = decode(path, (10, 5))
    assert out.shape == (10, 5, 3) and orig == (40, 20)


def test_one_by_one_and_extreme_aspect(tmp_path):
    path = _save(Image.new("RGB", (1, 1), (9, 99, 199)), tmp_path / "dot.png")
    assert (load_rgb(path) == (9, 99, 199)).all() and load_rgb(path).shape == (1, 1, 3)
    assert (load_rgb(path, (5, 7)) == (9, 99, 199)).all()
    for w, h in [(1000, 3), (3, 1000)]:
        path = _save(Image.fromarray(_smooth(h, w)), tmp_path / f"strip{w}.jpg", "JPEG")
        out, orig, _ = decode(path)
        assert out.shape == (h, w, 3) and orig == (h, w)
        _check_rgb(load_rgb(path, (224, 224)), (224, 224, 3))
        _check_rgb(load_rgb(path, (1, 1)), (1, 1, 3))


def test_same_size_is_not_resampled(tmp_path, rng):
    noise = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    path = _save(Image.fromarray(noise), tmp_path / "noise.png")
    np.testing.assert_array_equal(load_rgb(path, (32, 48)), noise)
    np.testing.assert_array_equal(load_rgb(noise, (32, 48)), noise)
    assert load_rgb(path, (48, 32)).shape == (48, 32, 3)  # (height, width), not (w, h)


@pytest.fixture
def draft_calls(monkeypatch):
    calls = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        calls.append(size)
        return original(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return calls


def test_large_jpeg_uses_draft_and_matches_full_decode(tmp_path, draft_calls):
    path = _save(Image.fromarray(_smooth(1600, 2400)), tmp_path / "big.jpg", "JPEG", quality=90)
    out, orig, _ = decode(path, (224, 224))
    assert draft_calls == [(224, 224)] and orig == (1600, 2400)
    _check_rgb(out, (224, 224, 3))
    with Image.open(path) as im:  # reference: full-size decode, then the same resize
        full = np.asarray(im.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
    assert np.abs(out.astype(int) - full).mean() < 6
    draft_calls.clear()
    assert load_rgb(path, (1000, 1000)).shape == (1000, 1000, 3)
    assert draft_calls == []  # 1600 < 2 x 1000: no DCT scaling


def test_draft_request_accounts_for_exif_rotation(tmp_path, draft_calls):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(Image.fromarray(_smooth(1600, 2400)), tmp_path / "rot.jpg", "JPEG", exif=exif)
    out, orig, _ = decode(path, (300, 200))  # displayed: 1600 wide, 2400 tall
    assert orig == (2400, 1600) and out.shape == (300, 200, 3)
    assert draft_calls == [(300, 200)]  # stored (width, height) = displayed (height, width)


# ---------------------------------------------------------------- inline arrays, API, threads


def test_inline_arrays(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out, orig, _ = decode(grey)
    assert orig == (3, 4)
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))
    rgb = _smooth(30, 40)
    same = load_rgb(rgb)
    np.testing.assert_array_equal(same, rgb)
    assert not np.shares_memory(same, rgb)
    # One resize path: an inline array and the same pixels as a PNG give identical output.
    path = _save(Image.fromarray(rgb), tmp_path / "same.png")
    np.testing.assert_array_equal(load_rgb(rgb, (13, 17)), load_rgb(path, (13, 17)))
    flipped = rgb[:, ::-1]  # non-contiguous view
    np.testing.assert_array_equal(load_rgb(flipped, (13, 17)), load_rgb(flipped.copy(), (13, 17)))
    for bad in (rgb.astype(np.float32), np.zeros((4, 4, 4), np.uint8), np.zeros((0, 4), np.uint8),
                np.zeros(5, np.uint8)):
        assert _reason(bad).reason == "decode_error"


def test_decode_success_and_argument_errors(tmp_path):
    path = _save(Image.fromarray(_smooth(10, 20)), tmp_path / "ok.png")
    out, orig, reason = decode(Path(path), (5, 6))
    assert reason == "" and orig == (10, 20) and out.shape == (5, 6, 3)
    for bad_size in [(0, 5), (5,), "ab", 7]:
        with pytest.raises(ValueError):
            decode(path, bad_size)
    with pytest.raises(TypeError):
        load_rgb(12345)


def test_thread_pool_matches_serial(tmp_path):
    paths = [_save(Image.fromarray(_smooth(40 + i, 60 - i)), tmp_path / f"t{i}.jpg", "JPEG")
             for i in range(8)]
    serial = [load_rgb(p, (16, 16)) for p in paths]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda p: load_rgb(p, (16, 16)), paths * 3))
    for i, arr in enumerate(threaded):
        np.testing.assert_array_equal(arr, serial[i % len(paths)])


def test_mirror_is_the_left_right_flip(rng):
    arr = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    m = images.mirror(arr)
    assert m.flags.c_contiguous and m.flags.writeable
    np.testing.assert_array_equal(m, arr[:, ::-1])


def test_module_never_imports_pipeline():
    tree = ast.parse(Path(images.__file__).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not any(m == "pipeline" or m.startswith("pipeline.") for m in names)

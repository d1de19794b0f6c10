"""The report's pictures of single rows: each row's source image, a bounded thumbnail, keypoints drawn on it.

Images come from where stage one read them: the feature file's ``source_root`` attr plus each row's
``paths`` entry, or, for Kaggle-style CSVs that carry their pixels inline (``training.csv#row=12``),
the CSV itself, and for webdataset samples (``00003.tar#0123``) the member of that tar. A file that has
moved or gone is shown as missing, never fatal: the report is about the model, and the features it was
scored on are still there. Drawing uses Pillow only, so its pixel positions are plain arithmetic a test
can check.
"""

from __future__ import annotations

import io
import os
import re

import numpy as np
from PIL import Image, ImageDraw

from features.images import decode_all
from pipeline.tools.report_data import point_side

#: Colours of true and predicted keypoints: blue and orange stay apart for colour-blind readers.
TRUE_RGB = (0, 160, 255)
PRED_RGB = (255, 120, 0)
_INLINE = re.compile(r"^(?P<file>.+)#row=(?P<row>\d+)$")
_TAR_MEMBER = re.compile(r"^(?P<tar>.+\.tar)#(?P<key>.+)$")


def row_sources(attrs: dict, paths, rows) -> list:
    """What :func:`features.images.decode` takes for each of ``rows``: a path, an inline array, or None.

    None means the image cannot be found from the file's provenance (the reason is in :func:`missing_reason`).
    """
    root = attrs.get("source_root") or ""
    out, inline, tars = [], {}, {}
    for r in rows:
        p = paths[r]
        m = _INLINE.match(p)
        t = _TAR_MEMBER.match(p) if attrs.get("source_kind") == "webdataset" else None
        if t:
            tar_path = os.path.join(root, t["tar"])
            if tar_path not in tars:
                tars[tar_path] = _tar_members(tar_path)
            out.append(tars[tar_path].get(t["key"]))
        elif m:
            csv_path = os.path.join(root, m["file"])
            if csv_path not in inline:
                inline[csv_path] = _inline_images(csv_path)
            images = inline[csv_path]
            i = int(m["row"])
            out.append(images[i] if images is not None and i < len(images) else None)
        else:
            out.append(p if os.path.isabs(p) else os.path.join(root, p) if root else None)
    return out


def _tar_members(tar_path) -> dict:
    """``{sample key: blob of its image member}`` of one webdataset tar; empty when it is gone or unreadable."""
    from features.reader.errors import SourceError
    from features.reader.sources import read_source

    if not os.path.isfile(tar_path):
        return {}
    try:
        m = read_source(tar_path, kind="webdataset")  # its headers only: one tar, not the whole list
    except (SourceError, OSError, ValueError):
        return {}
    return {p.split("#", 1)[1]: m.source(i) for i, p in enumerate(m.paths) if i not in m.row_errors}


def _inline_images(csv_path):
    """The inline pixel array of a Kaggle-style CSV, or None when it is gone or no longer such a file."""
    from features.reader.errors import SourceError
    from features.reader.sources import read_source

    if not os.path.isfile(csv_path):
        return None
    try:
        return read_source(csv_path).inline
    except (SourceError, OSError, ValueError):
        return None


def load_images(sources) -> list[tuple[np.ndarray | None, str]]:
    """Decode every source on the shared decode pool: ``(uint8 (H, W, 3) array, "")`` or ``(None, reason)``."""
    wanted = [i for i, s in enumerate(sources) if s is not None]
    out: list[tuple[np.ndarray | None, str]] = [(None, "missing")] * len(sources)
    for i, (arr, _size, reason) in zip(wanted, decode_all([sources[i] for i in wanted])):
        out[i] = (arr, reason)
    return out


def thumb_scale(height: int, width: int, side: int) -> float:
    """The factor that fits a (height, width) image into a ``side`` x ``side`` box (up or down)."""
    return side / max(height, width, 1)


def thumbnail(arr: np.ndarray, side: int) -> tuple[Image.Image, float]:
    """``arr`` scaled so its longer edge is ``side`` pixels, and the factor used.

    Small images (32 px digits) are enlarged with nearest-neighbour so their pixels stay visible;
    large photos are reduced with a Lanczos filter so the page holds thumbnails, not the photos.
    """
    h, w = arr.shape[:2]
    s = thumb_scale(h, w, side)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    img = Image.fromarray(np.ascontiguousarray(arr[..., :3]).astype(np.uint8))
    return img.resize(size, Image.NEAREST if s >= 1 else Image.LANCZOS), s


def to_thumb_xy(x, y, s: float) -> tuple[float, float]:
    """Image pixel coordinates (pixel-centre convention) to the thumbnail's, for scale ``s``.

    Pixel centre ``c`` of the image spans ``[c - 0.5, c + 0.5]``; scaled by ``s`` that is
    ``[(c - 0.5 + 0.5) s, (c + 0.5 + 0.5) s]`` measured from the image's outer edge, whose centre is
    at ``(c + 0.5) s - 0.5`` in the thumbnail's own pixel-centre coordinates.
    """
    return (x + 0.5) * s - 0.5, (y + 0.5) * s - 0.5


def draw_keypoints(img: Image.Image, s: float, truth, pred, points, *, radius: int = 3) -> Image.Image:
    """Draw true and predicted keypoints on a thumbnail (scale ``s``) and return it.

    ``points`` are ``(name, x column, y column)`` (:func:`pipeline.tools.report_data.keypoint_pairs`).
    True points are blue, predictions orange (smaller, drawn on top), joined by a thin line; the
    subject's left points are discs, right points squares, centre points diamonds, so a left/right
    swap shows at a glance.
    A point whose true or predicted value is missing is drawn only where it is known.
    """
    img = img.convert("RGB")
    d = ImageDraw.Draw(img)
    for name, ix, iy in points:
        t = _xy(truth, ix, iy, s)
        p = _xy(pred, ix, iy, s)
        if t and p:
            d.line([t, p], fill=PRED_RGB, width=1)
        # The prediction is smaller and on top: a near-perfect one sits inside a blue rim, not hiding it.
        for xy, colour, r in ((t, TRUE_RGB, radius + 1), (p, PRED_RGB, max(1, radius - 1))):
            if xy:
                _marker(d, xy, point_side(name), colour, r)
    return img


def _xy(values, ix, iy, s):
    x, y = float(values[ix]), float(values[iy])
    return to_thumb_xy(x, y, s) if np.isfinite(x) and np.isfinite(y) else None


def _marker(d: ImageDraw.ImageDraw, xy, side: str, colour, r: int) -> None:
    x, y = xy
    if side == "left":
        d.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    elif side == "right":
        d.rectangle([x - r, y - r, x + r, y + r], fill=colour)
    else:
        d.polygon([(x, y - r - 1), (x + r + 1, y), (x, y + r + 1), (x - r - 1, y)], fill=colour)


def png_bytes(img: Image.Image) -> bytes:
    """``img`` as PNG bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()

"""Readers of two published datasets' own formats: the Kaggle Facial Keypoints CSV and Places365 list files.

Like every reader (:mod:`features.reader.sources`), they are deterministic and do no image work: structural
problems raise :class:`~features.reader.base.SourceError` naming the file and line.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np

from . import fs
from .base import check_xy_pairs, file_rows, parse_floats, read_table, root_of
from .errors import SourceError
from .manifest import Manifest


def read_kaggle_keypoints(path):
    """Read a Kaggle Facial Keypoints CSV (keypoint columns plus an inline ``Image`` column).

    Its ``test.csv`` (``ImageId``, ``Image``: no keypoint columns) is unlabelled, task ``none``.
    """
    header, rows = read_table(path)
    if "Image" not in header:
        raise SourceError(f"{path}: no 'Image' column; not a Kaggle keypoints CSV")
    icol = header.index("Image")
    kcols = [j for j, h in enumerate(header) if h.lower().endswith(("_x", "_y"))]
    check_xy_pairs(path, [header[j] for j in kcols])
    targets = parse_floats(path, header, rows, kcols)
    name = os.path.basename(path)
    inline, side = None, None
    for i, (line, row) in enumerate(rows):
        px = _parse_pixels(path, line, row[icol])
        if side is None:
            side = math.isqrt(len(px))
            if side == 0 or side * side != len(px):
                raise SourceError(f"{path}:{line}: Image has {len(px)} pixels, not a square image")
            inline = np.empty((len(rows), side, side), dtype=np.uint8)
        elif len(px) != side * side:
            raise SourceError(f"{path}:{line}: Image has {len(px)} pixels, expected {side * side} "
                              f"({side}x{side} like the first row)")
        inline[i] = px.reshape(side, side)
        row[icol] = ""  # the pixel text is ~35 kB a row; free it as we go
    # A row with keypoint columns but no value at all is useless for training.
    ids = [f"{name}#row={i}" for i in range(len(rows))]
    if not kcols:  # test.csv: images to predict keypoints on
        return Manifest("kaggle_keypoints", fs.parent(path), ids, inline=inline)
    errors = {int(i): "no_targets" for i in np.flatnonzero(np.isnan(targets).all(axis=1))}
    return Manifest("kaggle_keypoints", fs.parent(path), ids, targets=targets,
                    target_names=[header[j] for j in kcols], inline=inline, row_errors=errors)


def read_places365(path, *, categories=None, image_root=None):
    """Read a Places365 list file (``<image> <label>`` lines) with its categories file."""
    if categories is None:
        raise SourceError(f"{path}: a Places365 list file needs its categories file: "
                          "--categories categories_places365.txt")
    by_index = {}
    for line, (name, value) in _pairs(categories):
        if value in by_index:
            raise SourceError(f"{categories}:{line}: category index {value} given twice")
        by_index[value] = name
    if sorted(by_index) != list(range(len(by_index))):
        raise SourceError(f"{categories}: category indices must be 0..{len(by_index) - 1} without gaps")
    classes = [by_index[k] for k in range(len(by_index))]
    root = root_of(path, image_root)
    paths, labels = [], []
    for line, (name, value) in _pairs(path):
        if value not in by_index:
            raise SourceError(f"{path}:{line}: unknown label id {value} (categories has {len(classes)})")
        # Train lists write "/a/airfield/00000001.jpg": that slash means "under the image root".
        paths.append(name.lstrip("/"))
        labels.append(value)
    if not paths:
        raise SourceError(f"{path}: the list file has no entries")
    return Manifest("places365", root, paths, labels=np.array(labels, np.int64),
                    class_names=classes, **file_rows(root, paths))


def _parse_pixels(path, line, text):
    """Parse a space-separated grey pixel string (0-255) quickly, naming the line on error."""
    try:
        # fromstring's text mode parses in C (~5x faster than str.split); old numpy only
        # warns on trailing junk, so turn that warning into the error it is.
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            px = np.fromstring(text, dtype=np.int32, sep=" ")
    except (ValueError, DeprecationWarning):
        raise SourceError(f"{path}:{line}: Image holds a value that is not an integer pixel") from None
    if px.size and (px.min() < 0 or px.max() > 255):
        raise SourceError(f"{path}:{line}: Image pixel values must lie in 0..255")
    return px


def _pairs(path):
    """Yield ``(line_number, (name, int))`` from ``<name> <int>`` lines, skipping blanks."""
    with fs.open_text(path) as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            parts = text.strip().rsplit(None, 1)
            try:
                yield line, (parts[0], int(parts[1]))
            except (IndexError, ValueError):
                raise SourceError(f"{path}:{line}: expected '<name> <integer>', got {text.strip()[:80]!r}") from None

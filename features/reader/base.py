"""What every dataset reader shares: the CSV table, missing-file and float parsers, and their structural checks.

Split out of :mod:`features.reader.sources` so the readers of named datasets (:mod:`features.reader.datasets`)
use the same structural checks without importing the registry that imports them.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from . import fs
from .errors import SourceError


def read_table(path):
    """Read a CSV into ``(header, [(line_number, row), ...])`` with structural checks."""
    # A Kaggle Image cell holds 9216 numbers; 2**31-1 also fits a 32-bit C long.
    csv.field_size_limit(2**31 - 1)
    with fs.open_text(path) as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if not any(header):
            raise SourceError(f"{path}: empty CSV (no header line)")
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            raise SourceError(f"{path}:1: duplicate column name(s) {', '.join(dupes)}")
        rows = []
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            # line_num is the physical line the record ended on: the line users see.
            if len(row) != len(header):
                raise SourceError(f"{path}:{reader.line_num}: {len(row)} fields, header has {len(header)}")
            rows.append((reader.line_num, row))
    if not rows:
        raise SourceError(f"{path}: CSV has a header but no data rows")
    return header, rows


def missing_rows(root, paths):
    """``{row: "missing"}`` for rows whose file does not exist under ``root`` (a local directory)."""
    return {i: "missing" for i, p in enumerate(paths) if not os.path.isfile(os.path.join(root, p))}


def file_rows(root, paths) -> dict:
    """The Manifest fields of rows that are files under ``root``: ``row_errors`` (missing files) and,
    when ``root`` is an fsspec URL, ``blobs`` reading each object (fingerprinted by size and etag)."""
    if fs.is_url(root):
        blobs = fs.FsFiles(root, paths)
        return {"row_errors": blobs.missing(), "blobs": blobs}
    return {"row_errors": missing_rows(root, paths)}


def root_of(path, given) -> str:
    """Where the image names of list/CSV ``path`` are resolved: ``given`` (``--image-root``), else its folder."""
    return fs.absolute(given) if given else fs.parent(path)


def sorted_classes(values):
    """Unique labels sorted as numbers when they are all integers, else as strings."""
    unique = set(values)
    try:
        return sorted(unique, key=lambda v: (int(v), v))
    except ValueError:
        return sorted(unique)


def check_xy_pairs(path, names):
    """Refuse keypoint columns that come without their partner: ``nose_tip_x`` needs ``nose_tip_y``.

    A lone ``*_x`` would train and predict one coordinate of a point, and the mirrored view
    (which pairs ``_x`` with ``_y`` to flip a point) could not be built for it.
    """
    lower = {n.lower() for n in names}
    for n in names:
        low = n.lower()
        for mine, other in (("_x", "_y"), ("_y", "_x")):
            if low.endswith(mine) and low[:-2] + other not in lower:
                partner = n[:-2] + (other if n[-1].islower() else other.upper())
                raise SourceError(f"{path}: keypoint column {n!r} has no matching {partner!r} column; "
                                  f"a point needs both coordinates (drop {n!r} or add its partner)")


def parse_floats(path, header, rows, cols):
    """Parse the given columns as float32, empty cells as NaN, naming the culprit cell."""
    out = np.full((len(rows), len(cols)), np.nan, dtype=np.float32)
    for i, (line, row) in enumerate(rows):
        for k, j in enumerate(cols):
            cell = row[j].strip()
            if cell:
                try:
                    out[i, k] = float(cell)
                except ValueError:
                    raise SourceError(f"{path}:{line}: column {header[j]!r}: {cell[:40]!r} is not a number") from None
    return out

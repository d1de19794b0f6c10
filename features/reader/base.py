"""What every dataset reader shares: :class:`SourceError` and the CSV table, missing-file and float parsers.

Split out of :mod:`features.reader.sources` so the readers of named datasets (:mod:`features.reader.datasets`)
use the same structural checks without importing the registry that imports them.
"""

from __future__ import annotations

import csv
import os

import numpy as np


class SourceError(ValueError):
    """A dataset source is malformed; the message names the file (and line where it applies)."""


def read_table(path):
    """Read a CSV into ``(header, [(line_number, row), ...])`` with structural checks."""
    # A Kaggle Image cell holds 9216 numbers; 2**31-1 also fits a 32-bit C long.
    csv.field_size_limit(2**31 - 1)
    with open(path, newline="", encoding="utf-8-sig") as f:
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
    """``{row: "missing"}`` for rows whose file does not exist under ``root``."""
    return {i: "missing" for i, p in enumerate(paths) if not os.path.isfile(os.path.join(root, p))}


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

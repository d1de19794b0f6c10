"""Dataset readers: turn a folder, CSV, Kaggle keypoints CSV or Places365 list into a Manifest.

Every reader is deterministic (same input, same row order) and does no image work:
structural problems (missing columns, unparsable values) raise :class:`SourceError`
naming the file and line before anything expensive starts, while per-row problems
(an image file that does not exist) are recorded in ``Manifest.row_errors`` and the
row is kept, so row indices never shift.
"""

from __future__ import annotations

import csv
import inspect
import math
import os
import re
import warnings

import numpy as np

from .manifest import Manifest

PATH_COLUMNS = ("path", "filename", "file", "image")
LABEL_COLUMNS = ("label", "class", "category")
# What float() accepts for ordinary numbers (signs, decimals, exponents, nan/inf).
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(nan|inf|infinity)", re.IGNORECASE)


class SourceError(ValueError):
    """A dataset source is malformed; the message names the file (and line where it applies)."""


def read_folder(path):
    """Read a Keras ``flow_from_directory`` layout ``DATA/<class>/<image>``."""
    root = os.path.abspath(path)
    entries = sorted(e.name for e in os.scandir(root) if not e.name.startswith("."))
    classes = [n for n in entries if os.path.isdir(os.path.join(root, n))]
    if not classes:
        raise SourceError(f"{path}: no class subfolders found (expected DATA/<class>/<image>)")
    paths, labels = [], []
    for label, cls in enumerate(classes):
        found = []
        # Like Keras: walk without following directory links, order by directory path
        # string, then by file name.  Prune hidden dirs while walking (top-down), so a
        # big hidden tree such as .git is never even listed.
        walked = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, cls)):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            walked.append((dirpath, filenames))
        for dirpath, filenames in sorted(walked, key=lambda w: w[0]):
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                # Keep broken links (they become "missing" rows); skip FIFOs, sockets, etc.
                if name.startswith(".") or not (os.path.isfile(full) or os.path.islink(full)):
                    continue
                found.append(os.path.relpath(full, root))
        if not found:
            warnings.warn(f"{path}: class folder {cls!r} is empty and contributes no rows", stacklevel=2)
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise SourceError(f"{path}: the class subfolders contain no files")
    return Manifest("folder", root, paths, labels=np.array(labels, np.int64),
                    class_names=classes, row_errors=_missing(root, paths))


def read_csv(path, *, image_root=None, path_column=None, label_column=None, target_columns=None):
    """Read a CSV of image paths with either a label column or numeric target columns."""
    header, rows = _read_table(path)
    root = os.path.abspath(image_root or os.path.dirname(os.path.abspath(path)))
    pcol = _pick_column(path, header, path_column, PATH_COLUMNS, "path")
    if label_column is not None and target_columns is not None:
        raise SourceError(f"{path}: give either a label column or target columns, not both")
    lcol = None
    if target_columns is None:
        lcol = _pick_column(path, header, label_column, LABEL_COLUMNS, "label", required=False)
    paths = _cells(path, header, rows, pcol, "path")
    errors = _missing(root, paths)
    if lcol is not None:
        values = _cells(path, header, rows, lcol, "label")
        classes = _sorted_classes(values)
        index = {c: k for k, c in enumerate(classes)}
        return Manifest("csv", root, paths, labels=np.array([index[v] for v in values], np.int64),
                        class_names=classes, row_errors=errors)
    if target_columns is not None:
        tcols = [_pick_column(path, header, c, (), "target") for c in target_columns]
    else:
        # Auto: every other column holding at least one number; it must then be all numbers.
        tcols = [j for j in range(len(header)) if j != pcol and any(_NUMBER.fullmatch(row[j].strip())
                                                                   for _, row in rows)]
        if not tcols:
            raise SourceError(f"{path}: no label column ({'/'.join(LABEL_COLUMNS)}) and no numeric "
                              f"target columns; name them with label_column or target_columns")
    targets = _parse_floats(path, header, rows, tcols)
    for i in np.flatnonzero(np.isnan(targets).all(axis=1)):
        errors.setdefault(int(i), "no_targets")
    return Manifest("csv", root, paths, targets=targets, target_names=[header[j] for j in tcols],
                    row_errors=errors)


def read_kaggle_keypoints(path):
    """Read a Kaggle Facial Keypoints CSV (keypoint columns plus an inline ``Image`` column)."""
    header, rows = _read_table(path)
    if "Image" not in header:
        raise SourceError(f"{path}: no 'Image' column; not a Kaggle keypoints CSV")
    icol = header.index("Image")
    kcols = [j for j, h in enumerate(header) if h.lower().endswith(("_x", "_y"))]
    targets = _parse_floats(path, header, rows, kcols)
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
    errors = {int(i): "no_targets" for i in np.flatnonzero(np.isnan(targets).all(axis=1))} if kcols else {}
    return Manifest("kaggle_keypoints", os.path.dirname(os.path.abspath(path)),
                    [f"{name}#row={i}" for i in range(len(rows))], targets=targets,
                    target_names=[header[j] for j in kcols], inline=inline, row_errors=errors)


def read_places365(path, *, categories=None, image_root=None):
    """Read a Places365 list file (``<image> <label>`` lines) with its categories file."""
    if categories is None:
        raise SourceError(f"{path}: a Places365 list file needs categories (categories_places365.txt)")
    by_index = {}
    for line, (name, value) in _pairs(categories):
        if value in by_index:
            raise SourceError(f"{categories}:{line}: category index {value} given twice")
        by_index[value] = name
    if sorted(by_index) != list(range(len(by_index))):
        raise SourceError(f"{categories}: category indices must be 0..{len(by_index) - 1} without gaps")
    classes = [by_index[k] for k in range(len(by_index))]
    root = os.path.abspath(image_root or os.path.dirname(os.path.abspath(path)))
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
                    class_names=classes, row_errors=_missing(root, paths))


#: Reader per source kind; each takes the path plus only the options it understands.
SOURCES = {"folder": read_folder, "csv": read_csv, "kaggle_keypoints": read_kaggle_keypoints,
           "places365": read_places365}


def read_source(path, *, kind="auto", categories=None, image_root=None, path_column=None,
                label_column=None, target_columns=None) -> Manifest:
    """Read a dataset description into a :class:`~features.manifest.Manifest`.

    Args:
        path: A class-folder directory, a CSV file, a Kaggle keypoints CSV or a
            Places365 list file.
        kind: A key of :data:`SOURCES`, or ``"auto"`` to detect it: a directory is
            ``"folder"``; a ``.csv`` whose header has ``Image`` plus ``*_x``/``*_y``
            columns (or ``ImageId``) is ``"kaggle_keypoints"``; another ``.csv`` is
            ``"csv"``; a ``.txt`` is ``"places365"``.
        categories: Places365 categories file (``/a/airfield 0`` lines).
        image_root: Directory image paths are relative to (default: the list/CSV's directory).
        path_column, label_column, target_columns: Column choices for ``"csv"``;
            by default detected from the header.

    Returns:
        The manifest, rows in a deterministic order.

    Raises:
        SourceError: If the source is missing or malformed, naming the file and line.
    """
    if not os.path.exists(path):
        raise SourceError(f"{path}: no such file or directory")
    if kind == "auto":
        kind = _detect(path)
    if kind not in SOURCES:
        raise SourceError(f"{path}: unknown source kind {kind!r}; expected one of {', '.join(SOURCES)}")
    given = {"categories": categories, "image_root": image_root, "path_column": path_column,
             "label_column": label_column, "target_columns": target_columns}
    given = {k: v for k, v in given.items() if v is not None}
    # Reject options the reader would ignore: a silently ignored option is a wrong dataset.
    unused = sorted(set(given) - set(inspect.signature(SOURCES[kind]).parameters))
    if unused:
        raise SourceError(f"{path}: option(s) {', '.join(unused)} do not apply to a {kind} source")
    return SOURCES[kind](path, **given)


def _detect(path) -> str:
    """Guess the source kind of ``path`` from its type, suffix and CSV header."""
    if os.path.isdir(path):
        return "folder"
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
        keypoints = any(h.lower().endswith(("_x", "_y")) for h in header)
        return "kaggle_keypoints" if "Image" in header and (keypoints or "ImageId" in header) else "csv"
    if suffix == ".txt":
        return "places365"
    raise SourceError(f"{path}: cannot tell the source kind (expected a directory, .csv or .txt); "
                      f"pass kind= one of {', '.join(SOURCES)}")


def _read_table(path):
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


def _missing(root, paths):
    """``{row: "missing"}`` for rows whose file does not exist under ``root``."""
    return {i: "missing" for i, p in enumerate(paths) if not os.path.isfile(os.path.join(root, p))}


def _pick_column(path, header, wanted, candidates, what, required=True):
    """Index of the named column, or of the first auto candidate (case-insensitive)."""
    lower = [h.lower() for h in header]
    if wanted is not None:
        if wanted in header:
            return header.index(wanted)
        raise SourceError(f"{path}: no {what} column {wanted!r}; columns are {', '.join(header)}")
    for c in candidates:
        if c in lower:
            return lower.index(c)
    if required:
        raise SourceError(f"{path}: no {what} column (looked for {', '.join(candidates)}); "
                          f"columns are {', '.join(header)}")
    return None


def _cells(path, header, rows, col, what):
    """Stripped cells of one column, which must all be non-empty."""
    cells = [row[col].strip() for _, row in rows]
    for (line, _), cell in zip(rows, cells):
        if not cell:
            raise SourceError(f"{path}:{line}: empty value in {what} column {header[col]!r}")
    return cells


def _parse_floats(path, header, rows, cols):
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
    with open(path, encoding="utf-8") as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            parts = text.strip().rsplit(None, 1)
            try:
                yield line, (parts[0], int(parts[1]))
            except (IndexError, ValueError):
                raise SourceError(f"{path}:{line}: expected '<name> <integer>', got {text.strip()[:80]!r}") from None


def _sorted_classes(values):
    """Unique labels sorted as numbers when they are all integers, else as strings."""
    unique = set(values)
    try:
        return sorted(unique, key=lambda v: (int(v), v))
    except ValueError:
        return sorted(unique)

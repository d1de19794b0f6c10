"""Dataset readers: turn a folder, CSV, Kaggle keypoints CSV or Places365 list into a Manifest.

This module holds the registry (:data:`SOURCES`, :func:`read_source`) and the generic readers
(class folders, CSV); the Kaggle keypoints and Places365 readers live in
:mod:`features.reader.datasets`, the shared parsers in :mod:`features.reader.base`.

Every reader is deterministic (same input, same row order) and does no image work:
structural problems (missing columns, unparsable values) raise :class:`SourceError`
naming the file and line before anything expensive starts, while per-row problems
(an image file that does not exist) are recorded in ``Manifest.row_errors`` and the
row is kept, so row indices never shift.
"""

from __future__ import annotations

import csv
import inspect
import os
import re
import warnings

import numpy as np

from features.fsutil import walk_files

# SourceError and the two named-dataset readers also stay importable from here, where callers look.
from .base import SourceError, missing_rows, parse_floats, read_table
from .datasets import read_kaggle_keypoints, read_places365
from .manifest import Manifest

PATH_COLUMNS = ("path", "filename", "file", "image")
LABEL_COLUMNS = ("label", "class", "category")
# What float() accepts for ordinary numbers (signs, decimals, exponents, nan/inf).
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(nan|inf|infinity)", re.IGNORECASE)


def read_folder(path):
    """Read a Keras ``flow_from_directory`` layout ``DATA/<class>/<image>``."""
    root = os.path.abspath(path)
    entries = sorted(e.name for e in os.scandir(root) if not e.name.startswith("."))
    classes = [n for n in entries if os.path.isdir(os.path.join(root, n))]
    if not classes:
        raise SourceError(f"{path}: no class subfolders found (expected DATA/<class>/<image>)")
    paths, labels = [], []
    for label, cls in enumerate(classes):
        # Keras' order (walk_files): a class folder lists the same rows here as in Keras.
        found = [os.path.relpath(full, root) for full in walk_files(os.path.join(root, cls))]
        if not found:
            warnings.warn(f"{path}: class folder {cls!r} is empty and contributes no rows", stacklevel=2)
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise SourceError(f"{path}: the class subfolders contain no files")
    return Manifest("folder", root, paths, labels=np.array(labels, np.int64),
                    class_names=classes, row_errors=missing_rows(root, paths))


def read_csv(path, *, image_root=None, path_column=None, label_column=None, target_columns=None):
    """Read a CSV of image paths with either a label column or numeric target columns."""
    header, rows = read_table(path)
    root = os.path.abspath(image_root or os.path.dirname(os.path.abspath(path)))
    pcol = _pick_column(path, header, path_column, PATH_COLUMNS, "path")
    if label_column is not None and target_columns is not None:
        raise SourceError(f"{path}: give either a label column or target columns, not both")
    lcol = None
    if target_columns is None:
        lcol = _pick_column(path, header, label_column, LABEL_COLUMNS, "label", required=False)
    paths = _cells(path, header, rows, pcol, "path")
    errors = missing_rows(root, paths)
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
                              f"target columns; name them with --label-column or --target-columns")
    targets = parse_floats(path, header, rows, tcols)
    for i in np.flatnonzero(np.isnan(targets).all(axis=1)):
        errors.setdefault(int(i), "no_targets")
    return Manifest("csv", root, paths, targets=targets, target_names=[header[j] for j in tcols],
                    row_errors=errors)


#: Reader per source kind; each takes the path plus only the options it understands.
SOURCES = {"folder": read_folder, "csv": read_csv, "kaggle_keypoints": read_kaggle_keypoints,
           "places365": read_places365}


def read_source(path, *, kind="auto", categories=None, image_root=None, path_column=None,
                label_column=None, target_columns=None) -> Manifest:
    """Read a dataset description into a :class:`~features.reader.manifest.Manifest`.

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
    if (kind == "folder") != os.path.isdir(path):
        raise SourceError(f"{path}: --source-kind {kind} reads a "
                          f"{'directory of class folders' if kind == 'folder' else 'file'}, and this is "
                          f"{'a directory' if os.path.isdir(path) else 'a file'}")
    # Reject options the reader would ignore: a silently ignored option is a wrong dataset.
    unused = sorted(set(given) - set(inspect.signature(SOURCES[kind]).parameters))
    if unused:
        flags = ", ".join("--" + u.replace("_", "-") for u in unused)
        raise SourceError(f"{path}: option(s) {flags} do not apply to a {kind} source")
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


def _sorted_classes(values):
    """Unique labels sorted as numbers when they are all integers, else as strings."""
    unique = set(values)
    try:
        return sorted(unique, key=lambda v: (int(v), v))
    except ValueError:
        return sorted(unique)

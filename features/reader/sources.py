"""Dataset readers: turn a folder, CSV, list file, tar shards or parquet files into a Manifest.

This module holds the registry (:data:`SOURCES`, :func:`read_source`) and the generic readers
(class folders, CSV); the other readers live beside it (:mod:`~features.reader.datasets`: Kaggle
keypoints and Places365; :mod:`~features.reader.unlabelled`: image folders and path lists;
:mod:`~features.reader.webdataset`; :mod:`~features.reader.parquet`), the shared parsers in
:mod:`features.reader.base`. A new kind of source is one reader plus one :class:`Source` entry:
the entry carries how it is detected, whether it reads a directory or a file, and its ``--help``.

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
import posixpath
import re
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from features.fsutil import walk_files

from . import fs
from .base import check_xy_pairs, file_rows, parse_floats, read_table, root_of, sorted_classes
from .datasets import read_kaggle_keypoints, read_places365
from .errors import SourceError
from .groups import check_group_by, read_groups_file
from .manifest import Manifest
from .parquet import read_parquet
from .unlabelled import read_images, read_list
from .webdataset import read_webdataset

PATH_COLUMNS = ("path", "filename", "file", "image")
LABEL_COLUMNS = ("label", "class", "category")
# What float() accepts for ordinary numbers (signs, decimals, exponents, nan/inf).
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(nan|inf|infinity)", re.IGNORECASE)


def read_folder(path):
    """Read a Keras ``flow_from_directory`` layout ``DATA/<class>/<image>``, on the local disk or a URL.

    A local ``DATA/.bneck-groups.csv`` (written by ``bneck frames``: :mod:`features.reader.groups`) gives
    every row its group, the video it came from.
    """
    if fs.is_url(path):
        return _read_url_folder(path)
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
    groups = read_groups_file(root, paths)
    return Manifest("folder", root, paths, labels=np.array(labels, np.int64),
                    class_names=classes, **file_rows(root, paths),
                    **({"groups": groups[0], "group_by": groups[1]} if groups else {}))


def _read_url_folder(path):
    """Class folders on an object store, where "folders" are key prefixes: one listing gives every key."""
    root = fs.absolute(path)
    rels = [r for r in fs.list_files(path, recursive=True) if "/" in r]  # Keras ignores top-level files
    if not rels:
        raise SourceError(f"{path}: no class subfolders found (expected DATA/<class>/<image>)")
    # Keras' order, as walk_files gives it locally: by class, then folder path, then file name.
    rels.sort(key=lambda r: (r.split("/", 1)[0], posixpath.dirname(r), posixpath.basename(r)))
    classes = sorted({r.split("/", 1)[0] for r in rels})
    index = {c: k for k, c in enumerate(classes)}
    labels = np.array([index[r.split("/", 1)[0]] for r in rels], np.int64)
    groups = read_groups_file(root, rels)
    return Manifest("folder", root, rels, labels=labels, class_names=classes, **file_rows(root, rels),
                    **({"groups": groups[0], "group_by": groups[1]} if groups else {}))


def read_csv(path, *, image_root=None, path_column=None, label_column=None, target_columns=None,
             group_column=None):
    """Read a CSV of image paths with a label column, numeric target columns, or nothing else (task ``none``).

    ``group_column`` names a column whose equal values mark near-duplicate rows (one subject, one video,
    one scene): stage two keeps each group on one side of a validation split. It is never detected.
    """
    header, rows = read_table(path)
    root = root_of(path, image_root)
    pcol = _pick_column(path, header, path_column, PATH_COLUMNS, "path")
    grouped, gcol = {}, None
    if group_column is not None:
        gcol = _pick_column(path, header, group_column, (), "group")
        if gcol == pcol:
            raise SourceError(f"{path}: column {header[gcol]!r} cannot be both the path and the group column")
        grouped = {"groups": _cells(path, header, rows, gcol, "group"),
                   "group_by": check_group_by(header[gcol], where=path)}
    if label_column is not None and target_columns is not None:
        raise SourceError(f"{path}: give either a label column or target columns, not both")
    lcol = None
    if target_columns is None:
        lcol = _pick_column(path, header, label_column, LABEL_COLUMNS, "label", required=False)
    if lcol is not None and lcol == gcol:
        raise SourceError(f"{path}: column {header[gcol]!r} cannot be both the label and the group column")
    paths = _cells(path, header, rows, pcol, "path")
    files = file_rows(root, paths)
    errors = files["row_errors"]
    if lcol is not None:
        values = _cells(path, header, rows, lcol, "label")
        classes = sorted_classes(values)
        index = {c: k for k, c in enumerate(classes)}
        return Manifest("csv", root, paths, labels=np.array([index[v] for v in values], np.int64),
                        class_names=classes, **files, **grouped)
    if target_columns is None and len(header) == 1 + bool(grouped):
        # A path column and nothing else (but groups): images to predict on.
        return Manifest("csv", root, paths, **files, **grouped)
    if target_columns is not None:
        tcols = [_pick_column(path, header, c, (), "target") for c in target_columns]
        if gcol in tcols:
            raise SourceError(f"{path}: column {header[gcol]!r} cannot be both a target and the group column")
    else:
        # Auto: every other column holding at least one number; it must then be all numbers.
        skip = {pcol, gcol}  # a subject number is a group, not a target
        tcols = [j for j in range(len(header)) if j not in skip and any(_NUMBER.fullmatch(row[j].strip())
                                                                        for _, row in rows)]
        if not tcols:
            raise SourceError(f"{path}: no label column ({'/'.join(LABEL_COLUMNS)}) and no numeric "
                              f"target columns; name them with --label-column or --target-columns")
    check_xy_pairs(path, [header[j] for j in tcols])  # given or detected: a lone nose_tip_x is half a point
    targets = parse_floats(path, header, rows, tcols)
    for i in np.flatnonzero(np.isnan(targets).all(axis=1)):
        errors.setdefault(int(i), "no_targets")
    return Manifest("csv", root, paths, targets=targets, target_names=[header[j] for j in tcols], **files,
                    **grouped)


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Source:
    """One kind of dataset source: its reader, what it reads, how ``auto`` recognises it, its ``--help`` line.

    ``read(path, **options)`` takes only the options it understands (:func:`read_source` refuses
    the others by name); ``takes`` is ``"directory"``, ``"file"`` or ``"either"`` (a tar or a folder
    of tars); ``detect(path, options)`` says whether ``auto`` should pick it, tried in registry order.
    """

    read: Callable[..., Manifest]
    takes: str
    help: str
    detect: Callable[[str, dict], bool]


def _suffix(path) -> str:
    return os.path.splitext(path.rstrip("/"))[1].lower()


def _csv_header(path) -> list[str]:
    with fs.open_text(path) as f:
        return [h.strip() for h in next(csv.reader(f), [])]


def _is_kaggle(path, _options) -> bool:
    if _suffix(path) != ".csv" or fs.isdir(path):
        return False
    header = _csv_header(path)
    keypoints = any(h.lower().endswith(("_x", "_y")) for h in header)
    return "Image" in header and (keypoints or "ImageId" in header)


def _first_entry(path) -> str:
    with fs.open_text(path) as f:
        for text in f:
            if text.strip() and not text.strip().startswith("#"):
                return text.strip()
    return ""


def _is_labelled_list(path, options) -> bool:
    """A Places365-style list: ``<image> <integer>`` lines (a test list without labels is a plain list)."""
    if _suffix(path) not in (".txt", ".lst") or fs.isdir(path):
        return False
    return "categories" in options or re.fullmatch(r"\S.*\s[+-]?\d+", _first_entry(path)) is not None


def _holds(suffix):
    """Detects ``suffix`` shards: one such file, a brace pattern of them, or a directory holding them."""
    def detect(path, _options) -> bool:
        if fs.is_pattern(path) or not fs.isdir(path):
            return _suffix(path) == suffix
        if fs.is_url(path):
            return any(r.endswith(suffix) for r in fs.list_files(path, recursive=False))
        # The top level and data/ (Hugging Face's layout): an image folder is never walked to find out.
        return any(e.name.endswith(suffix) and e.is_file() for d in (path, os.path.join(path, "data"))
                   if os.path.isdir(d) for e in os.scandir(d))
    return detect


#: File names that say "an image" when ``auto`` looks at a folder's top level (decoding still sniffs content).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _has_class_folders(path, options) -> bool:
    """Subfolders and no images beside them (Keras ignores top-level files, so a stray README still is one)."""
    if options.get("recursive") or not fs.isdir(path):
        return False
    if fs.is_url(path):
        rels = fs.list_files(path, recursive=True)
        if any("/" not in r and r.lower().endswith(IMAGE_SUFFIXES) for r in rels):
            return False
        return any("/" in r for r in rels)
    entries = [e for e in os.scandir(path) if not e.name.startswith(".")]
    if any(e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES) for e in entries):
        return False  # photos/ with a subfolder or two: a folder of images, not classes
    return any(e.is_dir() for e in entries)


#: Every kind of source, in the order ``auto`` tries them; each entry carries its own behaviour.
SOURCES: dict[str, Source] = {
    "webdataset": Source(read_webdataset, "either", "tar shards: a .tar, a folder of them, or "
                         "shards/{00000..00099}.tar; label from .cls or a json field (--label-key)",
                         _holds(".tar")),
    "parquet": Source(read_parquet, "either", "files with an image column (bytes, or a Hugging Face "
                      "{bytes, path} struct): a .parquet, a folder of them or a brace pattern", _holds(".parquet")),
    "kaggle_keypoints": Source(read_kaggle_keypoints, "file", "facial keypoints CSV (Image pixels, *_x/*_y "
                               "columns); a test.csv with ImageId,Image only is unlabelled", _is_kaggle),
    "csv": Source(read_csv, "file", "CSV of image paths plus a label column, numeric target columns, or nothing "
                  "else (unlabelled)", lambda path, _o: _suffix(path) == ".csv"),
    "places365": Source(read_places365, "file", "list file ('<image> <label>' lines) with --categories",
                        _is_labelled_list),
    "list": Source(read_list, "file", "plain text file of image paths, one a line (unlabelled)",
                   lambda path, _o: _suffix(path) in (".txt", ".lst") and not fs.isdir(path)),
    "folder": Source(read_folder, "directory", "class folders DATA/<class>/<image>", _has_class_folders),
    "images": Source(read_images, "directory", "a folder of images without classes, its subfolders too with "
                     "--recursive (unlabelled)", lambda path, _o: fs.isdir(path)),
}


def detect_kind(path, options=None) -> str | None:
    """The kind ``--source-kind auto`` picks for ``path`` (the first of :data:`SOURCES` whose ``detect`` accepts it),
    or ``None``; ``options``: the reader options given (``{"categories": ...}`` makes a list file Places365)."""
    path = os.fspath(path)
    return next((name for name, s in SOURCES.items() if s.detect(path, options or {})), None)


def read_source(path, *, kind="auto", progress=False, shard=None, **options) -> Manifest:
    """Read a dataset description into a :class:`~features.reader.manifest.Manifest`.

    Args:
        path: A directory, file, brace pattern or fsspec URL (``s3://``, ``memory://``...) that one of
            the :data:`SOURCES` reads.
        kind: A key of :data:`SOURCES`, or ``"auto"``: the first entry whose ``detect`` accepts ``path``
            (a folder with class subfolders is ``"folder"``, a flat one ``"images"``; ``.tar`` and
            ``.parquet`` shards; a Kaggle keypoints CSV before another ``.csv``; a ``.txt`` of
            ``<image> <integer>`` lines is ``"places365"``, of bare paths ``"list"``).
        progress: Show a progress bar while indexing many shards.
        shard: ``(I, N)`` for ``--shard I/N``. A reader that splits work by whole files (it takes a
            ``shard`` parameter: webdataset tars) reads only shard I's files and says so in
            ``Manifest.part``; the others return every row and the caller slices them.
        **options: The reader's options (``categories``, ``image_root``, ``path_column``,
            ``label_column``, ``target_columns``, ``recursive``, ``label_key``, ``image_column``);
            ``None`` and ``False`` mean "not given". An option the reader does not take is refused.

    Returns:
        The manifest, rows in a deterministic order.

    Raises:
        SourceError: If the source is missing or malformed, naming the file and line (or row).
    """
    path = os.fspath(path)  # a pathlib.Path from Python callers: the readers and detectors take strings
    if not fs.is_pattern(path) and not fs.exists(path):
        raise SourceError(f"{path}: no such file or directory")
    given = {k: v for k, v in options.items() if v is not None and v is not False}
    if kind == "auto":
        kind = detect_kind(path, given)
        if kind is None:
            raise SourceError(f"{path}: cannot tell the source kind (expected a directory, .csv, .txt, .tar or "
                              f".parquet); pass --source-kind, one of {', '.join(SOURCES)}")
    if kind not in SOURCES:
        raise SourceError(f"{path}: unknown source kind {kind!r}; expected one of {', '.join(SOURCES)}")
    source = SOURCES[kind]
    is_dir = not fs.is_pattern(path) and fs.isdir(path)
    if source.takes != "either" and (source.takes == "directory") != is_dir:
        what = {"folder": "directory of class folders"}.get(kind, source.takes)
        raise SourceError(f"{path}: --source-kind {kind} reads a {what}, and this is "
                          f"{'a directory' if is_dir else 'a file'}")
    # Reject options the reader would ignore: a silently ignored option is a wrong dataset.
    params = inspect.signature(source.read).parameters
    unused = sorted(set(given) - set(params))
    if unused:
        flags = ", ".join("--" + u.replace("_", "-") for u in unused)
        raise SourceError(f"{path}: option(s) {flags} do not apply to a {kind} source")
    if "progress" in params:
        given["progress"] = progress
    if "shard" in params and shard is not None:
        given["shard"] = tuple(shard)
    return source.read(path, **given)


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




def check_found(path, manifest: Manifest) -> None:
    """Fail before any backbone work when most of a source's image files are missing, naming where they were sought.

    One missing file is a row problem (kept, marked ``missing``); most of them missing is a wrong
    ``--image-root`` or a list used on another machine, which a full run would only reveal after building
    the model and decoding nothing.
    """
    missing = sorted(i for i, r in manifest.row_errors.items() if r == "missing")
    if not missing or len(missing) * 2 <= len(manifest):
        return
    first = manifest.paths[missing[0]]
    hint = ""
    if manifest.kind in SOURCES and "image_root" in inspect.signature(SOURCES[manifest.kind].read).parameters:
        hint = "; if the images live elsewhere, pass --image-root DIR"
    raise SourceError(f"{path}: {len(missing)} of {len(manifest)} image files are missing: looked under "
                      f"{manifest.root} (e.g. {fs.join(manifest.root, first)}){hint}")

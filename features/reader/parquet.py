"""Read parquet files with an image column (Hugging Face datasets, img2dataset) into a manifest.

``DATA`` is one ``.parquet`` file, a directory of them (searched recursively, as Hugging Face lays
out ``data/train-00000-of-00004.parquet``) or a brace pattern, locally or on any fsspec filesystem.
The image column holds encoded bytes, or a struct ``{bytes, path}`` as ``datasets.Image`` writes it
(``path`` is read, relative to the file's folder or ``image_root``, when ``bytes`` is null). A label
column gives classification (a Hugging Face ``ClassLabel`` keeps its names), ``target_columns``
regression, neither task ``none``.

Only the small columns are read while indexing. Image bytes are read one row group at a time by
the decode pool (:class:`RowGroups` keeps the few groups in use), so memory stays flat in the
number of rows (``bench/source_rss.py`` measures it). Row ids are
``<file>.parquet#row=<i>``, i counted within the file.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading

import numpy as np

from . import fs
from .base import check_xy_pairs, sorted_classes
from .errors import SourceError
from .manifest import Manifest

log = logging.getLogger("bneck")

IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp", "image_bytes", "bytes")
LABEL_COLUMNS = ("label", "labels", "class", "category")
# Row groups kept decoded-ready: the runner's read-ahead spans at most two, a third absorbs stragglers.
CACHED_GROUPS = 3
# Above this a row group is a large share of RAM per cached copy: worth a warning that says why.
_LARGE_GROUP = 512 << 20


def _pq():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SourceError("reading parquet needs pyarrow: pip install 'bneck[parquet]'") from None
    return pq


def _open(location):
    pq = _pq()
    if fs.is_url(location):
        fsys, p = fs.filesystem(location)
        return pq.ParquetFile(fsys.open(p, "rb"))
    return pq.ParquetFile(location)


def read_parquet(path, *, image_root=None, image_column=None, label_column=None, target_columns=None,
                 progress=False):
    """Read parquet files into a manifest (see the module docstring)."""
    files = fs.shard_files(path, ".parquet")
    if label_column is not None and target_columns is not None:
        raise SourceError(f"{path}: give either a label column or target columns, not both")
    # Row ids name each file relative to the folder holding them all, like the shard list users wrote.
    base = fs.common_parent(files)
    names = [fs.relative(f, base) for f in files]
    ids, groups, meta = [], [], []
    labels, targets, class_names = [], [], None
    image_col = lcol = None
    from tqdm.auto import tqdm

    bar = tqdm(files, desc="index parquet files", unit="file", disable=not progress or len(files) < 2, leave=False)
    for f_index, location in enumerate(bar):
        try:
            pf = _open(location)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise SourceError(f"{location}: not a readable parquet file ({exc})") from None
        schema = pf.schema_arrow
        cols = schema.names
        image_col = _pick(location, cols, image_column, IMAGE_COLUMNS, "image")
        _image_kind(location, schema.field(image_col))  # refuse a column that holds no images, up front
        if target_columns is None:
            lcol = _pick(location, cols, label_column, LABEL_COLUMNS, "label", required=False)
        tcols = [_pick(location, cols, c, (), "target") for c in (target_columns or [])]
        if tcols:
            check_xy_pairs(location, tcols)
        hf_names = _classlabel_names(schema, lcol)
        if lcol is not None and f_index == 0:
            class_names = hf_names
        md = pf.metadata
        file_rows = 0
        size, version = _stat(location)
        meta.append(f"{names[f_index]}:{size}:{version}:{md.num_rows}")
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            if rg.total_byte_size > _LARGE_GROUP:
                log.warning(f"{location}: row group {g} holds {rg.total_byte_size >> 20} MiB; each one in use is "
                            "held in memory whole, so write the file with smaller row groups (row_group_size=) "
                            "to use less")
            groups.append((f_index, g, rg.num_rows))
            ids += [f"{names[f_index]}#row={file_rows + i}" for i in range(rg.num_rows)]
            file_rows += rg.num_rows
        small = [c for c in ([lcol] if lcol is not None else []) + tcols]
        if small:
            table = pf.read(columns=small)
            if lcol is not None:
                labels += table.column(lcol).to_pylist()
            if tcols:
                block = np.full((table.num_rows, len(tcols)), np.nan, np.float32)
                for k, c in enumerate(tcols):
                    values = table.column(c).to_pylist()
                    for i, v in enumerate(values):
                        if v is None:
                            continue
                        if isinstance(v, bool) or not isinstance(v, (int, float)):
                            raise SourceError(f"{location}#row={i}: column {c!r} holds {v!r}, not a number")
                        block[i, k] = v
                targets.append(block)
    if not ids:
        raise SourceError(f"{path}: the parquet files hold no rows")
    root = fs.absolute(image_root) if image_root else base
    blobs = RowGroups(files, names, groups, image_col, root, meta)
    errors = {}
    fields = {}
    if targets:
        t = np.concatenate(targets)
        errors = {int(i): "no_targets" for i in np.flatnonzero(np.isnan(t).all(axis=1))}
        fields = {"targets": t, "target_names": list(target_columns)}
    elif lcol is not None:
        if any(v is None for v in labels):
            i = labels.index(None)
            raise SourceError(f"{path}: {ids[i]}: the label column {lcol!r} is empty")
        if class_names is not None and all(isinstance(v, int) for v in labels):
            bad = [i for i, v in enumerate(labels) if not 0 <= v < len(class_names)]
            if bad:
                raise SourceError(f"{path}: {ids[bad[0]]}: label {labels[bad[0]]} is not one of the "
                                  f"{len(class_names)} ClassLabel names of column {lcol!r}")
            fields = {"labels": np.array(labels, np.int64), "class_names": class_names}
        else:
            values = [str(v) for v in labels]
            classes = sorted_classes(values)
            index = {c: k for k, c in enumerate(classes)}
            fields = {"labels": np.array([index[v] for v in values], np.int64), "class_names": classes}
    return Manifest("parquet", root, ids, row_errors=errors, blobs=blobs, **fields)


def _pick(location, cols, wanted, candidates, what, required=True):
    if wanted is not None:
        if wanted in cols:
            return wanted
        raise SourceError(f"{location}: no {what} column {wanted!r}; columns are {', '.join(cols)}")
    lower = {c.lower(): c for c in cols}
    for c in candidates:
        if c in lower:
            return lower[c]
    if required:
        raise SourceError(f"{location}: no {what} column (looked for {', '.join(candidates)}); columns are "
                          f"{', '.join(cols)}; name it with --image-column")
    return None


def _image_kind(location, field):
    import pyarrow as pa

    t = field.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "bytes"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "path"
    if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
        return "struct"
    raise SourceError(f"{location}: image column {field.name!r} is {t}; expected binary bytes, a path string or "
                      "a struct with a 'bytes' field (as Hugging Face datasets writes images)")


def _classlabel_names(schema, col):
    """The names of a Hugging Face ``ClassLabel`` column, read from the schema's ``huggingface`` metadata."""
    if col is None or not schema.metadata or b"huggingface" not in schema.metadata:
        return None
    try:
        info = json.loads(schema.metadata[b"huggingface"])
        feature = info.get("info", {}).get("features", {}).get(col, {})
    except (ValueError, AttributeError):
        return None
    names = feature.get("names") if isinstance(feature, dict) else None
    return [str(n) for n in names] if isinstance(names, list) else None


def _stat(location):
    if fs.is_url(location):
        fsys, p = fs.filesystem(location)
        info = fsys.info(p)
        return int(info.get("size") or 0), fs.version_of(info)
    st = os.stat(location)
    return st.st_size, str(st.st_mtime_ns)


class RowGroups:
    """Rows whose images are cells of parquet row groups, each group read once while its rows decode."""

    def __init__(self, files, names, groups, column, root, meta):
        self.files, self.names, self.column, self.root, self.meta = files, names, column, root, meta
        # Row -> (group number, index within it), from the groups' row counts.
        counts = np.array([n for _, _, n in groups], np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        self.groups = groups
        # Per group, the row number (within its file) of its first row: row ids count per file.
        firsts, seen = [], {}
        for f_index, _, n in groups:
            firsts.append(seen.get(f_index, 0))
            seen[f_index] = firsts[-1] + n
        self.file_first = firsts
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._loading: dict = {}

    def source(self, i):
        """A blob for row ``i`` that reads its row group on first use."""
        g = int(np.searchsorted(self.starts, i, side="right") - 1)
        f_index, _, _ = self.groups[g]
        k = int(i - self.starts[g])
        return _Cell(self, g, k, f"{self.names[f_index]}#row={self.file_first[g] + k}")

    def cells(self, g):
        """The image cells of group ``g``: bytes, or a path, per row; read once, kept while in use."""
        with self._lock:
            if g in self._cache:
                self._cache.move_to_end(g)
                return self._cache[g]
            event = self._loading.get(g)
            owner = event is None
            if owner:
                event = self._loading[g] = threading.Event()
        if not owner:
            event.wait()
            with self._lock:
                if g in self._cache:
                    return self._cache[g]
            return self.cells(g)  # the loader failed: try ourselves, to report the error
        try:
            cells = self._read(g)
            with self._lock:
                self._cache[g] = cells
                while len(self._cache) > CACHED_GROUPS:
                    self._cache.popitem(last=False)
        finally:
            with self._lock:
                self._loading.pop(g, None)
            event.set()
        return cells

    def _read(self, g):
        f_index, group, _ = self.groups[g]
        pf = _open(self.files[f_index])
        column = pf.read_row_group(group, columns=[self.column]).column(0).combine_chunks()
        import pyarrow as pa

        if pa.types.is_struct(column.type):
            data = column.field("bytes").to_pylist()
            paths = column.field("path").to_pylist() if column.type.get_field_index("path") >= 0 \
                else [None] * len(data)
            return [d if d is not None else p for d, p in zip(data, paths)]
        return column.to_pylist()

    def fingerprint_bytes(self) -> bytes:
        """Each file's name, size, etag/mtime and row count."""
        return "\0".join(self.meta).encode()


class _Cell:
    __slots__ = ("groups", "g", "k", "name")

    def __init__(self, groups, g, k, name):
        self.groups, self.g, self.k, self.name = groups, g, k, name

    def read_image_bytes(self) -> bytes:
        value = self.groups.cells(self.g)[self.k]
        if value is None:
            raise FileNotFoundError(f"{self.name}: the image cell is empty")
        if isinstance(value, str):  # a struct with only a path, or a path column: read that file
            return fs.Blob(value if os.path.isabs(value) or fs.is_url(value)
                           else fs.join(self.groups.root, value)).read_image_bytes()
        return value

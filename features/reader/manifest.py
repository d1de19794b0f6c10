"""The in-memory description of a dataset: one row per image, in a fixed order.

A :class:`Manifest` is what every source reader (:mod:`features.reader.sources`) produces
and what the feature extractor consumes.  Row order is part of the contract: the
HDF5 cache stores features by row index, and sharding splits rows by index, so
readers must be deterministic and the manifest must never reorder or drop rows.
Rows that could not be read properly stay in place and are listed in
``row_errors`` so stage one can mark them invalid instead of shifting indices.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class FilePart:
    """The whole files of a source (webdataset tars) that a manifest covers when the file is the unit of work.

    Shard ``I/N`` of a source of ``count`` files holds files ``[start, stop)`` =
    :func:`shard_bounds` ``(count, I, N)`` of its file list, indexed alone: the other files are listed
    and stat'ed, never opened (as img2dataset and clip-retrieval split work). Its rows are its own,
    numbered from 0, since the global row of its first sample is not known without reading the tars
    before it. ``fingerprint`` covers the names, sizes and etags/mtimes of *all* ``count`` files and the
    reader options, so it is the same for every shard (and for an unsharded run): what merge compares.
    """

    unit: str
    start: int
    stop: int
    count: int
    fingerprint: str


@dataclass
class Manifest:
    """Rows of a dataset: ids, labels or regression targets (or neither: task ``none``), and per-row read errors.

    Attributes:
        kind: Which reader produced it: a key of :data:`features.reader.sources.SOURCES`.
        root: Directory (or fsspec URL) that the relative ``paths`` are resolved against.
        paths: Per row, the id shown to users and stored in HDF5: the path relative
            to ``root``, ``"<csvname>#row=<i>"`` for images given inline, ``"<shard>.tar#<key>"``
            for a webdataset sample, ``"<file>.parquet#row=<i>"`` for a parquet row.
        labels: ``int64`` array ``(N,)`` indexing ``class_names`` (classification).
        class_names: Names of the classes, ``labels`` index into it.
        targets: ``float32`` array ``(N, K)``, NaN where a value is missing (regression).
        target_names: Names of the ``K`` target columns.
        inline: ``uint8`` array ``(N, H, W)`` of grey images given inline in the source.
        row_errors: Row index -> reason code (e.g. ``"missing"``) found while reading;
            such rows are kept so indices stay stable, stage one marks them invalid.
        blobs: For rows whose bytes are not a local file: an object with ``source(i)`` (what the
            decoder takes, read in the decode thread) and ``fingerprint_bytes()`` (sizes and
            etags/mtimes of the files behind the rows), e.g. :class:`features.reader.fs.Blob` rows
            of an fsspec folder, tar members, parquet cells.
        groups: Per row, the group it belongs to (the video a frame came from, a CSV's
            ``--group-column``): rows of one group are near-duplicates, which stage two keeps on one
            side of every validation split. None: every row stands alone.
        group_by: What the groups are (``"video"``, the CSV column's name); set with ``groups``.
        part: For a source split by whole files (webdataset tars): which files this manifest
            covers (:class:`FilePart`); ``None`` for sources split by rows.
    """

    kind: str
    root: str
    paths: list[str]
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    targets: np.ndarray | None = None
    target_names: list[str] | None = None
    inline: np.ndarray | None = None
    row_errors: dict[int, str] = field(default_factory=dict)
    blobs: object | None = None
    groups: list[str] | None = None
    group_by: str | None = None
    part: FilePart | None = None

    def __post_init__(self):
        """Normalise dtypes and check that all per-row arrays agree on N."""
        # The registry (features.reader.sources) decides which kinds exist; here a kind is only a name.
        if not isinstance(self.kind, str) or not self.kind.isidentifier():
            raise ValueError(f"a manifest kind is a source name such as 'folder', got {self.kind!r}")
        self.paths = list(self.paths)
        n = len(self.paths)
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
            if len(self.labels) != n:
                raise ValueError(f"labels has {len(self.labels)} rows but paths has {n}")
            if self.class_names is None:
                raise ValueError("labels given without class_names")
            self.class_names = [str(c) for c in self.class_names]
            if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
                raise ValueError(f"labels must lie in [0, {len(self.class_names)})")
        if self.targets is not None:
            self.targets = np.asarray(self.targets, dtype=np.float32)
            if self.targets.ndim != 2 or self.targets.shape[0] != n:
                raise ValueError(f"targets must have shape ({n}, K), got {self.targets.shape}")
            names = list(self.target_names or [])
            if len(names) != self.targets.shape[1]:
                raise ValueError(f"{self.targets.shape[1]} target columns but {len(names)} target_names")
            self.target_names = names
        if self.inline is not None:
            self.inline = np.asarray(self.inline, dtype=np.uint8)
            if self.inline.ndim != 3 or self.inline.shape[0] != n:
                raise ValueError(f"inline images must have shape ({n}, H, W), got {self.inline.shape}")
        self.row_errors = {int(k): str(v) for k, v in self.row_errors.items()}
        if (self.groups is None) != (self.group_by is None):
            raise ValueError("groups and group_by are given together")
        if self.groups is not None:
            self.groups = [str(g) for g in self.groups]
            if len(self.groups) != n:
                raise ValueError(f"groups has {len(self.groups)} rows but paths has {n}")
            if not all(self.groups):
                raise ValueError("every row's group must be a non-empty string")

    @property
    def task(self) -> str:
        """``"classification"`` with labels, ``"regression"`` with targets, ``"none"`` for unlabelled rows."""
        if self.labels is not None:
            return "classification"
        return "regression" if self.targets is not None else "none"

    def __len__(self) -> int:
        """Number of rows."""
        return len(self.paths)

    def source(self, i: int) -> str | np.ndarray:
        """What the image decoder takes for row ``i``: an absolute path or the inline array."""
        if self.inline is not None:
            return self.inline[i]
        if self.blobs is not None:
            return self.blobs.source(i)
        return os.path.join(self.root, self.paths[i])

    def fingerprint(self) -> str:
        """Return a sha256 hex digest that changes whenever any input of the manifest changes.

        The digest covers the kind, the row ids, labels or targets, class and target
        names, the groups (only when there are any, so a manifest without them keeps its
        old digest) and, for file rows, each file's size and ``mtime_ns`` (``-1`` for a
        missing file); for inline images it covers the pixel bytes; for blob rows (fsspec,
        tar shards, parquet) the sizes and etags (or mtimes) the filesystem offers.  ``root`` is
        deliberately left out so a dataset moved with its timestamps preserved
        (``rsync -a``, ``cp -p``) keeps its cache.

        Returns:
            A 64-character lowercase hex string, identical across runs and machines
            for identical inputs.
        """
        h = hashlib.sha256()
        # Every field is length-prefixed and tagged, so no two different manifests
        # can serialise to the same byte stream by shifting a boundary.
        _feed(h, b"kind", self.kind.encode())
        _feed(h, b"paths", b"".join(_lp(_enc(p)) for p in self.paths))
        if self.labels is not None:
            _feed(h, b"labels", self.labels.astype("<i8").tobytes())
            _feed(h, b"classes", b"".join(_lp(_enc(c)) for c in self.class_names))
        if self.targets is not None:
            t = self.targets.astype("<f4")
            # NaN has many bit patterns; canonicalise so "missing" always hashes alike.
            t = np.where(np.isnan(t), np.float32(np.nan), t).astype("<f4")
            _feed(h, b"targets", repr(t.shape).encode() + t.tobytes())
            _feed(h, b"target_names", b"".join(_lp(_enc(c)) for c in self.target_names))
        if self.groups is not None:
            _feed(h, b"groups", _lp(_enc(self.group_by)) + b"".join(_lp(_enc(g)) for g in self.groups))
        if self.inline is not None:
            _feed(h, b"inline", repr(self.inline.shape).encode()
                  + hashlib.sha256(np.ascontiguousarray(self.inline).tobytes()).digest())
        elif self.blobs is not None:
            # Object stores offer sizes and etags, not mtimes: the blobs say what they have.
            _feed(h, b"blobs", self.blobs.fingerprint_bytes())
        else:
            _feed(h, b"stats", self.file_stats(fresh=True).tobytes())
        return h.hexdigest()

    def file_stats(self, *, fresh: bool = False) -> np.ndarray | None:
        """``(size, mtime_ns)`` per row of local file rows (``-1`` for a missing file); None for other rows.

        ``fresh=True`` stats every file now (the fingerprint always does); otherwise the last result is
        reused, so the run's row digests (features.writer.changes) cost no second pass over the files.
        """
        if self.inline is not None or self.blobs is not None:
            return None
        if fresh or getattr(self, "_stats", None) is None or len(self._stats) != len(self):
            stats = np.empty((len(self), 2), dtype="<i8")
            for i in range(len(self)):
                try:
                    st = os.stat(self.source(i))
                    stats[i] = (st.st_size, st.st_mtime_ns)
                except OSError:
                    stats[i] = (-1, -1)
            self._stats = stats  # a cache, not a field: dataclass equality and repr ignore it
        return self._stats

    def shard_range(self, index: int, count: int) -> tuple[int, int]:
        """Return the contiguous row slice ``[start, stop)`` of shard ``index`` of ``count``."""
        return shard_bounds(len(self), index, count)


def fingerprint_of(*fields: bytes) -> str:
    """A sha256 hex digest of ``fields``, each length-prefixed (no two field lists hash alike)."""
    h = hashlib.sha256()
    for f in fields:
        h.update(_lp(f))
    return h.hexdigest()


def shard_bounds(n: int, index: int, count: int) -> tuple[int, int]:
    """Return ``[start, stop)`` of shard ``index`` (0-based) of ``count`` over ``n`` rows."""
    for name, value in (("shard index", index), ("shard count", count)):
        # bool is an int subclass; True/False as a shard number is always a bug.
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if count < 1:
        raise ValueError(f"shard count must be >= 1, got {count}")
    if not 0 <= index < count:
        raise ValueError(f"shard index must satisfy 0 <= index < {count}, got {index}")
    # Floor division of index*n spreads the remainder evenly and the shards tile [0, n).
    return int(index * n // count), int((index + 1) * n // count)


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"I/N"`` (0-based ``I``, ``0 <= I < N``) into ``(I, N)``.

    Args:
        text: The shard spec as typed by the user, e.g. ``"0/4"``.

    Returns:
        ``(index, count)``.

    Raises:
        ValueError: With a message showing the expected form when ``text`` is malformed
            or out of range.
    """
    parts = str(text).strip().split("/")
    if len(parts) != 2:
        raise ValueError(f"shard must look like I/N (e.g. 0/4), got {text!r}")
    try:
        index, count = int(parts[0]), int(parts[1])
    except ValueError:
        raise ValueError(f"shard must look like I/N with integers I and N (e.g. 0/4), got {text!r}") from None
    if count < 1:
        raise ValueError(f"shard count N must be >= 1 in {text!r}")
    if not 0 <= index < count:
        raise ValueError(f"shard index I is 0-based and must satisfy 0 <= I < {count} in {text!r}")
    return index, count


def _enc(s: str) -> bytes:
    """Encode a str that may carry surrogate-escaped (non-UTF-8) file name bytes."""
    return s.encode("utf-8", "surrogateescape")


def _lp(b: bytes) -> bytes:
    """Length-prefix ``b`` with 8 little-endian bytes."""
    return len(b).to_bytes(8, "little") + b


def _feed(h, tag: bytes, payload: bytes) -> None:
    """Add a tagged, length-prefixed field to the hash."""
    h.update(_lp(tag))
    h.update(_lp(payload))

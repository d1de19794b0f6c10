"""Lazy, row-indexable float32 views over feature datasets in bneck HDF5 files.

Views are made by :meth:`pipeline.data.featurefile.FeatureFile.view`; :class:`FeatureFileError`, the
error every reader of a feature file raises, is defined here, at the bottom of pipeline/data.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from features.attrs import plain
from features.faults import fault_point

__all__ = ["ConcatView", "FeatureFileError", "FeatureView", "batch_indices", "total_nbytes"]

POOLINGS = ("none", "avg", "max")

# Default size of one read in to_numpy: large enough to amortise HDF5 overhead, small enough
# that the float32 staging buffer never matters next to the result.
_BLOCK_BYTES = 64 * 2**20


class FeatureFileError(ValueError):
    """A feature file is unreadable, not a bneck file, incomplete or incompatible."""


def _normalize_index(idx, n: int) -> tuple[np.ndarray, bool]:
    """Turn an int, slice, bool mask or int array into int positions in [0, n); flag scalars."""
    if isinstance(idx, slice):
        return np.arange(n, dtype=np.int64)[idx], False
    if np.isscalar(idx) or (isinstance(idx, np.ndarray) and idx.ndim == 0):
        arr, scalar = np.asarray([idx]), True
    else:
        arr, scalar = np.asarray(idx), False
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise IndexError(f"boolean index of shape {arr.shape} for {n} rows")
        return np.flatnonzero(arr), False
    if arr.size == 0:
        return np.zeros(0, np.int64), scalar
    if not np.issubdtype(arr.dtype, np.integer):
        raise IndexError(f"rows must be integers, slices or boolean masks, got {arr.dtype}")
    arr = arr.astype(np.int64).ravel()
    if arr.min() < -n or arr.max() >= n:
        raise IndexError(f"row index out of range for {n} rows")
    return np.where(arr < 0, arr + n, arr), scalar


def _read_sorted(ds, idx: np.ndarray) -> np.ndarray:
    """Read strictly increasing rows ``idx`` of h5py dataset ``ds`` as float32 (every view reads rows here)."""
    fault_point("view_read")  # testing hook: lazy loading is tested by what raising here would catch
    lo, hi = int(idx[0]), int(idx[-1]) + 1
    if hi - lo == len(idx):  # one contiguous run: a plain hyperslab, the fastest read
        return np.asarray(ds[lo:hi], dtype=np.float32)
    if len(idx) * 2 >= hi - lo:
        # Dense selection: reading the covering block and sub-selecting in memory beats
        # h5py's point-wise fancy selection, at most doubling the bytes read.
        return np.asarray(ds[lo:hi], dtype=np.float32)[idx - lo]
    return np.asarray(ds[idx], dtype=np.float32)  # h5py fancy indexing needs increasing order


def batch_indices(n: int, batch_size: int, *, shuffle: bool = False, seed=0,
                  window_batches: int = 16):
    """Yield position arrays covering range(n) in batches; shuffled within row windows.

    Shuffling permutes windows of ``window_batches`` consecutive batches and the rows inside
    each window, so each batch still comes from a limited stretch of the file (cheap HDF5
    reads) while batch composition and order change every time.
    """
    if not shuffle:
        for start in range(0, n, batch_size):
            yield np.arange(start, min(start + batch_size, n), dtype=np.int64)
        return
    rng = np.random.default_rng(seed)
    window = batch_size * window_batches
    starts = np.arange(0, n, window)
    pos = np.concatenate([rng.permutation(np.arange(s, min(s + window, n)))
                          for s in rng.permutation(starts)]) if n else np.zeros(0, np.int64)
    for start in range(0, n, batch_size):
        yield pos[start:start + batch_size]


class _ViewBase:
    """Shared helpers of FeatureView and ConcatView (same interface)."""

    shape: tuple[int, ...]

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def dtype(self) -> np.dtype:
        """Always float32: rows are converted on read whatever the stored dtype."""
        return np.dtype(np.float32)

    @property
    def ndim(self) -> int:
        """Number of dimensions of :attr:`shape`."""
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes the whole view would take as a float32 numpy array (after pooling)."""
        return int(np.prod(self.shape, dtype=np.int64)) * 4

    def _row_bytes(self) -> int:
        return max(4, int(np.prod(self.shape[1:], dtype=np.int64)) * 4)

    def iter_batches(self, batch_size: int = 256, *, shuffle: bool = False, seed=0):
        """Yield ``(positions, x)`` batches; positions index this view (and its y array)."""
        for pos in batch_indices(len(self), batch_size, shuffle=shuffle, seed=seed):
            yield pos, self[pos]

    def to_numpy(self, batch_rows: int | None = None, *, progress: bool | None = None,
                 desc: str = "loading features") -> np.ndarray:
        """Read the whole view into one float32 array, ``batch_rows`` rows per read, with a bar.

        ``progress=None`` shows the bar only on a terminal.
        """
        n = len(self)
        batch_rows = batch_rows or max(1, _BLOCK_BYTES // self._row_bytes())
        out = np.empty(self.shape, dtype=np.float32)
        with tqdm(total=n, unit="rows", desc=desc, disable=(not progress) if progress is not None
                  else None, leave=False) as bar:
            for start in range(0, n, batch_rows):
                stop = min(start + batch_rows, n)
                out[start:stop] = self[start:stop]
                bar.update(stop - start)
        return out


def pool_features(x: np.ndarray, op: str | None) -> np.ndarray:
    """Average or max over every axis but rows and channels; ``None``/``"none"`` or 2-D input: unchanged.

    The one pooling rule for training views and for ``predict`` on new images.
    """
    if op in (None, "none") or x.ndim == 2:
        return x
    axes = tuple(range(1, x.ndim - 1))
    return x.mean(axis=axes) if op in ("avg", "mean") else x.max(axis=axes)  # "mean": extraction's name for avg


class FeatureView(_ViewBase):
    """Lazy float32 rows of one feature dataset (``features`` or ``features_flipped``).

    ``rows`` selects file rows (any order, default all); position ``i`` of the view is file row
    ``rows[i]``. Nothing is read until indexed: ``view[idx]`` accepts an int, a slice, a bool
    mask or an int array (sorted or not, duplicates allowed) and returns float32 rows in the
    requested order.

    ``pooling`` is applied as rows are read: "none" keeps the stored shape; "avg"/"max" reduce
    the spatial axes of stored (h, w, c) maps to (c,). If the file was already pooled at
    extraction, "none" and that same pooling are accepted (no-ops); any other pooling is a
    :class:`FeatureFileError`.

    The view keeps its own read-only HDF5 handle (reopened lazily, e.g. after pickling), so it
    stays usable after the :class:`~pipeline.data.featurefile.FeatureFile` that made it is closed.
    """

    def __init__(self, path: str | os.PathLike, dataset: str = "features", *, rows=None,
                 pooling: str = "none", h5file: h5py.File | None = None):
        self.path, self.dataset = Path(path), dataset
        self._h5, self._owns_h5 = h5file, h5file is None
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        ds = self._ds()
        n_file, stored = ds.shape[0], tuple(int(s) for s in ds.shape[1:])
        stored_pooling = plain(self._file().attrs.get("pooling", "none"))
        self.pooling, self._op = pooling, None
        if stored_pooling != "none" or len(stored) < 2:
            if pooling not in ("none", stored_pooling):
                raise FeatureFileError(
                    f"{self.path}: features are stored as vectors {stored} (pooling "
                    f"{stored_pooling!r} at extraction); cannot apply {pooling!r} pooling on load")
        elif pooling != "none":
            self._op = pooling
        if rows is None:
            self.rows = np.arange(n_file, dtype=np.int64)
        else:
            self.rows, _ = _normalize_index(rows, n_file)
        out_row = stored[-1:] if self._op else stored
        self.shape = (len(self.rows), *out_row)

    # h5py handles cannot be pickled: drop ours and reopen lazily on the other side.
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_h5"], state["_owns_h5"] = None, True
        return state

    def _file(self) -> h5py.File:
        if self._h5 is None or not self._h5:  # never opened, or the shared handle was closed
            self._h5, self._owns_h5 = h5py.File(self.path, "r"), True
        return self._h5

    def _ds(self):
        return self._file()[self.dataset]

    def close(self) -> None:
        """Close the HDF5 handle if this view opened it (it reopens on the next read)."""
        if self._owns_h5 and self._h5 is not None and self._h5:
            self._h5.close()
        self._h5 = None

    def __repr__(self) -> str:
        return (f"FeatureView({str(self.path)!r}, {self.dataset!r}, shape={self.shape}, "
                f"pooling={self.pooling!r})")

    def _pool(self, x: np.ndarray) -> np.ndarray:
        return pool_features(x, self._op)

    def __getitem__(self, idx) -> np.ndarray:
        pos, scalar = _normalize_index(idx, len(self))
        if len(pos) == 0:
            return np.zeros((0, *self.shape[1:]), np.float32)
        file_rows = self.rows[pos]
        # h5py needs increasing, unique indices: read those, then restore the requested order.
        uniq, inverse = np.unique(file_rows, return_inverse=True)
        x = self._pool(_read_sorted(self._ds(), uniq))
        x = x if len(uniq) == len(pos) and np.array_equal(uniq, file_rows) else x[inverse]
        return x[0] if scalar else x


class ConcatView(_ViewBase):
    """Several views stacked row-wise with the FeatureView interface (e.g. original + flipped)."""

    def __init__(self, views):
        self.views = list(views)
        if not self.views:
            raise ValueError("ConcatView needs at least one view")
        row_shapes = {tuple(v.shape[1:]) for v in self.views}
        if len(row_shapes) != 1:
            raise ValueError(f"cannot concatenate views with row shapes {sorted(row_shapes)}")
        self._offsets = np.cumsum([0] + [len(v) for v in self.views])
        self.shape = (int(self._offsets[-1]), *row_shapes.pop())

    def __repr__(self) -> str:
        return f"ConcatView({self.views!r})"

    def close(self) -> None:
        """Close the HDF5 handles of the member views."""
        for v in self.views:
            v.close()

    def __getitem__(self, idx) -> np.ndarray:
        pos, scalar = _normalize_index(idx, len(self))
        out = np.empty((len(pos), *self.shape[1:]), np.float32)
        which = np.searchsorted(self._offsets, pos, side="right") - 1
        for k, view in enumerate(self.views):
            mask = which == k
            if mask.any():
                out[mask] = view[pos[mask] - self._offsets[k]]
        return out[0] if scalar else out


def total_nbytes(*views) -> int:
    """Sum of float32 bytes of the given views/arrays, ignoring None."""
    return sum(int(v.nbytes) for v in views if v is not None)

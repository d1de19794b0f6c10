"""The output file of a run, preallocated once so feature rows are written straight into it.

Why not one growing HDF5 file: HDF5 is not crash-safe, and a writer killed mid-flush can leave a
file h5py cannot open at all. Why not chunk files copied into the final file at the end (what
bneck did before): every feature byte was then written twice and read once, the disk had to
hold the data twice, and the copy was a serial step after the loop (6% of a MobileNet run).

So the feature datasets are created up front, *contiguous and allocated early*, and the file is
closed again: its HDF5 metadata is complete and never touched while rows arrive. Rows are then
``os.pwrite``-n at their byte offsets in the datasets, which HDF5 never sees; a kill mid-write
damages only rows whose chunk has no commit marker yet (:mod:`features.writer.partial`), and those are
recomputed. The file is sparse until rows land, so creating it costs no disk space or time.

The one HDF5 write session, at the end (row data and attributes, :mod:`features.writer.assemble`),
changes metadata only. Its crash safety comes from a snapshot: every byte of the freshly created
file *outside* the feature ranges (a few KB) is saved next to it, and every reopen writes those
bytes back and truncates to the original size. That undoes any half-finished end session exactly
while the feature bytes are untouched, because HDF5 never writes inside allocated raw data.
"""

from __future__ import annotations

import os

import numpy as np

from features.faults import fault_point
from features.fsutil import atomic_path, datasync

TARGET_NAME = "target.h5"
SNAPSHOT_NAME = "target.snapshot.npz"
_DROP_CACHE = hasattr(os, "posix_fadvise")  # Linux; elsewhere the rows simply stay cached
class TargetError(RuntimeError):
    """The preallocated output file cannot be used (damaged or a different layout)."""


class TargetUnreadable(RuntimeError):
    """The preallocated output file cannot be read right now (a lock, EIO, too many open files)."""


def _create_contiguous(f, name: str, shape, dtype) -> None:
    import h5py

    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.CONTIGUOUS)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # byte offsets fixed now, before any row
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # no zeros written: the file stays sparse
    space = h5py.h5s.create_simple(tuple(shape))
    h5py.h5d.create(f.id, name.encode(), h5py.h5t.py_create(np.dtype(dtype)), space, dcpl=dcpl).close()


def _layout(path: str, views) -> dict[str, tuple[int, int]]:
    """``{view: (byte offset, byte length)}`` of each feature dataset, read back from the file."""
    import h5py

    out = {}
    # The caller holds bneck's own lock on the partial dir, so HDF5's file lock adds nothing, and a
    # reader elsewhere holding it must not make a resume look like a damaged file.
    with h5py.File(path, "r", locking=False) as f:
        for name in views:
            ds = f[name]
            off = ds.id.get_offset()
            out[name] = (int(off) if off is not None else 0, int(ds.id.get_storage_size()))
    return out


def _outside(size: int, ranges) -> list[tuple[int, int]]:
    """The ``(start, stop)`` pieces of ``[0, size)`` not covered by ``ranges``."""
    pieces, pos = [], 0
    for off, length in sorted(r for r in ranges if r[1]):
        if off > pos:
            pieces.append((pos, off))
        pos = max(pos, off + length)
    if pos < size:
        pieces.append((pos, size))
    return pieces


class Target:
    """The preallocated final HDF5 file of one output, inside its partial directory."""

    def __init__(self, directory: str, *, n_rows: int, feature_shape, store_dtype: str, views):
        self.path = os.path.join(directory, TARGET_NAME)
        self.snapshot_path = os.path.join(directory, SNAPSHOT_NAME)
        self.n_rows, self.feature_shape = n_rows, tuple(int(d) for d in feature_shape)
        self.dtype, self.views = np.dtype(store_dtype), list(views)
        self.row_bytes = int(np.prod(self.feature_shape)) * self.dtype.itemsize
        self.ranges: dict[str, tuple[int, int]] = {}
        self._fd = None

    @property
    def feature_bytes(self) -> int:
        """Bytes of feature data the file holds once every row is written."""
        return self.n_rows * self.row_bytes * len(self.views)

    def exists(self) -> bool:
        return os.path.exists(self.path) and os.path.exists(self.snapshot_path)

    def create(self) -> "Target":
        """Write a new, sparse file with the feature datasets allocated, and its snapshot.

        Both are written with :func:`features.fsutil.atomic_path`, the snapshot inside the
        target's write, so it is durable under its name before the target is renamed into place:
        a target never lacks one. (The rows are written in place later, :meth:`write_rows`: no
        rename is involved there.)
        """
        import h5py

        with atomic_path(self.path) as tmp:
            with h5py.File(tmp, "w") as f:
                for name in self.views:
                    _create_contiguous(f, name, (self.n_rows, *self.feature_shape), self.dtype)
            self.ranges = _layout(tmp, self.views)
            size = os.path.getsize(tmp)
            pieces = _outside(size, self.ranges.values())
            with open(tmp, "rb") as fh:
                blob = b"".join(os.pread(fh.fileno(), b - a, a) for a, b in pieces)
            with atomic_path(self.snapshot_path) as snap_tmp, open(snap_tmp, "wb") as fh:
                np.savez(fh, pieces=np.array(pieces, dtype=np.int64).reshape(-1, 2),
                         blob=np.frombuffer(blob, dtype=np.uint8), size=np.int64(size),
                         ranges=np.array([self.ranges[v] for v in self.views], dtype=np.int64).reshape(-1, 2))
        return self

    def restore(self) -> "Target":
        """Undo any half-finished end session: rewrite the non-feature bytes, then check the layout."""
        try:
            with np.load(self.snapshot_path, allow_pickle=False) as z:
                pieces, blob, size, ranges = z["pieces"], z["blob"].tobytes(), int(z["size"]), z["ranges"]
        except FileNotFoundError:
            # The snapshot is written before target.h5 is renamed into place, so a target without
            # one was touched by hand: nothing vouches for its rows' layout. Recompute them.
            raise TargetError(f"{self.snapshot_path} is missing") from None
        except OSError as exc:  # zipfile's BadZipFile is not an OSError: a damaged snapshot lands below
            raise TargetUnreadable(f"{self.snapshot_path} cannot be read ({exc})") from None
        except Exception as exc:
            raise TargetError(f"{self.snapshot_path} is damaged ({exc})") from None
        self.ranges = {v: (int(o), int(n)) for v, (o, n) in zip(self.views, ranges)}
        with open(self.path, "r+b") as fh:
            pos = 0
            for a, b in pieces:
                os.pwrite(fh.fileno(), blob[pos:pos + (b - a)], int(a))
                pos += int(b - a)
            os.ftruncate(fh.fileno(), size)
            os.fsync(fh.fileno())
        try:
            fault_point("target_restored")
            now = _layout(self.path, self.views)
        except OSError as exc:
            # The bytes HDF5 reads are the snapshot's own, so a failure here is the system's (EIO,
            # EMFILE, a network file system), not damage: keep the rows and let the user rerun.
            raise TargetUnreadable(f"{self.path} cannot be read after restoring its snapshot ({exc})") from None
        except Exception as exc:
            raise TargetError(f"{self.path} cannot be read after restoring its snapshot ({exc})") from None
        want = {v: (self.ranges[v][0], self.n_rows * self.row_bytes) for v in self.views}
        if now != want or self.ranges != want:
            raise TargetError(f"{self.path} does not have the layout this run needs ({now} vs {want})")
        return self

    # -- rows -------------------------------------------------------------------------------
    def open_for_rows(self) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR)

    def write_rows(self, start: int, arrays: dict[str, np.ndarray]) -> int:
        """Write rows ``start, start+1, ...`` of every view and make them durable; returns bytes."""
        self.open_for_rows()
        total, spans = 0, []
        for name in self.views:
            a = np.ascontiguousarray(arrays[name], dtype=self.dtype)
            if a.shape[1:] != self.feature_shape or start + len(a) > self.n_rows:
                raise TargetError(f"rows {start}..{start + len(a)} of shape {a.shape[1:]} do not fit "
                                  f"{self.path} ({self.n_rows} rows of {self.feature_shape})")
            data, off = memoryview(a).cast("B"), self.ranges[name][0] + start * self.row_bytes
            spans.append((off, a.nbytes))
            while data:  # pwrite may write less than asked (signals, some file systems)
                k = os.pwrite(self._fd, data, off)
                data, off = data[k:], off + k
            total += a.nbytes
        datasync(self._fd)  # before the chunk's marker: a marker never points at lost rows
        if _DROP_CACHE:
            # The rows are durable and this process never reads them back: drop their clean pages
            # so the page cache does not grow by the whole output (evicting other jobs' data) and
            # the kernel recycles warm pages. On VMs, first-touching fresh guest memory for new
            # page-cache pages cost 4-8x a recycled page (0.58 ms of writer CPU per MobileNetV2
            # image, measured in bench/where_time_goes.py).
            for off, length in spans:
                os.posix_fadvise(self._fd, off, length, os.POSIX_FADV_DONTNEED)
        return total

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

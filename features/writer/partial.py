"""The partial state of one output: the lock, the settings, the preallocated target file and the
chunk commit markers, plus the resume checks. A complete file's checks are in :mod:`features.writer.finished`.

While a run is in progress everything lives in ``OUT.h5.partial/``: ``settings.json``, the
output file itself, preallocated (:mod:`features.writer.target`), into which each chunk's feature rows
are written in place, and one small ``chunk-K.npz`` per finished chunk (its valid flags, reasons
and image sizes; :func:`features.fsutil.atomic_path`: temp name, fsync, rename). A marker is
committed only after its rows are durable, so a chunk either has a marker and all its rows or is
recomputed: a rerun after SIGKILL recomputes at most the chunks that were in flight. The finished
file is renamed to ``OUT.h5`` (:mod:`features.writer.assemble`).
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import logging
import os

import numpy as np

from features import names
from features.faults import fault_point
from features.fsutil import atomic_path, atomic_write_bytes, fsync_dir
from features.writer.changes import explain, saved_source
from features.writer.finished import StoreError, partial_dir
from features.writer.target import Target, TargetError, TargetUnreadable

log = logging.getLogger("bneck")

_CHUNK_FMT = "chunk-{:07d}.npz"


class PartialStore:
    """The partial state of one output file under ``OUT.h5.partial/``, guarded by an exclusive lock."""

    def __init__(self, out_path: str, settings: dict, *, n_rows: int, chunk_rows: int,
                 feature_shape=(0,), store_dtype: str = "float16", views=("features",), source=None):
        # source: a features.writer.changes.SourceView, saved beside the settings so a refused rerun can
        # say what changed in words; None (tests, older callers) compares the settings alone.
        self.out_path, self.settings, self.source = out_path, settings, source
        self.n_rows, self.chunk_rows = n_rows, chunk_rows
        self.dir = partial_dir(out_path)
        self.target = Target(self.dir, n_rows=n_rows, feature_shape=feature_shape, store_dtype=store_dtype,
                             views=views)
        self._lock_fd = None

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self, overwrite: bool = False) -> "PartialStore":
        """Create or resume the partial directory; refuse a second writer or changed settings.

        ``overwrite`` discards the output and any partial run, but only once the lock is held,
        so it can never pull the chunks away from under a writer that is still running.
        """
        if not os.path.isdir(self.dir):
            os.makedirs(self.dir, exist_ok=True)
            # Each marker's fsync makes its entry durable inside the dir, not the dir's own entry.
            fsync_dir(os.path.dirname(os.path.abspath(self.dir)))
        fd = os.open(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise StoreError(f"another bneck process is writing {self.out_path} (lock held on {self.dir}/lock); "
                                 "wait for it or stop it first") from None
            raise
        self._lock_fd = fd
        try:  # whatever fails from here on (a full disk, say) must not keep the lock in this process
            self._clear_leftovers(overwrite)
            self._check_settings()
            self._open_target()
        except BaseException:
            self.close()
            raise
        fault_point("partial_opened")
        return self

    def _clear_leftovers(self, overwrite: bool) -> None:
        # Leftovers of a killed writer, never a finished chunk: temp chunks, and temp final
        # files next to the output (a kill just before the final rename leaves a full-size one).
        # fsutil.temp_beside names them ".NAME.tmp-*" (hidden); older bneck wrote "NAME.tmp-*".
        out_dir, out_name = os.path.split(os.path.abspath(self.out_path))
        for stale in glob.glob(os.path.join(glob.escape(self.dir), "*.tmp-*")) + \
                glob.glob(os.path.join(glob.escape(self.dir), ".*.tmp-*")) + \
                glob.glob(glob.escape(self.out_path) + ".tmp-*") + \
                glob.glob(os.path.join(glob.escape(out_dir), glob.escape(f".{out_name}.tmp-") + "*")):
            os.remove(stale)
        if overwrite:
            if os.path.lexists(self.out_path):
                os.remove(self.out_path)
            # settings.json goes last: a kill part-way leaves the old settings naming what is left,
            # so a rerun with other settings is refused instead of resuming the old run's rows.
            names = sorted(os.listdir(self.dir), key=lambda n: n == "settings.json")
            for name in names:
                if name != "lock":
                    os.remove(os.path.join(self.dir, name))

    def _check_settings(self) -> None:
        meta = os.path.join(self.dir, "settings.json")
        if os.path.exists(meta):
            with open(meta, encoding="utf-8") as f:
                old = json.load(f)
            if old == self.settings:
                return
            changes = "; ".join(explain(old, self.settings, saved_source(self.dir), self.source))
            if self._holds_a_valid_row():
                raise StoreError(f"{self.dir} holds a partial run with other settings or another source: {changes}. "
                                 "Rerun with the original settings to resume, or pass --overwrite to start again")
            # Nothing in it is worth keeping (say every image was missing): the corrected command just starts.
            log.warning(f"{self.dir} holds a partial run without a single valid row ({changes}); starting again")
            for name in sorted(os.listdir(self.dir), key=lambda n: n == "settings.json"):
                if name != "lock":
                    os.remove(os.path.join(self.dir, name))
        # Rows and markers whose settings are unknown cannot be trusted to belong to this run.
        orphans = [n for n in os.listdir(self.dir) if n != "lock"]
        if orphans:
            log.warning(f"{self.dir} has {len(orphans)} files but no settings.json; discarding them")
            for name in orphans:
                _remove_quietly(os.path.join(self.dir, name))
        if self.source is not None:
            self.source.save(self.dir)  # before settings.json: without it, a kill leaves orphans, discarded above
        atomic_write_bytes(meta, json.dumps(self.settings, indent=1, sort_keys=True).encode())

    def _holds_a_valid_row(self) -> bool:
        # Every marker the old run left, not this run's chunk indices: it may have had more rows or other chunks.
        prefix, suffix = _CHUNK_FMT.split("{")[0], _CHUNK_FMT.split("}")[-1]
        for name in os.listdir(self.dir):
            if not (name.startswith(prefix) and name.endswith(suffix)):
                continue
            try:
                with np.load(os.path.join(self.dir, name), allow_pickle=False) as z:
                    valid = z["valid"]
                if valid.any():
                    return True
            except (OSError, ValueError, KeyError):
                return True  # unreadable: not ours to judge worthless
        return False

    def _open_target(self) -> None:
        done = self.done_chunks()
        if self.target.exists():
            try:
                self.target.restore()
            except TargetUnreadable as exc:
                raise StoreError(f"{exc}. Nothing was discarded: all {len(done)} finished chunks are kept in "
                                 f"{self.dir}; rerun once it is readable, or pass --overwrite to start again") from None
            except TargetError as exc:
                log.warning(f"{exc}; recomputing its {len(done)} finished chunks")
                self._discard_chunks()
                self.target.create()
        else:
            if done:  # markers without their rows (e.g. a partial dir of an older bneck)
                log.warning(f"{self.dir} has {len(done)} chunk markers but no {os.path.basename(self.target.path)} "
                            "with its snapshot; recomputing them")
                self._discard_chunks()
            self.target.create()
        done = self.done_chunks()
        rows_done = sum(b - a for a, b in map(self.chunk_range, done))
        # The file is sparse: its rows take disk space only as they are written, so check now,
        # before hours of compute, that the rows still to come will fit. File systems without
        # sparse files (FAT, HFS+) reserved them at creation: count what is already reserved.
        row_bytes = self.target.row_bytes * len(self.target.views)
        reserved = max(0, os.stat(self.target.path).st_blocks * 512 - rows_done * row_bytes)
        check_space(self.out_path, max(0, (self.n_rows - rows_done) * row_bytes - reserved)
                    + self.n_rows * 256, what="the features still to compute",
                    keep=f"All {len(done)} finished chunks are kept in {self.dir}" if done else "")

    def _discard_chunks(self) -> None:
        for k in range(self.n_chunks):
            _remove_quietly(self.chunk_path(k))
        for p in (self.target.path, self.target.snapshot_path):
            _remove_quietly(p)

    def close(self) -> None:
        """Close the target file and release the lock."""
        self.target.close()
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    # -- chunks ------------------------------------------------------------------------------
    @property
    def n_chunks(self) -> int:
        return (self.n_rows + self.chunk_rows - 1) // self.chunk_rows

    def chunk_range(self, k: int) -> tuple[int, int]:
        """Local rows [start, stop) of chunk ``k``."""
        return k * self.chunk_rows, min((k + 1) * self.chunk_rows, self.n_rows)

    def chunk_path(self, k: int) -> str:
        return os.path.join(self.dir, _CHUNK_FMT.format(k))

    def done_chunks(self) -> set[int]:
        """Indices of chunks already committed."""
        return {k for k in range(self.n_chunks) if os.path.exists(self.chunk_path(k))}

    def write_chunk(self, k: int, arrays: dict[str, np.ndarray]) -> int:
        """Write chunk ``k``'s feature rows into the target, then commit its marker; returns bytes written."""
        a, b = self.chunk_range(k)
        views = self.target.views
        if len(arrays["valid"]) != b - a:
            raise StoreError(f"chunk {k} of {self.dir} has {len(arrays['valid'])} rows, expected {b - a}")
        nbytes = self.target.write_rows(a, {v: arrays[v] for v in views})
        # The commit is the rename, made durable (the directory fsynced) before the run reports the chunk
        # done; a failure (a full disk) removes the temp marker, so the half chunk keeps no blocks.
        with atomic_path(self.chunk_path(k), point="chunk_tmp_written") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **{name: arr for name, arr in arrays.items() if name not in views})
            size = os.path.getsize(tmp)
        fault_point("chunk_committed")
        return nbytes + size

    def read_chunk(self, k: int) -> dict[str, np.ndarray]:
        """The marker of chunk ``k``: ``valid``, ``reason`` and ``image_size`` of its rows."""
        with np.load(self.chunk_path(k), allow_pickle=False) as z:
            return {name: z[name] for name in z.files}

    def markers(self) -> dict[str, np.ndarray]:
        """``valid``, ``reason`` and ``image_size`` of every row, from all chunk markers (all must exist)."""
        missing = sorted(set(range(self.n_chunks)) - self.done_chunks())
        if missing:
            raise StoreError(f"cannot finalize {self.out_path}: chunks {missing[:10]} are missing")
        parts = {"valid": [], "reason": [], "image_size": []}
        for k in range(self.n_chunks):
            a, b = self.chunk_range(k)
            c = self.read_chunk(k)
            if len(c["valid"]) != b - a:
                raise StoreError(f"chunk {k} of {self.dir} has {len(c['valid'])} rows, expected {b - a}")
            for name in parts:
                parts[name].append(c[name])
        empty = {"valid": np.zeros(0, bool), "reason": np.zeros(0, str), "image_size": np.zeros((0, 2), np.int32)}
        return {name: np.concatenate(p) if p else empty[name] for name, p in parts.items()}



def check_space(out_path: str, need: int, *, what: str, keep: str) -> None:
    """Raise a clear ENOSPC :class:`StoreError` if the output's disk has less than ``need`` bytes free."""
    need = int(need * 1.02) + (256 << 10)  # indexes, headers, attributes
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(out_path)))
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if free < need:
        advice = (f"{keep}; free some space and rerun the same command to finish without recomputing" if keep
                  else "Nothing was computed; free some space and rerun")
        raise StoreError(
            f"not enough disk space to write {out_path}: {what} need about {need / 1e6:.1f} MB, "
            f"{free / 1e6:.1f} MB are free ([Errno {errno.ENOSPC}] No space left on device). {advice}")


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def string_array(values) -> np.ndarray:
    """Object array of UTF-8-safe strings (:func:`features.names.printable`)."""
    out = []
    for v in values:
        s = os.fsdecode(v) if isinstance(v, bytes) else str(v)
        out.append(names.printable(s))
    return np.array(out, dtype=object)

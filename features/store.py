"""The chunk store of stage one: partial chunks, locking, resume checks and the complete-file checks.

Why chunk files and not one growing HDF5 file: HDF5 is not crash-safe; a writer killed mid-flush
can leave a file h5py cannot open at all. So each finished chunk of rows is committed as its own
small ``.npz`` inside ``OUT.h5.partial/`` (temp name, then ``os.replace``), and the final
``OUT.h5`` is assembled from them (:mod:`features.assemble`) into a temp file that is renamed into
place only when complete. A chunk either exists whole or not at all, so a rerun after SIGKILL
recomputes at most one chunk.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import shutil
import signal
import threading

import numpy as np

PRODUCER = "bneck"
_CHUNK_FMT = "chunk-{:07d}.npz"


def _parse_kill_at(text: str):
    if not text:
        return None
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3) or not parts[0] or int(parts[1]) < 1:
            raise ValueError
        sig = getattr(signal, "SIG" + parts[2].upper().removeprefix("SIG")) if len(parts) == 3 else signal.SIGKILL
    except (ValueError, AttributeError):
        raise ValueError(f"BNECK_TEST_KILL_AT must look like POINT:N or POINT:N:SIGNAL, got {text!r}") from None
    return parts[0], int(parts[1]), sig


# Fault-injection hook for the reliability tests (tests/reliability/), like BNECK_TEST_BATCH_DELAY
# in features/runner.py; never set in normal use. BNECK_TEST_KILL_AT="POINT:N[:SIGNAL]" sends
# SIGKILL (or SIGNAL, e.g. TERM) to this process the N-th time the named point is reached.
# Points: start, model_built (runner.extract); partial_opened, chunk_tmp_written (temp chunk
# fsynced, before its rename), chunk_committed in this module; finalize_chunk (a chunk copied
# into the final temp file), finalize_tmp_written (final temp file complete, before its rename),
# finalize_renamed (after the rename, before the partial dir is removed) in features.assemble;
# decode (an image decoded, in a worker thread) and batch (a batch computed, before its chunk is
# queued) in runner._run_chunks; model_tmp_written, model_moved_aside in pipeline.modeldir.
# Unset, fault_point() is one comparison.
_KILL_AT = _parse_kill_at(os.environ.get("BNECK_TEST_KILL_AT", ""))
_KILL_SEEN: dict[str, int] = {}
_KILL_LOCK = threading.Lock()


def fault_point(name: str) -> None:
    """Testing hook: act on BNECK_TEST_KILL_AT when ``name`` is reached (no-op when unset)."""
    if _KILL_AT is None or _KILL_AT[0] != name:
        return
    with _KILL_LOCK:
        _KILL_SEEN[name] = n = _KILL_SEEN.get(name, 0) + 1
    if n == _KILL_AT[1]:
        os.kill(os.getpid(), _KILL_AT[2])


class StoreError(RuntimeError):
    """The output cannot be written or resumed as asked."""


def partial_dir(out_path: str) -> str:
    """Where chunks of ``out_path`` live until the final file exists."""
    return out_path + ".partial"


def settings_diff(old: dict, new: dict) -> list[str]:
    """Human-readable list of settings that differ between two runs."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _atomic_write_bytes(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_attrs(path: str) -> dict:
    import h5py

    with h5py.File(path, "r") as f:
        return {k: _plain(v) for k, v in f.attrs.items()}


def _plain(v):
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()]
    if isinstance(v, (np.generic,)):
        return v.item()
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v


def check_existing(out_path: str, settings: dict) -> bool:
    """True if ``out_path`` is a complete file made with ``settings``; raise if it differs or is broken."""
    if not os.path.exists(out_path):
        return False
    try:
        attrs = _read_attrs(out_path)
    except Exception as exc:
        raise StoreError(f"{out_path} exists but cannot be read as HDF5 ({exc}); use --overwrite to replace it") from None
    if attrs.get("producer") != PRODUCER or not attrs.get("complete"):
        raise StoreError(f"{out_path} exists but is not a complete bneck feature file; use --overwrite to replace it")
    old = json.loads(attrs.get("settings_json", "{}"))
    diff = settings_diff(old, settings)
    if diff:
        raise StoreError(f"{out_path} exists with different settings ({'; '.join(diff)}); "
                         "use --overwrite to replace it or choose another output")
    return True


def bad_reasons(out_path: str) -> dict[str, int]:
    """``{reason: count}`` of the invalid rows of a complete feature file."""
    import collections

    import h5py

    with h5py.File(out_path, "r") as f:
        valid = f["valid"][()]
        reasons = f["reason"].asstr()[()][~valid] if (~valid).any() else []
    return dict(collections.Counter(str(r) for r in reasons))


class PartialStore:
    """Chunks of one output file under ``OUT.h5.partial/``, guarded by an exclusive lock."""

    def __init__(self, out_path: str, settings: dict, *, n_rows: int, chunk_rows: int):
        self.out_path, self.settings = out_path, settings
        self.n_rows, self.chunk_rows = n_rows, chunk_rows
        self.dir = partial_dir(out_path)
        self._lock_fd = None

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self, overwrite: bool = False) -> "PartialStore":
        """Create or resume the partial directory; refuse a second writer or changed settings.

        ``overwrite`` discards the output and any partial run, but only once the lock is held,
        so it can never pull the chunks away from under a writer that is still running.
        """
        os.makedirs(self.dir, exist_ok=True)
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
        # Leftovers of a killed writer, never a finished chunk: temp chunks, and temp final
        # files next to the output (a kill just before the final rename leaves a full-size one).
        for stale in glob.glob(os.path.join(glob.escape(self.dir), "*.tmp-*")) + \
                glob.glob(glob.escape(self.out_path) + ".tmp-*"):
            os.remove(stale)
        if overwrite:
            if os.path.lexists(self.out_path):
                os.remove(self.out_path)
            for name in os.listdir(self.dir):
                if name != "lock":
                    os.remove(os.path.join(self.dir, name))
        meta = os.path.join(self.dir, "settings.json")
        if os.path.exists(meta):
            with open(meta, encoding="utf-8") as f:
                old = json.load(f)
            diff = settings_diff(old, self.settings)
            if diff:
                self.close()
                raise StoreError(f"{self.dir} holds a partial run with other settings: {'; '.join(diff)}. "
                                 "Rerun with the original settings to resume, or pass --overwrite to start again")
        else:
            _atomic_write_bytes(meta, json.dumps(self.settings, indent=1, sort_keys=True).encode())
        fault_point("partial_opened")
        return self

    def close(self) -> None:
        """Release the lock."""
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
        """Commit chunk ``k`` atomically; returns bytes written."""
        path = self.chunk_path(k)
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            _remove_quietly(tmp)  # a disk-full failure must not keep the half chunk's blocks
            raise
        size = os.path.getsize(tmp)
        fault_point("chunk_tmp_written")
        os.replace(tmp, path)
        fault_point("chunk_committed")
        return size

    def read_chunk(self, k: int) -> dict[str, np.ndarray]:
        with np.load(self.chunk_path(k), allow_pickle=False) as z:
            return {name: z[name] for name in z.files}

    # -- final file ---------------------------------------------------------------------------
    def finalize(self, row_data: dict[str, np.ndarray], attrs: dict, *, feature_shape, store_dtype: str,
                 flip: bool, h5_chunk_rows: int, progress=None) -> str:
        """Assemble the final HDF5 file from the chunks, atomically (:func:`features.assemble.finalize`)."""
        # Imported here, not at the top: features.assemble imports this module.
        from features import assemble

        return assemble.finalize(self, row_data, attrs, feature_shape=feature_shape, store_dtype=store_dtype,
                                 flip=flip, h5_chunk_rows=h5_chunk_rows, progress=progress)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def remove_stale_partial(out_path: str) -> None:
    """Remove the partial dir left next to a complete ``out_path`` by a writer killed after its
    final rename, unless a live process holds its lock (e.g. an ``--overwrite`` run)."""
    d = partial_dir(out_path)
    if not os.path.isdir(d):
        return
    try:
        fd = os.open(os.path.join(d, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return
    try:
        shutil.rmtree(d, ignore_errors=True)
    finally:
        os.close(fd)


def string_array(values) -> np.ndarray:
    """Object array of UTF-8-safe strings (undecodable file-name bytes become \\xNN escapes)."""
    out = []
    for v in values:
        s = os.fsdecode(v) if isinstance(v, bytes) else str(v)
        out.append(s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))
    return np.array(out, dtype=object)

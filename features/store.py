"""The HDF5 contract of stage one: partial chunks, locking, resume checks, and the atomic final file.

Why chunk files and not one growing HDF5 file: HDF5 is not crash-safe; a writer killed mid-flush
can leave a file h5py cannot open at all. So each finished chunk of rows is committed as its own
small ``.npz`` inside ``OUT.h5.partial/`` (temp name, then ``os.replace``), and the final
``OUT.h5`` is assembled from them into a temp file that is renamed into place only when complete.
A chunk either exists whole or not at all, so a rerun after SIGKILL recomputes at most one chunk.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import glob
import json
import os
import shutil

import numpy as np

from features import FORMAT_VERSION, __version__

PRODUCER = "bneck"
_CHUNK_FMT = "chunk-{:07d}.npz"


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


class PartialStore:
    """Chunks of one output file under ``OUT.h5.partial/``, guarded by an exclusive lock."""

    def __init__(self, out_path: str, settings: dict, *, n_rows: int, chunk_rows: int):
        self.out_path, self.settings = out_path, settings
        self.n_rows, self.chunk_rows = n_rows, chunk_rows
        self.dir = partial_dir(out_path)
        self._lock_fd = None

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> "PartialStore":
        """Create or resume the partial directory; refuse a second writer or changed settings."""
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
        for stale in glob.glob(os.path.join(self.dir, "*.tmp-*")):
            os.remove(stale)  # leftovers of a killed writer; never a finished chunk
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
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        size = os.path.getsize(tmp)
        os.replace(tmp, path)
        return size

    def read_chunk(self, k: int) -> dict[str, np.ndarray]:
        with np.load(self.chunk_path(k), allow_pickle=False) as z:
            return {name: z[name] for name in z.files}

    # -- final file ---------------------------------------------------------------------------
    def finalize(self, row_data: dict[str, np.ndarray], attrs: dict, *, feature_shape, store_dtype: str,
                 flip: bool, h5_chunk_rows: int, progress=None) -> str:
        """Assemble all chunks plus per-row manifest data into the final HDF5 file, atomically.

        ``row_data`` maps dataset name to an array, or to ``(array, dataset_attrs)``.
        """
        import h5py

        missing = sorted(set(range(self.n_chunks)) - self.done_chunks())
        if missing:
            raise StoreError(f"cannot finalize {self.out_path}: chunks {missing[:10]} are missing")
        tmp = f"{self.out_path}.tmp-{os.getpid()}"
        n = self.n_rows
        try:
            with h5py.File(tmp, "w") as f:
                shape = (n, *feature_shape)
                chunks = (max(1, min(h5_chunk_rows, n)), *feature_shape) if n else None
                views = ["features"] + (["features_flipped"] if flip else [])
                for name in views:
                    f.create_dataset(name, shape=shape, dtype=store_dtype, chunks=chunks)
                f.create_dataset("valid", shape=(n,), dtype=bool)
                f.create_dataset("reason", shape=(n,), dtype=h5py.string_dtype())
                f.create_dataset("image_size", shape=(n, 2), dtype="int32")
                for k in range(self.n_chunks):
                    a, b = self.chunk_range(k)
                    c = self.read_chunk(k)
                    if len(c["valid"]) != b - a:
                        raise StoreError(f"chunk {k} of {self.dir} has {len(c['valid'])} rows, expected {b - a}")
                    for name in views:
                        f[name][a:b] = c[name].astype(store_dtype, copy=False)
                    f["valid"][a:b] = c["valid"]
                    f["reason"][a:b] = c["reason"].astype(object)
                    f["image_size"][a:b] = c["image_size"]
                    if progress is not None:
                        progress(b - a)
                valid = f["valid"][()]
                for name, arr in row_data.items():
                    ds_attrs = {}
                    if isinstance(arr, tuple):  # (array, dataset attrs), e.g. labels + class_names
                        arr, ds_attrs = arr
                    if name == "targets_flipped":
                        arr = np.array(arr, dtype=np.float32)
                        arr[~valid] = np.nan  # no image, so no mirrored geometry
                    dset = f.create_dataset(name, data=arr)
                    for key, value in ds_attrs.items():
                        dset.attrs[key] = value
                for key, value in attrs.items():
                    f.attrs[key] = value
                f.attrs["producer"] = PRODUCER
                f.attrs["format_version"] = FORMAT_VERSION
                f.attrs["package_version"] = __version__
                f.attrs["settings_json"] = json.dumps(self.settings, sort_keys=True)
                f.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
                f.attrs["complete"] = True
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.out_path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return self.out_path


def string_array(values) -> np.ndarray:
    """Object array of UTF-8-safe strings (undecodable file-name bytes become \\xNN escapes)."""
    out = []
    for v in values:
        s = os.fsdecode(v) if isinstance(v, bytes) else str(v)
        out.append(s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))
    return np.array(out, dtype=object)

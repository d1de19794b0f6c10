"""The final assembler: committed chunk ``.npz`` files of ``OUT.h5.partial/`` → one ``OUT.h5``, atomically.

The chunks and their lock belong to :class:`features.store.PartialStore`; this module only reads them.
The final file is written to a temp name next to the output, fsynced and renamed into place only
when complete, so a kill at any moment leaves either no output or the whole one (the partial dir is
removed last, and a rerun cleans up what a kill left between the two).
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import shutil

import numpy as np

from features import FORMAT_VERSION, __version__
from features.store import PRODUCER, StoreError, fault_point


def _check_space(pstore, feature_bytes: int, row_data: dict) -> None:
    """Refuse, before HDF5 writes a byte, to assemble a final file the disk cannot hold.

    HDF5 is not safe against a full disk: a write failing with ENOSPC inside h5py leaves
    the library in a broken state, prints pages of tracebacks and crashes the interpreter
    at exit (SIGSEGV, seen in tests/reliability). The final file is the moment a run needs
    the most space (chunks and final file coexist), so estimate its size from the known
    shapes (a slight overestimate) and compare with the free space first.
    """
    need = feature_bytes + pstore.n_rows * 64  # valid, image_size, reason (vlen string)
    for arr in row_data.values():
        arr = np.asarray(arr[0] if isinstance(arr, tuple) else arr)
        need += (sum(len(str(v).encode("utf-8", "surrogateescape")) + 48 for v in arr.ravel())
                 if arr.dtype.kind in "OUS" else arr.nbytes * (2 if arr.dtype.kind == "f" else 1))
    need = int(need * 1.02) + (256 << 10)  # chunk indexes, headers, attributes
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(pstore.out_path)))
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise StoreError(
            f"not enough disk space to write {pstore.out_path}: it needs about {need / 1e6:.1f} MB, "
            f"{free / 1e6:.1f} MB are free ([Errno {errno.ENOSPC}] No space left on device). All "
            f"{pstore.n_chunks} chunks are kept in {pstore.dir}; free some space and rerun the same "
            "command to finish without recomputing")


def finalize(pstore, row_data: dict[str, np.ndarray], attrs: dict, *, feature_shape, store_dtype: str,
             flip: bool, h5_chunk_rows: int, progress=None) -> str:
    """Assemble all chunks of ``pstore`` plus per-row manifest data into the final HDF5 file, atomically.

    ``row_data`` maps dataset name to an array, or to ``(array, dataset_attrs)``.
    """
    import h5py

    missing = sorted(set(range(pstore.n_chunks)) - pstore.done_chunks())
    if missing:
        raise StoreError(f"cannot finalize {pstore.out_path}: chunks {missing[:10]} are missing")
    tmp = f"{pstore.out_path}.tmp-{os.getpid()}"
    n = pstore.n_rows
    n_views = 2 if flip else 1
    _check_space(pstore, n * int(np.prod(feature_shape)) * np.dtype(store_dtype).itemsize * n_views, row_data)
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
            for k in range(pstore.n_chunks):
                a, b = pstore.chunk_range(k)
                c = pstore.read_chunk(k)
                if len(c["valid"]) != b - a:
                    raise StoreError(f"chunk {k} of {pstore.dir} has {len(c['valid'])} rows, expected {b - a}")
                for name in views:
                    f[name][a:b] = c[name].astype(store_dtype, copy=False)
                f["valid"][a:b] = c["valid"]
                f["reason"][a:b] = c["reason"].astype(object)
                f["image_size"][a:b] = c["image_size"]
                if progress is not None:
                    progress(b - a)
                fault_point("finalize_chunk")
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
            f.attrs["settings_json"] = json.dumps(pstore.settings, sort_keys=True)
            f.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            f.attrs["complete"] = True
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        fault_point("finalize_tmp_written")
        os.replace(tmp, pstore.out_path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fault_point("finalize_renamed")
    pstore.close()
    shutil.rmtree(pstore.dir, ignore_errors=True)
    return pstore.out_path

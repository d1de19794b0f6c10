"""The end of a run: the preallocated target file gets its row data and attributes, then becomes ``OUT.h5``.

Every feature row is already in the target (:mod:`features.writer.target`); this is the run's one HDF5
write session. It is crash-safe because a rerun first restores the target's snapshot, undoing
whatever a killed session had written. The finished file is fsynced and renamed into place, so a
kill at any moment leaves either no output or the whole one (the partial dir is removed last, and
a rerun cleans up what a kill left between the two).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil

import numpy as np

from features import FORMAT_VERSION, __version__
from features.faults import fault_point
from features.fsutil import fsync_dir
from features.writer.finished import PRODUCER, StoreError
from features.writer.partial import check_space


def _row_bytes_estimate(n: int, row_data: dict) -> int:
    """A slight overestimate of what the end session writes (row data; the features are in place)."""
    need = n * 64  # valid, image_size, reason (vlen string)
    for arr in row_data.values():
        arr = np.asarray(arr[0] if isinstance(arr, tuple) else arr)
        need += (sum(len(str(v).encode("utf-8", "surrogateescape")) + 48 for v in arr.ravel())
                 if arr.dtype.kind in "OUS" else arr.nbytes * (2 if arr.dtype.kind == "f" else 1))
    return need


def finalize(pstore, marks: dict[str, np.ndarray], row_data: dict[str, np.ndarray], attrs: dict) -> str:
    """Write per-row data and attributes into ``pstore``'s target file and rename it to the output.

    ``marks`` is :meth:`features.writer.partial.PartialStore.markers`; ``row_data`` maps dataset name to an
    array, or to ``(array, dataset_attrs)``.
    """
    import h5py

    # HDF5 is not safe against a full disk: a write failing with ENOSPC inside h5py leaves the
    # library broken and can crash the interpreter at exit (SIGSEGV, seen in tests/reliability).
    check_space(pstore.out_path, _row_bytes_estimate(pstore.n_rows, row_data), what="its row data",
                keep=f"All {pstore.n_chunks} chunks are kept in {pstore.dir}")
    target = pstore.target
    target.close()
    try:
        f = h5py.File(target.path, "r+")
    except OSError as exc:  # e.g. another process has it open: HDF5's lock, not damage
        raise StoreError(f"cannot open {target.path} to finish it ({exc}). All {pstore.n_chunks} chunks are kept "
                         f"in {pstore.dir}; rerun when nothing else has it open") from None
    with f:
        f.create_dataset("valid", data=marks["valid"].astype(bool))
        f.create_dataset("reason", data=marks["reason"].astype(object), dtype=h5py.string_dtype())
        f.create_dataset("image_size", data=marks["image_size"].astype(np.int32))
        fault_point("finalize_rows")
        valid = marks["valid"].astype(bool)
        for name, arr in row_data.items():
            ds_attrs = {}
            if isinstance(arr, tuple):  # (array, dataset attrs), e.g. labels + class_names
                arr, ds_attrs = arr
            if name == "targets_flipped":
                arr = np.array(arr, dtype=np.float32)
                arr[~valid] = np.nan  # no image, so no mirrored geometry
            arr = np.asarray(arr)
            # An object array is strings (paths); h5py cannot infer a type from an empty one (an empty shard).
            kind = {"dtype": h5py.string_dtype()} if arr.dtype == object else {}
            dset = f.create_dataset(name, data=arr, **kind)
            for key, value in ds_attrs.items():
                dset.attrs[key] = value
            fault_point("finalize_rows")
        for key, value in attrs.items():
            f.attrs[key] = value
        f.attrs["producer"] = PRODUCER
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["package_version"] = __version__
        f.attrs["settings_json"] = json.dumps(pstore.settings, sort_keys=True)
        f.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        f.attrs["complete"] = True
    with open(target.path, "rb") as fh:
        os.fsync(fh.fileno())
    fault_point("finalize_tmp_written")
    # Not fsutil.atomic_path: the file renamed here is not a fresh temp file but the run's own target,
    # written in place over the whole run (rows by pwrite, then the end session above), and a kill
    # before the rename must leave it where a rerun finishes it instead of deleting it.
    os.replace(target.path, pstore.out_path)
    fsync_dir(os.path.dirname(os.path.abspath(pstore.out_path)))  # before the partial dir goes
    fault_point("finalize_renamed")
    pstore.close()
    shutil.rmtree(pstore.dir, ignore_errors=True)
    return pstore.out_path

"""HDF5 attribute values as plain Python: what both stages compare, print and write to JSON."""

from __future__ import annotations

import numpy as np


def plain(value):
    """numpy scalars and arrays, bytes and tuples (as h5py returns attrs) -> Python numbers, str and lists.

    Bytes that are not UTF-8 decode with replacement characters: an attr is metadata to show or
    compare, and one bad byte must not make a whole file unreadable.
    """
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return plain(value.item()) if value.ndim == 0 else [plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value

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


# -- checking the attrs of a feature file someone else wrote ------------------------------------
#: An attr with more elements than this, or more bytes, is refused unread (the largest real one is the
#: class-name list; a hostile file could hold gigabytes).
MAX_ATTR_ELEMENTS = 1_000_000
MAX_ATTR_BYTES = 64 << 20
_INT = (int,)
_STR = (str,)
# Root attrs bneck reads, and what each must be once plain(): (types, check or None, what it must be).
#: Every ``--pooling`` a feature file may record: ``none`` keeps the map; the others give vectors
#: (``mean`` and ``cls`` are the token models' patch mean and class token, features.backbones.hub).
POOLINGS = ("none", "avg", "max", "mean", "cls")
VECTOR_POOLINGS = POOLINGS[1:]

_ROOT_SCHEMA = {
    "producer": (_STR, None, "a string"),
    "format_version": (_INT, lambda v: 0 <= v < 1_000_000, "a non-negative integer"),
    "complete": ((bool, int), None, "a boolean"),
    "backbone": (_STR, None, "a string"),
    "layer": (_STR, None, "a string"),
    "pooling": (_STR, lambda v: v in POOLINGS, "one of " + ", ".join(POOLINGS)),
    "preprocessing": (_STR, None, "a string"),
    "input_size": ((list,), lambda v: len(v) == 2 and all(_pos_int(x, 65536) for x in v),
                   "[height, width], two positive integers"),
    "feature_shape": ((list,), lambda v: 1 <= len(v) <= 3 and all(_pos_int(x, 1 << 31) for x in v),
                      "a list of 1 to 3 positive integers"),
    "weights": (_STR, None, "a string"),
    "weights_sha256": (_STR, lambda v: v == "" or (len(v) == 64 and all(c in "0123456789abcdef" for c in v)),
                       "64 hex digits or empty"),
    "weights_path": (_STR, None, "a string"),
    "seed": (_INT, None, "an integer"),
    "precision": (_STR, None, "a string"),
    "store_dtype": (_STR, lambda v: v in ("float16", "float32", "bfloat16", "float64"), "a float dtype name"),
    "flip": ((bool, int), None, "a boolean"),
    "task": (_STR, lambda v: v in ("classification", "regression", "none"), "classification, regression or none"),
    "n_rows": (_INT, lambda v: v >= 0, "a non-negative integer"),
    "row_start": (_INT, lambda v: v >= 0, "a non-negative integer"),
    "row_stop": (_INT, lambda v: v >= 0, "a non-negative integer"),
    "shard": (_STR, None, "a string"),
    "shard_unit": (_STR, lambda v: v in ("rows", "tar"), "rows or tar"),  # tar: a webdataset shard of whole tars
    "tar_start": (_INT, lambda v: v >= 0, "a non-negative integer"),
    "tar_stop": (_INT, lambda v: v >= 0, "a non-negative integer"),
    "tar_count": (_INT, lambda v: v >= 1, "a positive integer"),
    "settings_json": (_STR, None, "a string"),
    "source_root": (_STR, None, "a string"),
    "class_names": ((list,), lambda v: all(isinstance(x, str) for x in v), "a list of strings"),
    "target_names": ((list,), lambda v: all(isinstance(x, str) for x in v), "a list of strings"),
}


def _pos_int(x, limit) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 < x <= limit


def read_checked_attrs(obj, where, *, error=ValueError) -> dict:
    """``obj.attrs`` (an h5py file, group or dataset) as plain values, each checked for size first, then type.

    Raises ``error`` naming ``where`` and the attr: one larger than :data:`MAX_ATTR_ELEMENTS` elements or
    :data:`MAX_ATTR_BYTES` bytes is never read, and a known root attr of the wrong type or value
    (``_ROOT_SCHEMA``: e.g. ``input_size`` that is not two positive integers) is refused.
    """
    out = {}
    for name in obj.attrs:
        aid = obj.attrs.get_id(name)
        n = 1
        for d in aid.shape or ():
            n *= int(d)
        if n > MAX_ATTR_ELEMENTS or aid.get_storage_size() > MAX_ATTR_BYTES:
            raise error(f"{where}: attr {name!r} is too large ({n} elements, {aid.get_storage_size()} bytes); "
                        "not a feature file bneck wrote")
        try:
            out[name] = plain(obj.attrs[name])
        except Exception as exc:  # noqa: BLE001  (an unreadable attr type: h5py raises several kinds)
            raise error(f"{where}: attr {name!r} cannot be read ({type(exc).__name__}: {exc})") from None
    return out


def check_root_attrs(attrs: dict, where, *, error=ValueError) -> None:
    """Raise ``error`` naming ``where`` unless every known root attr in ``attrs`` (plain values) has its type."""
    for key, (types, ok, what) in _ROOT_SCHEMA.items():
        if key not in attrs:
            continue
        v = attrs[key]
        bad = not isinstance(v, types) or (isinstance(v, bool) and bool not in types)
        if bad or (ok is not None and not ok(v)):
            shown = repr(v) if len(repr(v)) <= 80 else repr(v)[:77] + "..."
            raise error(f"{where}: attr {key!r} must be {what}, found {shown} ({type(v).__name__})")


def check_shapes(f, attrs: dict, where, *, error=ValueError, rows: bool = True) -> None:
    """Raise ``error`` unless the datasets of open feature file ``f`` have the shapes its attrs describe.

    ``feature_shape`` (when recorded) is the per-row shape of ``features`` and ``features_flipped``;
    pooling ``avg``/``max`` means vectors; ``row_stop - row_start`` and ``n_rows`` (of an unsharded
    file) are the row count; ``targets`` has one column per ``target_names``; every label indexes
    ``class_names``; ``groups`` (optional) is one string per row with a short string attr ``group_by``.
    ``rows=False`` leaves the row counts to the caller (``bneck merge`` names the shard).
    """
    if "features" not in f:
        return
    feats = f["features"]
    n, row = int(feats.shape[0]) if feats.shape else 0, tuple(int(s) for s in feats.shape[1:])
    if not feats.shape or not row:
        raise error(f"{where}: dataset 'features' has shape {feats.shape}, expected (rows, ...) per-row features")
    if "feature_shape" in attrs and tuple(attrs["feature_shape"]) != row:
        raise error(f"{where}: dataset 'features' rows are {row} but attr feature_shape is {attrs['feature_shape']}")
    if attrs.get("pooling") in VECTOR_POOLINGS and len(row) != 1:
        raise error(f"{where}: attr pooling is {attrs['pooling']!r} but 'features' rows are {row}, not vectors")
    if "features_flipped" in f and tuple(f["features_flipped"].shape) != tuple(feats.shape):
        raise error(f"{where}: dataset 'features_flipped' has shape {f['features_flipped'].shape}, "
                    f"'features' has {feats.shape}")
    if rows and isinstance(attrs.get("row_start"), int) and isinstance(attrs.get("row_stop"), int):
        if attrs["row_stop"] - attrs["row_start"] != n:
            raise error(f"{where}: attrs row_start/row_stop say {attrs['row_stop'] - attrs['row_start']} rows, "
                        f"'features' has {n}")
        if attrs.get("shard") == "0/1" and isinstance(attrs.get("n_rows"), int) and attrs["n_rows"] != n:
            raise error(f"{where}: attr n_rows is {attrs['n_rows']}, 'features' has {n}")
    if "targets" in f:
        names = plain(f["targets"].attrs.get("target_names", []))
        shape = f["targets"].shape
        if len(shape) != 2 or (names and len(names) != shape[1]):
            raise error(f"{where}: dataset 'targets' has shape {shape}, expected (rows, {len(names)}) for its "
                        "target_names")
    if "groups" in f:
        _check_groups(f["groups"], n, where, error)
    if "labels" in f:
        names = plain(f["labels"].attrs.get("class_names", []))
        if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
            raise error(f"{where}: attr class_names of dataset 'labels' must be a list of strings")
        labels = f["labels"][()]
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise error(f"{where}: dataset 'labels' must be integers, one per row; found {labels.dtype}{labels.shape}")
        valid = f["valid"][()].astype(bool) if "valid" in f and f["valid"].shape == labels.shape else slice(None)
        used = labels[valid]
        if used.size and (used.min() < 0 or used.max() >= len(names)):
            raise error(f"{where}: dataset 'labels' holds {int(used.min())}..{int(used.max())} but there are "
                        f"{len(names)} class_names")


#: Longest ``group_by`` attr of the ``groups`` dataset accepted (bneck writes a word or a CSV column name).
MAX_GROUP_BY = 64


def _check_groups(ds, n: int, where, error) -> None:
    """``groups``: (n,) strings with a ``group_by`` string attr; anything else is refused before it is read."""
    import h5py

    if not isinstance(ds, h5py.Dataset) or ds.shape != (n,) or h5py.check_string_dtype(ds.dtype) is None:
        shape = getattr(ds, "shape", None)
        raise error(f"{where}: dataset 'groups' must hold one string per row ({n}); found "
                    f"{getattr(ds, 'dtype', type(ds).__name__)}{shape}")
    by = read_checked_attrs(ds, f"{where}: dataset 'groups'", error=error).get("group_by")  # sizes first
    if not isinstance(by, str) or not by or len(by) > MAX_GROUP_BY:
        raise error(f"{where}: dataset 'groups' needs a group_by attr (what the groups are, e.g. 'video') of "
                    f"1 to {MAX_GROUP_BY} characters; found {by!r}"[:300])

"""Checks of a complete output file: is it the one these settings would make, what was bad in it,
and is a partial dir left beside it by a writer killed after its final rename.

These run before any work on a rerun (skip, refuse or recompute), so they only read: attributes,
the ``valid``/``reason`` datasets, and the partial dir's lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil

from features.attrs import plain
from features.writer.changes import explain, finished_source

PRODUCER = "bneck"


class StoreError(RuntimeError):
    """The output cannot be written or resumed as asked."""


def partial_dir(out_path: str) -> str:
    """Where chunks of ``out_path`` live until the final file exists."""
    return out_path + ".partial"


def read_attrs(path: str) -> dict:
    """The file's root attributes as plain Python values."""
    import h5py

    with h5py.File(path, "r") as f:
        return {k: plain(v) for k, v in f.attrs.items()}


def check_existing(out_path: str, settings: dict, source=None) -> bool:
    """True if ``out_path`` is a complete file made with ``settings``; raise if it differs or is broken.

    ``source`` (a :class:`features.writer.changes.SourceView`) lets the refusal say how the source changed.
    """
    if not os.path.exists(out_path):
        return False
    try:
        attrs = read_attrs(out_path)
    except Exception as exc:
        raise StoreError(f"{out_path} exists but cannot be read as HDF5 ({exc}); "
                         "use --overwrite to replace it") from None
    if attrs.get("producer") != PRODUCER or not attrs.get("complete"):
        raise StoreError(f"{out_path} exists but is not a complete bneck feature file; use --overwrite to replace it")
    old = json.loads(attrs.get("settings_json", "{}"))
    if old != settings:
        diff = explain(old, settings, finished_source(out_path) if source is not None else None, source)
        raise StoreError(f"{out_path} exists with other settings or another source ({'; '.join(diff)}); "
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

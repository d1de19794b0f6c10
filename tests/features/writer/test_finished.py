"""The checks a rerun makes on a complete output file before any work: skip, refuse, or clean up."""

from __future__ import annotations

import fcntl
import json
import os

import h5py
import numpy as np
import pytest

from features.writer import finished


def _complete(path, settings, *, producer="bneck", complete=True, reasons=("", "empty", "", "empty", "truncated")):
    with h5py.File(path, "w") as f:
        f.attrs["producer"] = producer
        f.attrs["complete"] = complete
        f.attrs["settings_json"] = json.dumps(settings)
        f.attrs["class_names"] = np.array([b"cat", b"dog"])
        f["valid"] = np.array([r == "" for r in reasons])
        f.create_dataset("reason", data=np.array(reasons, dtype=object), dtype=h5py.string_dtype())
    return str(path)


def test_missing_file_is_not_done(tmp_path):
    assert finished.check_existing(str(tmp_path / "out.h5"), {"backbone": "vgg16"}) is False


def test_same_settings_is_done_and_attrs_read_plain(tmp_path):
    out = _complete(tmp_path / "out.h5", {"backbone": "vgg16", "layer": "block5_pool"})
    assert finished.check_existing(out, {"layer": "block5_pool", "backbone": "vgg16"}) is True
    attrs = finished.read_attrs(out)
    assert attrs["class_names"] == ["cat", "dog"] and attrs["complete"] is True


def test_different_settings_are_named_and_refused(tmp_path):
    out = _complete(tmp_path / "out.h5", {"backbone": "vgg16", "layer": "block5_pool"})
    with pytest.raises(finished.StoreError, match=r"layer: block5_pool -> block4_pool\).*--overwrite"):
        finished.check_existing(out, {"backbone": "vgg16", "layer": "block4_pool"})


@pytest.mark.parametrize("kind", ["not_hdf5", "other_producer", "incomplete"])
def test_foreign_or_broken_files_are_refused_not_replaced(tmp_path, kind):
    out = tmp_path / "out.h5"
    if kind == "not_hdf5":
        out.write_bytes(b"not an hdf5 file")
    else:
        _complete(out, {}, producer="someone-else" if kind == "other_producer" else "bneck",
                  complete=kind != "incomplete")
    before = out.read_bytes()
    with pytest.raises(finished.StoreError, match="--overwrite"):
        finished.check_existing(str(out), {})
    assert out.read_bytes() == before


def test_bad_reasons_count_invalid_rows(tmp_path):
    out = _complete(tmp_path / "out.h5", {})
    assert finished.bad_reasons(out) == {"empty": 2, "truncated": 1}
    clean = _complete(tmp_path / "clean.h5", {}, reasons=("", ""))
    assert finished.bad_reasons(clean) == {}


def test_stale_partial_is_removed_unless_locked(tmp_path):
    out = _complete(tmp_path / "out.h5", {})
    d = finished.partial_dir(out)
    os.makedirs(d)
    (tmp_path / "out.h5.partial" / "chunk-0000000.npz").write_bytes(b"x")
    fd = os.open(os.path.join(d, "lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a live --overwrite run holds it: keep its work
    try:
        finished.remove_stale_partial(out)
        assert os.path.isdir(d)
    finally:
        os.close(fd)
    finished.remove_stale_partial(out)
    assert not os.path.exists(d) and os.path.exists(out)
    finished.remove_stale_partial(out)  # nothing there: a no-op

"""The preallocated output file: rows written in place, and the snapshot that undoes a killed end session."""

import os

import h5py
import numpy as np
import pytest

from features.writer.target import Target, TargetError, _outside


def _target(tmp_path, n=10, shape=(3, 4), dtype="float16", views=("features", "features_flipped")):
    return Target(str(tmp_path), n_rows=n, feature_shape=shape, store_dtype=dtype, views=views)


def _rows(n, shape, seed, dtype="float16"):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(dtype)


def test_outside_is_the_complement_of_the_ranges():
    assert _outside(100, [(10, 20), (50, 30)]) == [(0, 10), (30, 50), (80, 100)]
    assert _outside(100, [(0, 100)]) == []
    assert _outside(40, [(0, 0)]) == [(0, 40)]  # empty ranges (zero rows) cover nothing


def test_created_file_is_contiguous_sparse_and_rows_land_where_hdf5_reads_them(tmp_path):
    t = _target(tmp_path, n=1000, shape=(32, 32))
    t.create()
    assert t.exists() and t.feature_bytes == 1000 * 32 * 32 * 2 * 2
    # Sparse: the allocated feature ranges take no disk blocks before rows are written.
    assert os.stat(t.path).st_blocks * 512 < t.feature_bytes / 10
    a, b = _rows(1000, (32, 32), 1), _rows(1000, (32, 32), 2)
    # Out of order, as a resumed run may write them.
    assert t.write_rows(500, {"features": a[500:], "features_flipped": b[500:]}) == a[500:].nbytes * 2
    t.write_rows(0, {"features": a[:500], "features_flipped": b[:500]})
    t.close()
    with h5py.File(t.path, "r") as f:
        assert f["features"].chunks is None  # contiguous
        np.testing.assert_array_equal(f["features"][()], a)
        np.testing.assert_array_equal(f["features_flipped"][()], b)


def test_write_rows_refuses_rows_that_do_not_fit(tmp_path):
    t = _target(tmp_path).create()
    with pytest.raises(TargetError, match="do not fit"):
        t.write_rows(8, {"features": _rows(3, (3, 4), 0), "features_flipped": _rows(3, (3, 4), 0)})
    with pytest.raises(TargetError, match="do not fit"):
        t.write_rows(0, {"features": _rows(2, (4, 3), 0), "features_flipped": _rows(2, (4, 3), 0)})
    t.close()


def test_restore_undoes_a_half_finished_end_session_and_keeps_the_rows(tmp_path):
    t = _target(tmp_path, n=64, shape=(16,), dtype="float32", views=("features",))
    t.create()
    rows = _rows(64, (16,), 3, "float32")
    t.write_rows(0, {"features": rows})
    t.close()
    size = os.path.getsize(t.path)
    # An end session that got far (new datasets, attributes, a big vlen dataset at the end) ...
    with h5py.File(t.path, "r+") as f:
        f.create_dataset("paths", data=np.array([f"img{i:05d}.jpg" * 40 for i in range(64)], dtype=object))
        f.attrs["complete"] = True
    assert os.path.getsize(t.path) > size
    # ... and one whose metadata a kill tore: scribble over everything outside the rows.
    with open(t.path, "r+b") as fh:
        for a, b in _outside(os.path.getsize(t.path), t.ranges.values()):
            fh.seek(a)
            fh.write(b"\xff" * (b - a))
    with pytest.raises(OSError):
        h5py.File(t.path, "r").close()
    again = _target(tmp_path, n=64, shape=(16,), dtype="float32", views=("features",)).restore()
    assert os.path.getsize(again.path) == size
    with h5py.File(again.path, "r") as f:
        assert set(f) == {"features"} and "complete" not in f.attrs
        np.testing.assert_array_equal(f["features"][()], rows)


def test_restore_refuses_a_layout_other_than_this_runs(tmp_path):
    _target(tmp_path, n=10, shape=(3, 4)).create().close()
    with pytest.raises(TargetError, match="layout"):
        _target(tmp_path, n=12, shape=(3, 4)).restore()


def test_zero_rows(tmp_path):
    t = _target(tmp_path, n=0).create()
    t.restore()
    with h5py.File(t.path, "r") as f:
        assert f["features"].shape == (0, 3, 4)

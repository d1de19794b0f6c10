"""Tests for pipeline.data.training: feature-file validation, lazy views, splits, memory budget, tf.data."""

import pickle

import h5py
import numpy as np
import pytest
from feature_files import write_feature_file

from features import faults
from pipeline.data.featurefile import FeatureFile, check_compatible
from pipeline.data.splits import train_val_split
from pipeline.data.training import load_training_data, make_tf_dataset, parse_bytes
from pipeline.data.views import ConcatView, FeatureFileError, FeatureView


@pytest.fixture
def ffile(tmp_path):
    path = tmp_path / "feats.h5"
    return path, write_feature_file(path, n=30, shape=(3, 4, 5))


def _row_ids(x, feats):
    """Index in feats of each row of x (rows of random features are unique)."""
    flat = feats.reshape(len(feats), -1)
    return np.array([np.flatnonzero((flat == r.reshape(-1)).all(1))[0] for r in x])


# -- FeatureFile ---------------------------------------------------------------------------

def test_refuses_non_hdf5(tmp_path):
    p = tmp_path / "notes.h5"
    p.write_text("hello")
    with pytest.raises(FeatureFileError, match=r"notes\.h5.*not an HDF5"):
        FeatureFile(p)
    with pytest.raises(FeatureFileError, match="no such feature file"):
        FeatureFile(tmp_path / "missing.h5")


@pytest.mark.parametrize("override, message", [
    ({"producer": "someone-else"}, "not a bneck feature file"),
    ({"format_version": None}, "not a bneck feature file"),
    ({"format_version": 99}, "format_version 99 is newer"),
    ({"complete": False}, "incomplete feature file"),
    ({"complete": None}, "incomplete feature file"),
])
def test_refuses_bad_files(tmp_path, override, message):
    p = tmp_path / "bad.h5"
    write_feature_file(p, **override)
    with pytest.raises(FeatureFileError, match=message) as info:
        FeatureFile(p)
    assert str(p) in str(info.value)


def _regroup(path, data=None, **attrs):
    """Replace the file's ``groups`` dataset with ``data`` (default: the same strings) and ``attrs``."""
    with h5py.File(path, "r+") as h5:
        old = h5["groups"].asstr()[()].tolist()
        del h5["groups"]
        ds = h5.create_dataset("groups", data=old if data is None else data)
        for k, v in attrs.items():
            ds.attrs[k] = v


@pytest.mark.parametrize("data, attrs, message", [
    (np.arange(10), {"group_by": "video"}, r"'groups' must hold one string per row \(10\); found int64"),
    (np.array([b"v"] * 9), {"group_by": "video"}, r"'groups' (has 9 rows|must hold one string per row \(10\))"),
    (np.array([[b"v"]] * 10), {"group_by": "video"}, r"one string per row \(10\)"),
    (None, {}, "needs a group_by attr"),
    (None, {"group_by": 7}, "needs a group_by attr"),
    (None, {"group_by": "x" * 65}, "needs a group_by attr"),
    (None, {"group_by": ["video", "scene"]}, "needs a group_by attr"),
])
def test_refuses_hostile_groups(tmp_path, data, attrs, message):
    p = tmp_path / "bad.h5"
    write_feature_file(p, n=10, groups=[f"v{i // 3}" for i in range(10)])
    with FeatureFile(p) as f:  # as written: fine
        assert f.groups[:4] == ["v0", "v0", "v0", "v1"] and f.group_by == "video"
    _regroup(p, data, **attrs)
    with pytest.raises(FeatureFileError, match=message) as info:
        FeatureFile(p)
    assert str(p) in str(info.value)
    from features.fileinfo import describe_file

    with pytest.raises(ValueError, match=message):  # bneck info refuses it the same way
        describe_file(str(p))


def test_files_without_groups_still_load(ffile):
    with FeatureFile(ffile[0]) as f:
        assert f.groups is None and f.group_by is None


def test_refuses_plain_hdf5(tmp_path):
    p = tmp_path / "other.h5"
    with h5py.File(p, "w") as h5:
        h5["x"] = np.zeros(3)
    with pytest.raises(FeatureFileError, match="not a bneck feature file"):
        FeatureFile(p)


def test_metadata(ffile):
    path, ref = ffile
    with FeatureFile(path) as f:
        attrs = f.attrs
        assert attrs["input_size"] == [32, 32] and type(attrs["input_size"][0]) is int
        assert attrs["flip"] is True and attrs["complete"] is True
        assert attrs["producer"] == "bneck" and isinstance(attrs["n_rows"], int)
        assert f.task == "classification" and f.class_names == ref["class_names"]
        assert f.target_names is None and f.targets is None
        assert f.n_rows == 30 and f.feature_shape == (3, 4, 5) and f.has_flipped
        assert f.paths == ref["paths"] and f.valid.dtype == bool
        np.testing.assert_array_equal(f.labels, ref["labels"])
        assert f.image_size.shape == (30, 2) and f.image_size.dtype == np.int32


# -- views and pooling ---------------------------------------------------------------------

@pytest.mark.parametrize("pooling, reduce", [("avg", np.mean), ("max", np.max)])
def test_pooling_on_load(ffile, pooling, reduce):
    path, ref = ffile
    with FeatureFile(path) as f:
        v = f.view(pooling=pooling)
        assert v.shape == (30, 5) and v.nbytes == 30 * 5 * 4
        np.testing.assert_allclose(v[np.arange(30)], reduce(ref["features"], axis=(1, 2)),
                                   rtol=1e-6, atol=1e-6)
        vf = f.view([3, 1], flipped=True, pooling=pooling)
        np.testing.assert_allclose(vf[:], reduce(ref["features_flipped"][[3, 1]], axis=(1, 2)),
                                   rtol=1e-6, atol=1e-6)
        assert f.view().shape == (30, 3, 4, 5)


def test_pooling_on_prepooled_file(tmp_path):
    p = tmp_path / "pooled.h5"
    ref = write_feature_file(p, shape=(6,), pooling="max")
    with FeatureFile(p) as f:
        for ok in ("none", "max"):
            np.testing.assert_array_equal(f.view(pooling=ok)[:], ref["features"])
        with pytest.raises(FeatureFileError, match="cannot apply 'avg' pooling"):
            f.view(pooling="avg")
        with pytest.raises(ValueError, match="pooling must be one of"):
            f.view(pooling="mean")


def test_view_indexing(ffile):
    path, ref = ffile
    feats = ref["features"]
    with FeatureFile(path) as f:
        rows = np.array([9, 2, 25, 14, 0])
        v = f.view(rows)
        assert len(v) == 5 and v.dtype == np.float32
        idx = np.array([4, 0, 2, 2, 1])  # unsorted, with a duplicate
        np.testing.assert_array_equal(v[idx], feats[rows[idx]])
        np.testing.assert_array_equal(v[1:4], feats[rows[1:4]])
        np.testing.assert_array_equal(v[-1], feats[0])
        np.testing.assert_array_equal(v[np.array([True, False, True, False, False])],
                                      feats[[9, 25]])
        assert v[np.array([], int)].shape == (0, 3, 4, 5)
        with pytest.raises(IndexError):
            v[np.array([5])]
        full = f.view()
        perm = np.random.default_rng(1).permutation(30)
        np.testing.assert_array_equal(full[perm], feats[perm])  # sparse + dense reads
        np.testing.assert_array_equal(full[perm[:4]], feats[perm[:4]])
    # The view outlives the FeatureFile (reopens lazily) and survives pickling.
    np.testing.assert_array_equal(v[[0]], feats[[9]])
    v2 = pickle.loads(pickle.dumps(v))
    np.testing.assert_array_equal(v2.to_numpy(batch_rows=2), feats[rows])
    v.close()
    v2.close()


def test_concat_view(ffile):
    path, ref = ffile
    with FeatureFile(path) as f:
        rows = np.array([5, 1, 7])
        cv = ConcatView([f.view(rows, pooling="avg"), f.view(rows, flipped=True,
                                                            pooling="avg")])
        expect = np.concatenate([ref["features"][rows], ref["features_flipped"][rows]])
        expect = expect.mean(axis=(1, 2))
        assert cv.shape == (6, 5) and cv.nbytes == 6 * 5 * 4
        idx = np.array([5, 0, 3, 2, 4])
        np.testing.assert_allclose(cv[idx], expect[idx], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(cv.to_numpy(batch_rows=4), expect, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(cv[4], expect[4], rtol=1e-6, atol=1e-6)
        seen = np.concatenate([pos for pos, _ in cv.iter_batches(4, shuffle=True, seed=3)])
        assert sorted(seen) == list(range(6))
        with pytest.raises(ValueError, match="row shapes"):
            ConcatView([f.view(), f.view(pooling="avg")])


# -- splitting -----------------------------------------------------------------------------

def test_split_deterministic_and_disjoint():
    tr, va = train_val_split(100, 0.2, stratify=False, seed=4)
    assert len(va) == 20 and len(tr) == 80
    assert set(tr).isdisjoint(va) and set(tr) | set(va) == set(range(100))
    tr2, va2 = train_val_split(100, 0.2, stratify=False, seed=4)
    np.testing.assert_array_equal(va, va2)
    assert not np.array_equal(va, train_val_split(100, 0.2, stratify=False, seed=5)[1])
    assert len(train_val_split(10, 0.0, stratify=False, seed=0)[1]) == 0
    with pytest.raises(ValueError):
        train_val_split(10, 1.0, stratify=False, seed=0)
    with pytest.raises(ValueError):
        train_val_split(10, 0.2, stratify=True, seed=0)


def test_stratified_split_keeps_proportions():
    labels = np.repeat([0, 1, 2, 3], [50, 30, 20, 1])  # class 3 has a single member
    labels = np.random.default_rng(0).permutation(labels)
    tr, va = train_val_split(labels, 0.2, stratify=True, seed=0)
    assert np.bincount(labels[va], minlength=4).tolist() == [10, 6, 4, 0]
    assert 3 in labels[tr]
    # Many small classes: the total still matches val_split (no per-class rounding blow-up).
    small = np.repeat(np.arange(40), 3)
    tr, va = train_val_split(small, 0.2, stratify=True, seed=1)
    assert len(va) == 24 and set(small[tr]) == set(range(40))


def test_split_by_source_row_with_flips(tmp_path):
    p = tmp_path / "f.h5"
    ref = write_feature_file(p, n=40, shape=(2, 2, 3))
    data = load_training_data(p, val_split=0.25, seed=0)
    assert data.used_flipped and data.in_memory
    assert data.n_train_rows == 30 and data.n_val_rows == 10 and len(data.X) == 60
    orig = _row_ids(data.X[:30], ref["features"])
    flip = _row_ids(data.X[30:], ref["features_flipped"])
    val = _row_ids(data.X_val, ref["features"])
    np.testing.assert_array_equal(orig, flip)  # each image and its mirror stay together
    assert set(orig).isdisjoint(val) and len(set(orig) | set(val)) == 40
    np.testing.assert_array_equal(data.y, np.concatenate([ref["labels"][orig]] * 2))
    np.testing.assert_array_equal(data.y_val, ref["labels"][val])
    assert load_training_data(p, use_flipped=False).X.shape == (32, 2, 2, 3)


def test_invalid_rows_skipped_and_counted(tmp_path):
    p = tmp_path / "f.h5"
    write_feature_file(p, n=20, invalid=[0, 3, 7])
    data = load_training_data(p, val_split=0.0)
    assert data.n_invalid_skipped == 3 and data.n_train_rows == 17 and data.X_val is None
    assert not (data.X.reshape(len(data.X), -1) == 0).all(1).any()


def test_regression_missing_targets(tmp_path):
    p = tmp_path / "r.h5"
    ref = write_feature_file(p, n=20, shape=(4,), task="regression", invalid=[1],
                             nan_target_rows=[2, 5])
    data = load_training_data(p, val_split=0.2, seed=0)
    assert data.task == "regression" and data.target_names == ["t0", "t1"]
    assert data.class_names is None
    assert data.n_invalid_skipped == 1 and data.n_missing_targets_skipped == 2
    assert data.n_train_rows + data.n_val_rows == 17
    ids = _row_ids(data.X[:data.n_train_rows], ref["features"])
    np.testing.assert_array_equal(data.y[:len(ids)], ref["targets"][ids])
    np.testing.assert_array_equal(data.y[len(ids):], ref["targets_flipped"][ids])


# -- memory budget -------------------------------------------------------------------------

def test_parse_bytes():
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("2GiB") == 2 * 2**30
    assert parse_bytes("1.5G") == int(1.5 * 2**30)
    assert parse_bytes("100MB") == 10**8 and parse_bytes(" 4096 ") == 4096
    assert parse_bytes(1000) == 1000 and parse_bytes("1e3") == 1000
    for bad in ("lots", "5 parsecs", "-1", ""):
        with pytest.raises(ValueError):
            parse_bytes(bad)


def test_memory_budget_switch(ffile):
    path, _ = ffile
    big = load_training_data(path, pooling="avg", memory_budget="1GiB", seed=2)
    small = load_training_data(path, pooling="avg", memory_budget=100, seed=2)
    assert big.in_memory and isinstance(big.X, np.ndarray) and isinstance(big.X_val, np.ndarray)
    assert not small.in_memory
    assert isinstance(small.X, ConcatView) and isinstance(small.X_val, FeatureView)
    np.testing.assert_array_equal(small.X.to_numpy(), big.X)
    np.testing.assert_array_equal(small.X_val[np.arange(len(small.X_val))], big.X_val)
    np.testing.assert_array_equal(small.y, big.y)
    small.close()


class _RowsRead(Exception):
    """Raised at the views' fault point: some rows were about to be read."""


def test_lazy_mode_reads_nothing_up_front(tmp_path):
    p = tmp_path / "big.h5"
    write_feature_file(p, n=64, shape=(4, 4, 8))
    full = 64 * 4 * 4 * 8 * 4  # float32 bytes of the whole file
    with faults.raising_at("view_read", _RowsRead()):  # any read of feature rows would raise
        data = load_training_data(p, val_split=0.0, use_flipped=False, memory_budget=full // 4)
        assert not data.in_memory and isinstance(data.X, FeatureView) and data.X.nbytes == full
        with pytest.raises(_RowsRead):  # the point does see a read: nothing read above is not a blind spot
            data.X[np.array([40, 3, 17])]
    batch = data.X[np.array([40, 3, 17])]  # features are streamed by the head, batch by batch
    assert batch.shape == (3, 4, 4, 8)
    np.testing.assert_array_equal(batch, data.X.to_numpy()[[40, 3, 17]])


# -- compatibility -------------------------------------------------------------------------

def test_check_compatible_messages(ffile):
    path, _ = ffile
    with FeatureFile(path) as f:
        attrs = f.attrs
    check_compatible(attrs, dict(attrs, input_size=np.array([32, 32])), path="x.h5")
    with pytest.raises(FeatureFileError, match=r"x\.h5.*layer is 'other', expected 'top'"):
        check_compatible(attrs, dict(attrs, layer="other"), path="x.h5")
    with pytest.raises(FeatureFileError, match="'backbone' is missing"):
        check_compatible(attrs, {k: v for k, v in attrs.items() if k != "backbone"}, path="x")
    # keys absent from `expected` cannot be checked and are skipped
    check_compatible({"backbone": attrs["backbone"]}, attrs, path="x")


def test_separate_val_file(tmp_path):
    train, good, bad, bad_cls = (tmp_path / n for n in ("t.h5", "v.h5", "b.h5", "c.h5"))
    write_feature_file(train, n=20)
    ref = write_feature_file(good, n=8, seed=1, invalid=[2])
    write_feature_file(bad, n=8, backbone="resnet50")
    write_feature_file(bad_cls, n=8, class_names=["a", "b", "c"])
    data = load_training_data(train, val=good, val_split=0.5)
    assert data.n_train_rows == 20 and data.n_val_rows == 7 and data.n_invalid_skipped == 1
    np.testing.assert_array_equal(data.X_val, np.delete(ref["features"], 2, axis=0))
    with pytest.raises(FeatureFileError, match=r"b\.h5.*backbone is 'resnet50'"):
        load_training_data(train, val=bad)
    with pytest.raises(FeatureFileError, match=r"c\.h5.*class_names"):
        load_training_data(train, val=bad_cls)


# -- tf.data -------------------------------------------------------------------------------

def test_make_tf_dataset(tmp_path):
    p = tmp_path / "f.h5"
    ref = write_feature_file(p, n=23, shape=(2, 2, 3), invalid=[4])
    ds = make_tf_dataset(p, pooling="max", batch_size=5)
    assert int(ds.cardinality()) == 5  # known epoch length for Keras
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    assert [len(x) for x in xs] == [5, 5, 5, 5, 2]
    keep = np.delete(np.arange(23), 4)
    np.testing.assert_allclose(np.concatenate(xs), ref["features"][keep].max(axis=(1, 2)))
    np.testing.assert_array_equal(np.concatenate(ys), ref["labels"][keep])

    rows = np.array([7, 0, 11])
    ds = make_tf_dataset(p, rows=rows, flipped=True, with_targets=False, batch_size=2)
    x = np.concatenate([b.numpy() for b in ds])
    np.testing.assert_array_equal(x, ref["features_flipped"][rows])

    ds = make_tf_dataset(p, batch_size=4, shuffle=True, seed=1)
    epochs = [np.concatenate([y.numpy() for _, y in ds]) for _ in range(2)]
    xs1 = np.concatenate([x.numpy() for x, _ in ds])
    assert sorted(_row_ids(xs1, ref["features"])) == keep.tolist()
    assert all(sorted(e) == sorted(ref["labels"][keep]) for e in epochs)


def test_make_tf_dataset_regression_flipped(tmp_path):
    p = tmp_path / "r.h5"
    ref = write_feature_file(p, n=6, shape=(3,), task="regression")
    x, y = next(iter(make_tf_dataset(p, flipped=True, batch_size=6)))
    np.testing.assert_array_equal(x.numpy(), ref["features_flipped"])
    np.testing.assert_array_equal(y.numpy(), ref["targets_flipped"])


def test_keypoints_of_mixed_image_sizes_are_learnt_in_the_input_frame(tmp_path, caplog):
    p = tmp_path / "mixed.h5"
    t = np.array([[15.5, 23.5, 1.0]] * 4, np.float32)
    ref = write_feature_file(p, n=4, shape=(3,), task="regression", targets=t, target_names=["a_x", "a_y", "z"])
    with h5py.File(p, "r+") as f:
        f["image_size"][2:] = [96, 128]  # rows 0, 1: 48x64; rows 2, 3: twice that
    with caplog.at_level("INFO", logger="bneck"):
        data = load_training_data(p, val_split=0.0, use_flipped=True)
    assert data.target_frame == [32, 32] and "learnt in the 32x32 input frame" in caplog.text
    # x: 64 -> 32 and 128 -> 32 wide; y: 48 -> 32 and 96 -> 32 high; "z" is no coordinate.
    np.testing.assert_allclose(data.y[:4], [[7.5, 15.5, 1.0]] * 2 + [[3.5, 7.5, 1.0]] * 2)
    fx = ref["targets_flipped"][0, 0]
    np.testing.assert_allclose(data.y[4:, 0], [(fx + 0.5) / 2 - 0.5] * 2 + [(fx + 0.5) / 4 - 0.5] * 2, rtol=1e-6)


def test_keypoints_of_one_image_size_stay_in_its_pixels(ffile, tmp_path):
    p = tmp_path / "one.h5"
    ref = write_feature_file(p, n=6, shape=(3,), task="regression", target_names=["a_x", "a_y"])
    data = load_training_data(p, val_split=0.0, use_flipped=False)
    assert data.target_frame == [48, 64]
    np.testing.assert_array_equal(data.y, ref["targets"])
    assert load_training_data(ffile[0], val_split=0.0).target_frame is None  # classification

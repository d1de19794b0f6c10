"""Test helper: write small bneck HDF5 feature files with h5py, without running a backbone."""

from __future__ import annotations

import h5py
import numpy as np

_STR = h5py.string_dtype("utf-8")


def write_feature_file(path, *, n: int = 20, shape=(3, 3, 4), task: str = "classification",
                       n_classes: int = 3, n_targets: int = 2, flip: bool = True,
                       store_dtype: str = "float16", pooling: str | None = None,
                       invalid=(), nan_target_rows=(), labels=None, targets=None,
                       class_names=None, target_names=None, seed: int = 0,
                       complete: bool = True, groups=None, group_by: str = "video", **attrs) -> dict:
    """Write a small feature file at ``path`` and return what was written as numpy arrays.

    ``shape`` is the per-row feature shape ((h, w, c) map or (c,) pooled); ``pooling``
    defaults to "none" for maps and "avg" for vectors. ``invalid`` lists rows marked
    valid=False (features zeroed, image_size 0). ``nan_target_rows`` get all-NaN targets
    (regression). ``groups`` (one string per row) writes the ``groups`` dataset with attr ``group_by``.
    Extra keyword arguments override root attrs (e.g. ``producer="x"``,
    ``format_version=2``, ``backbone="other"``); pass ``attr=None`` to delete one.

    Returns a dict with ``features`` / ``features_flipped`` (float32 copies of the *stored*
    values, so exact comparisons work with float16), ``labels`` or ``targets`` /
    ``targets_flipped``, ``valid``, ``paths``, ``class_names``/``target_names``.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(shape)
    if pooling is None:
        pooling = "none" if len(shape) > 1 else "avg"
    valid = np.ones(n, bool)
    valid[list(invalid)] = False
    feats = rng.normal(size=(n, *shape)).astype(store_dtype)
    feats[~valid] = 0
    flipped = feats[:, :, ::-1] if len(shape) == 3 else -feats  # any distinct, known values
    flipped = np.ascontiguousarray(flipped)
    out = {"features": feats.astype(np.float32), "valid": valid,
           "paths": [f"img_{i:04d}.jpg" for i in range(n)]}
    if flip:
        out["features_flipped"] = flipped.astype(np.float32)
    root = {
        "format_version": 1, "producer": "bneck", "package_version": "0.1.0",
        "backbone": "mobilenet_v3_small", "layer": "top", "pooling": pooling,
        "input_size": np.array([32, 32], np.int32), "weights": "imagenet",
        "weights_sha256": "ab" * 32, "seed": 0, "preprocessing": "mobilenet_v3",
        "precision": "float32", "store_dtype": store_dtype, "flip": flip,
        "runtime": "keras", "source_kind": "folder", "source_fingerprint": "f" * 16,
        "task": task, "n_rows": n, "shard": "0/1", "row_start": 0, "row_stop": n,
        "complete": complete,
    }
    root.update(attrs)
    with h5py.File(path, "w") as h5:
        for key, value in root.items():
            if value is not None:
                h5.attrs[key] = value
        chunks = (min(n, 8), *shape) if n else None
        h5.create_dataset("features", data=feats, chunks=chunks)
        if flip:
            h5.create_dataset("features_flipped", data=flipped, chunks=chunks)
        if task == "classification":
            if labels is None:
                labels = np.arange(n) % n_classes
            labels = np.asarray(labels, np.int64)
            names = class_names or [f"class_{i}" for i in range(int(labels.max()) + 1)]
            ds = h5.create_dataset("labels", data=labels)
            ds.attrs.create("class_names", names, dtype=_STR)
            out.update(labels=labels, class_names=list(names))
        else:
            if targets is None:
                targets = rng.uniform(size=(n, n_targets)).astype(np.float32)
            targets = np.array(targets, np.float32)
            targets[list(nan_target_rows)] = np.nan
            t_flip = targets.copy()
            t_flip[:, 0] = 1 - t_flip[:, 0]  # "mirrored x"
            names = target_names or [f"t{i}" for i in range(targets.shape[1])]
            ds = h5.create_dataset("targets", data=targets)
            ds.attrs.create("target_names", names, dtype=_STR)
            if flip:
                h5.create_dataset("targets_flipped", data=t_flip)
                out["targets_flipped"] = t_flip
            out.update(targets=targets, target_names=list(names))
        h5.create_dataset("paths", data=out["paths"], dtype=_STR)
        if groups is not None:
            h5.create_dataset("groups", data=list(groups), dtype=_STR).attrs["group_by"] = group_by
            out["groups"] = list(groups)
        h5.create_dataset("valid", data=valid)
        h5.create_dataset("reason", data=["" if v else "unreadable" for v in valid], dtype=_STR)
        size = np.where(valid[:, None], np.array([[48, 64]]), 0).astype(np.int32)
        h5.create_dataset("image_size", data=size)
    return out


def assert_rows_close(got, want, *, rtol: float = 1e-5) -> None:
    """Features equal up to float rounding, judged against each row's own scale.

    Two processes with other thread counts (a Ray actor, an in-process run) can get other oneDNN
    kernels on some CPUs (seen on an AVX2-only EPYC; byte-equal on AVX-512 ones). Random-weight
    features hold values of 1e-25 beside 1e-21, where that rounding alone moves the small ones by
    percents, so an absolute tolerance near zero cannot tell rounding from a shifted row; the
    row's scale can.
    """
    import numpy as np

    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = np.abs(want).reshape(len(want), -1).max(axis=1).reshape(-1, *[1] * (want.ndim - 1))
    scale = np.where(scale > 0, scale, 1.0)
    np.testing.assert_allclose(got / scale, want / scale, rtol=rtol, atol=rtol)


class FakeView:
    """Minimal lazy feature view for the heads: wraps an array, insists on sorted int index arrays, counts reads."""

    def __init__(self, a):
        self.a, self.reads, self.max_rows = a, 0, 0
        self.row_reads = np.zeros(len(a), int)

    def __len__(self):
        return len(self.a)

    @property
    def shape(self):
        return self.a.shape

    def __getitem__(self, idx):
        assert isinstance(idx, np.ndarray) and idx.dtype.kind in "iu", type(idx)
        assert np.all(np.diff(idx) > 0), "indices must be sorted and unique"
        self.reads += 1
        self.max_rows = max(self.max_rows, len(idx))
        self.row_reads[idx] += 1
        return self.a[idx].astype(np.float32)

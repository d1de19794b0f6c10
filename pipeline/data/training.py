"""Training data from bneck HDF5 feature files: opening, splitting, memory budget, tf.data.

The public API for notebooks and the CLI::

    from pipeline.data.training import load_training_data
    data = load_training_data("features.h5", pooling="avg", memory_budget="4GiB")
    data.X, data.y, data.X_val, data.y_val   # numpy arrays, or lazy views if too big

Feature files are validated on open (:class:`pipeline.data.featurefile.FeatureFile`); rows are read
lazily through :class:`pipeline.data.views.FeatureView` / :class:`~pipeline.data.views.ConcatView`, so
nothing ever requires the whole file in RAM unless it fits in the memory budget.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from dataclasses import dataclass, field

import numpy as np

from pipeline.data.featurefile import COMPAT_KEYS, FeatureFile, check_compatible
from pipeline.data.keypoint_frame import into_frame, training_frame
from pipeline.data.splits import group_codes, grouped_cv_folds, grouped_train_val_split, train_val_split
from pipeline.data.views import ConcatView, FeatureFileError, batch_indices, total_nbytes

__all__ = ["TrainingData", "load_training_data", "make_tf_dataset", "parse_bytes", "refuse_unlabelled"]

log = logging.getLogger(__name__)

# Bare K/M/G/T are binary, like GNU tools and Docker; "KB"/"MB"/"GB" are explicit SI units.
_UNITS = {"": 1, "b": 1,
          "k": 2**10, "kib": 2**10, "kb": 10**3, "m": 2**20, "mib": 2**20, "mb": 10**6,
          "g": 2**30, "gib": 2**30, "gb": 10**9, "t": 2**40, "tib": 2**40, "tb": 10**12}


def parse_bytes(text) -> int:
    """Parse a byte size: an int, or a string like "512MiB", "2GiB", "1.5G", "100MB", "4096".

    KiB/MiB/GiB/TiB and bare K/M/G/T are powers of 1024; KB/MB/GB/TB are powers of 1000.
    """
    if isinstance(text, bool):
        raise TypeError("byte size must be a number or a string, not a bool")
    if isinstance(text, (int, np.integer, float)):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)(?:e([+-]?\d+))?\s*([a-zA-Z]*)\s*", str(text))
        if not m or m.group(3).lower() not in _UNITS:
            raise ValueError(f"cannot parse byte size {text!r} (examples: 512MiB, 2GiB, 1.5G)")
        value = float(m.group(1)) * 10 ** int(m.group(2) or 0)
        unit = m.group(3).lower()
    if value < 0 or not np.isfinite(value):
        raise ValueError(f"byte size must be a non-negative number, got {text!r}")
    return int(value * _UNITS[unit])


@dataclass
class TrainingData:
    """Training/validation features and targets, as returned by :func:`load_training_data`.

    ``X``/``X_val`` are float32 numpy arrays when ``in_memory`` is True, otherwise lazy
    :class:`FeatureView`/:class:`ConcatView` objects to be read batch by batch
    (``X[idx]``, ``X.iter_batches(...)``). ``X_val``/``y_val`` are None without validation.
    ``y`` holds int64 class indices (classification) or float32 (N, K) targets with NaN for
    missing values (regression). ``n_train_rows``/``n_val_rows`` count source images; with
    ``used_flipped`` the training side holds each image twice (original, then mirrored rows).
    ``n_invalid_skipped`` counts unreadable rows skipped (training plus any ``val`` file),
    ``n_missing_targets_skipped`` regression rows whose targets were all NaN.
    ``attrs`` is the provenance (root attrs) of the training feature file. ``target_frame``
    ([height, width]) is the pixel frame regression targets are in (see
    :func:`pipeline.data.keypoint_frame.training_frame`), None for classification.
    ``groups`` (int codes, one per training sample: a mirror shares its original's) and ``group_by``
    come from the file's ``groups`` dataset (None without one); ``split`` records how the validation
    rows were drawn (:func:`pipeline.data.splits.grouped_train_val_split`; None with a ``val`` file).
    """

    X: object = field(repr=False)
    y: np.ndarray = field(repr=False)
    X_val: object = field(repr=False)
    y_val: np.ndarray | None = field(repr=False)
    task: str
    class_names: list[str] | None
    target_names: list[str] | None
    attrs: dict = field(repr=False)
    n_invalid_skipped: int
    n_train_rows: int
    n_val_rows: int
    used_flipped: bool
    in_memory: bool
    n_missing_targets_skipped: int = 0
    pooling: str = "none"
    path: str = ""
    target_frame: list[int] | None = None
    groups: np.ndarray | None = field(default=None, repr=False)
    group_by: str | None = None
    split: dict | None = None

    def cv_folds(self, cv: int, *, seed=0):
        """``(folds, record)``: CV folds over the training samples that keep each group in one fold.

        ``(None, None)`` without groups (the caller's folds by image apply); ``(None, record)`` when grouped
        folds are impossible, with the record's warning (:func:`pipeline.data.splits.grouped_cv_folds`).
        """
        if self.groups is None:
            return None, None
        return grouped_cv_folds(self.y, self.groups, cv, classifier=self.task == "classification", seed=seed,
                                by=self.group_by)

    def close(self) -> None:
        """Close the HDF5 handles of lazy views (no-op for in-memory data)."""
        for x in (self.X, self.X_val):
            if hasattr(x, "close"):
                x.close()


def _usable_rows(f: FeatureFile) -> tuple[np.ndarray, int, int]:
    """Mask of rows to use, plus counts of invalid rows and all-NaN-target rows skipped."""
    keep = f.valid
    n_invalid = int((~keep).sum())
    n_missing = 0
    if f.task == "regression":
        all_nan = np.isnan(f.targets).all(axis=1) & keep
        n_missing = int(all_nan.sum())
        keep &= ~all_nan
    if n_invalid or n_missing:
        log.info("%s: skipping %d invalid rows and %d rows with no targets", f.path, n_invalid,
                 n_missing)
    return keep, n_invalid, n_missing


def refuse_unlabelled(f: FeatureFile, doing: str) -> None:
    """Refuse a task ``none`` file (extracted from unlabelled images) for work that needs labels or targets."""
    if f.task == "none":
        raise FeatureFileError(
            f"{f.path}: task none: its {f.n_rows} rows have no labels or targets (extracted from an unlabelled "
            f"source: a folder of images, a list of paths, a CSV with only a path column), so there is nothing "
            f"to {doing}; extract a labelled source for that, or run a trained model on this file with "
            f"`bneck predict MODEL {f.path}`")


def _check_val_file(train: FeatureFile, val: FeatureFile) -> None:
    """Refuse a validation file whose features or classes differ from the training file."""
    check_compatible(train.attrs, val.attrs, path=val.path, keys=COMPAT_KEYS + ("task",))
    if str(train.attrs.get("weights", "")).startswith("none"):  # random weights have no sha256: the init says which
        check_compatible(train.attrs, val.attrs, path=val.path, keys=("weights",))
    for name, want, found in (("feature shape", train.feature_shape, val.feature_shape),
                              ("class_names", train.class_names, val.class_names),
                              ("target_names", train.target_names, val.target_names)):
        if want != found:
            raise FeatureFileError(
                f"{val.path}: incompatible validation file: {name} is {found!r}, "
                f"expected {want!r} (from {train.path})")


def _y(f: FeatureFile, *, flipped: bool = False, frame=None) -> np.ndarray:
    if f.task == "classification":
        return f.labels  # mirroring an image does not change its class
    y = f.targets_flipped if flipped else f.targets
    if y is None:
        raise FeatureFileError(f"{f.path}: flipped features but no 'targets_flipped' dataset")
    return into_frame(y, f.target_names, f.image_size, frame)  # a mirror commutes with the rescale


def _frame(f: FeatureFile, keep) -> list[int] | None:
    return None if f.task == "classification" else \
        training_frame(f.image_size[keep], f.attrs["input_size"], f.target_names, path=f.path)


def load_training_data(path, *, pooling: str = "none", use_flipped: bool | None = None,
                       val=None, val_split: float = 0.2, seed=0,
                       memory_budget="2GiB") -> TrainingData:
    """Load a feature file as training (and validation) data for a head.

    Args:
        path: HDF5 feature file written by bneck stage one.
        pooling: "none", "avg" or "max", applied to each row on load (see FeatureView).
        use_flipped: append the mirrored views of the *training* rows (labels unchanged,
            regression targets from ``targets_flipped``). None = when the file has them.
        val: optional separate validation feature file. It must match the training file's
            backbone, layer, input_size, preprocessing, pooling, weights, feature shape and
            class/target names (else FeatureFileError naming the attr); ``val_split`` is then
            ignored.
        val_split: validation fraction of the source rows when ``val`` is None (0 = none);
            stratified by class for classification. Validation uses original views only.
        seed: seed of the split.
        memory_budget: if X and X_val together fit in this many float32 bytes (after pooling)
            they are read into numpy arrays; otherwise they stay lazy views. An int or a
            string like "512MiB", "2GiB".

    Rows with ``valid`` false, and regression rows whose targets are all NaN, are skipped and
    counted. Returns a :class:`TrainingData`.
    """
    budget = parse_bytes(memory_budget)
    with FeatureFile(path) as f:
        refuse_unlabelled(f, "train a head on")
        keep, n_invalid, n_missing = _usable_rows(f)
        cls = f.task == "classification"
        if use_flipped is None:
            use_flipped = f.has_flipped
        elif use_flipped and not f.has_flipped:
            raise FeatureFileError(f"{f.path}: --use-flipped requested but the file has no "
                                   "flipped features (extracted with --no-flip)")
        frame = _frame(f, keep)
        y_all, src = _y(f, frame=frame), np.flatnonzero(keep)
        if len(src) == 0:
            raise FeatureFileError(f"{f.path}: no usable rows ({n_invalid} invalid, "
                                   f"{n_missing} without targets)")
        X_val = y_val = split = None
        if val is not None:
            train_rows = src
            with FeatureFile(val) as vf:
                _check_val_file(f, vf)
                vkeep, v_invalid, v_missing = _usable_rows(vf)
                n_invalid, n_missing = n_invalid + v_invalid, n_missing + v_missing
                val_rows = np.flatnonzero(vkeep)
                if len(val_rows):
                    X_val, y_val = vf.view(val_rows, pooling=pooling), _y(vf, frame=frame)[val_rows]
        else:
            split = _split(f, y_all[src] if cls else len(src), src, val_split, stratify=cls, seed=seed)
            tr, va = split.pop("train"), split.pop("val")
            train_rows, val_rows = src[tr], src[va]
            if len(val_rows):
                X_val, y_val = f.view(val_rows, pooling=pooling), y_all[val_rows]
        X, y = f.view(train_rows, pooling=pooling), y_all[train_rows]
        groups = None if f.groups is None else group_codes(f.groups)[train_rows]
        if use_flipped:
            X = ConcatView([X, f.view(train_rows, flipped=True, pooling=pooling)])
            y = np.concatenate([y, _y(f, flipped=True, frame=frame)[train_rows]])
            groups = None if groups is None else np.concatenate([groups, groups])  # a mirror keeps its group
        nbytes = total_nbytes(X, X_val)
        in_memory = nbytes <= budget
        log.info("%s: %d training rows%s, %d validation rows, %.1f MiB of float32 features: %s",
                 f.path, len(X), " (with flips)" if use_flipped else "", len(val_rows),
                 nbytes / 2**20, "loading into memory" if in_memory else
                 f"over the {budget / 2**20:.0f} MiB budget, streaming from disk")
        if in_memory:
            lazy = [v for v in (X, X_val) if v is not None]
            X = X.to_numpy(desc="loading training features")
            X_val = None if X_val is None else X_val.to_numpy(desc="loading validation features")
            for v in lazy:
                v.close()
        return TrainingData(
            X=X, y=y, X_val=X_val, y_val=y_val, task=f.task,
            class_names=f.class_names if cls else None,
            target_names=None if cls else f.target_names, attrs=f.attrs,
            n_invalid_skipped=n_invalid, n_train_rows=len(train_rows), n_val_rows=len(val_rows),
            used_flipped=bool(use_flipped), in_memory=in_memory,
            n_missing_targets_skipped=n_missing, pooling=pooling, path=os.fspath(path), target_frame=frame,
            groups=groups, group_by=f.group_by, split=split)


def _split(f: FeatureFile, labels, src, val_split, *, stratify, seed) -> dict:
    """The hold-out split of the usable rows ``src``: by group when the file has groups, else by image.

    Returns the record for model.json plus ``train``/``val`` positions into ``src``; class indices in the
    record become class names, and classes the split could not validate are warned about.
    """
    if f.groups is None:  # an image and its mirror stay together: the mirror is appended to training later
        tr, va = train_val_split(labels, val_split, stratify=stratify, seed=seed)
        return {"train": tr, "val": va, "grouped": False, "by": "image"}
    groups = np.asarray(f.groups, dtype=object)[src]
    tr, va, record = grouped_train_val_split(labels, val_split, groups=groups, stratify=stratify, seed=seed,
                                             by=f.group_by)
    names = [f.class_names[c] for c in record["classes_not_validated"]] if stratify else []
    record["classes_not_validated"] = names
    if names and len(va):
        shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
        log.warning("%s: %d of %d classes come from a single %s each (%s): they stay in training, and the "
                    "validation score says nothing about them", f.path, len(names), len(f.class_names), f.group_by,
                    shown)
    elif record["grouped"] and len(va):
        log.info("%s: validation split by %s: %d of %d %ss held out (%.1f%% of the rows)", f.path, f.group_by,
                 record["n_val_groups"], record["n_groups"], f.group_by, 100 * record["val_fraction"])
    return {"train": tr, "val": va, **record}


def make_tf_dataset(path, *, rows=None, flipped: bool = False, pooling: str = "none",
                    batch_size: int = 64, shuffle: bool = False, seed=0,
                    with_targets: bool = True):
    """Stream a feature file as a ``tf.data.Dataset`` of (x, y) batches, for your own model.fit.

    Args:
        path: HDF5 feature file.
        rows: file rows to use (default: all valid rows). Without ``shuffle`` batches follow
            this order.
        flipped: read the mirrored features (and ``targets_flipped`` for regression).
        pooling: "none", "avg" or "max", applied on load.
        batch_size: rows per batch (the last batch may be smaller).
        shuffle: reshuffle every epoch (deterministic given ``seed``). Rows are shuffled within
            windows of 16 batches of sorted rows, and window order is shuffled, so reads stay
            mostly contiguous.
        seed: shuffling seed.
        with_targets: yield (x, y) pairs; False yields x only (for predict).

    x is float32 (batch, *shape); y is int64 class indices or float32 (batch, K) targets.
    Rows are read from disk one batch at a time; the file is never loaded whole.
    """
    import tensorflow as tf  # heavy import: only for users who ask for a tf.data pipeline

    with FeatureFile(path) as f:
        if rows is None:
            rows = np.flatnonzero(f.valid)
        elif shuffle:
            rows = np.sort(np.asarray(rows))  # order is random anyway: keep reads contiguous
        view = f.view(rows, flipped=flipped, pooling=pooling)
        y = _y(f, flipped=flipped)[view.rows] if with_targets else None
    x_spec = tf.TensorSpec((None, *view.shape[1:]), tf.float32)
    if with_targets:
        y_spec = tf.TensorSpec((None, *y.shape[1:]), tf.int64 if y.dtype.kind == "i"
                               else tf.float32)
    epochs = itertools.count()  # each iteration of the dataset calls gen() again: new order

    def gen():
        order = batch_indices(len(view), batch_size, shuffle=shuffle, seed=(seed, next(epochs)))
        for pos in order:
            yield (view[pos], y[pos]) if with_targets else view[pos]

    spec = (x_spec, y_spec) if with_targets else x_spec
    ds = tf.data.Dataset.from_generator(gen, output_signature=spec)
    # A generator's length is unknown to tf.data; declaring it gives Keras a known epoch
    # length (progress bars, no "ran out of data" warning at the end of every epoch).
    n_batches = -(-len(view) // batch_size)
    return ds.apply(tf.data.experimental.assert_cardinality(n_batches)).prefetch(2)

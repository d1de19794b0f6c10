"""Fit a head on a cached feature file and write a model directory: the API behind ``bneck train``.

Notebook use::

    from pipeline.train import train
    meta = train("features.h5", "models/svm", head="svm", pooling="avg", grid={"C": [0.1, 1, 10]})
    meta["metrics"]["accuracy"]
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time

import numpy as np

from pipeline.curves import history_csv, learning_curve_png
from pipeline.data.training import load_training_data
from pipeline.evaluate import MODEL_COMPAT_KEYS, metrics_for
from pipeline.modeldir import check_writable, save_model_dir

log = logging.getLogger("bneck")

#: Provenance copied from the feature file into model.json (what predict/export rebuild from).
PROVENANCE_KEYS = MODEL_COMPAT_KEYS + ("weights_path", "seed", "precision", "store_dtype", "flip",
                                       "format_version", "source_root", "source_kind", "feature_shape",
                                       "runtime", "package_version")


def image_groups(data) -> np.ndarray:
    """One id per training row, shared by an image's original and mirrored rows (for grouped CV)."""
    m = data.n_train_rows
    return np.concatenate([np.arange(m), np.arange(m)]) if data.used_flipped else np.arange(m)


def head_options(head: str, *, groups=None, specialist_base: str = "ridge", target_names=None) -> dict:
    """The ``build`` options of the registered head ``head`` that this run sets (only those it takes)."""
    from pipeline.heads import head_class

    cls, options = head_class(head), {}
    if "specialist_base" in cls.user_options:
        options["specialist_base"] = specialist_base
    if "groups" in cls.user_options and groups:
        from features.keypoints import load_groups

        options.update(groups=load_groups(groups, target_names), groups_file=str(groups))
    return options


def _jsonable(params: dict) -> dict:
    out = {}
    for k, v in params.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, dict):
            out[k] = {str(a): (list(b) if isinstance(b, (list, tuple)) else b) for a, b in v.items()}
        else:
            out[k] = repr(v)
    return out


def train(features, output, *, head: str = "dense", pooling: str = "none", use_flipped=None, val=None,
          val_split: float = 0.2, seed: int = 0, memory_budget="2GiB", params: dict | None = None,
          grid: dict | None = None, cv: int = 3, jobs: int = 1, groups=None, specialist_base: str = "ridge",
          refit: bool = True, overwrite: bool = False) -> dict:
    """Train ``head`` on ``features`` and save it to the model directory ``output``.

    Parameters mirror ``bneck train``: ``pooling`` is applied on load; ``use_flipped`` (None = auto)
    adds the mirrored views as training rows; validation comes from ``val`` (a feature file) or a
    stratified ``val_split`` by source row; ``grid`` (e.g. ``{"C": [0.1, 1]}``) runs a parallel
    cross-validated grid search with ``jobs`` workers; without ``grid`` and without a value for it the
    head searches its own small default grid (linear heads: C). With ``refit`` (default) a head whose
    settings were chosen on a validation split is fitted again, with those settings, on every training
    row (the split's rows and their mirrors too); model.json keeps the validation metrics of the
    selection step. Returns the saved ``model.json`` content.
    """
    check_writable(output, overwrite=overwrite)  # before loading and fitting, not after
    t0 = time.time()
    data = load_training_data(features, pooling=pooling, use_flipped=use_flipped, val=val, val_split=val_split,
                              seed=seed, memory_budget=memory_budget)
    log.info("training %s head on %d rows (%d source images%s), validating on %d; %d invalid rows skipped%s",
             head, len(data.X), data.n_train_rows, " + mirrored" if data.used_flipped else "",
             data.n_val_rows, data.n_invalid_skipped,
             "" if data.in_memory else " (streaming from HDF5: larger than the memory budget)")
    from pipeline.heads import head_class

    options = head_options(head, groups=groups, specialist_base=specialist_base, target_names=data.target_names)
    est = head_class(head).build(data.task, params, seed=seed, jobs=jobs, target_names=data.target_names,
                                 options=options)
    extra: dict = {}
    grid_info = None
    grid = grid or est.default_grid(params)  # a value the user gave is never searched over
    if grid:
        from pipeline.heads import grid_search

        folds, cv_record = data.cv_folds(cv, seed=seed)  # by group (video) when the file has groups
        search = grid_search(est, grid, data.X, data.y, cv=folds or cv, n_jobs=jobs, groups=image_groups(data))
        est = search.best_estimator_
        grid_info = {"best_params": _jsonable(search.best_params_), "best_cv_score": float(search.best_score_),
                     "cv_folds": cv_record or {"grouped": False, "by": "image"}}
        extra["grid_results.csv"] = _grid_csv(search)
        log.info("grid search: best %s (cv score %.4f)", search.best_params_, search.best_score_)
    elif est.uses_validation:
        est.fit(data.X, data.y, validation_data=(data.X_val, data.y_val) if data.X_val is not None else None)
    else:
        est.fit(data.X, data.y)
    meta_core = {"task": data.task, "class_names": data.class_names, "target_names": data.target_names,
                 "target_frame": data.target_frame, "pooling": pooling}
    metrics = metrics_for(est, data.X_val, data.y_val, meta_core) if data.X_val is not None else {}
    refit_info, selected = None, est
    if refit and val is None and data.n_val_rows:
        est, refit_info = _refit_on_every_row(est, features, pooling=pooling, use_flipped=data.used_flipped,
                                              memory_budget=memory_budget)
    fit_seconds = time.time() - t0
    if hasattr(selected, "history_"):  # the selection run's curves: train and validation side by side
        extra["history.csv"] = history_csv(selected.history_)
        png = learning_curve_png(selected.history_)
        if png:
            extra["learning_curve.png"] = png
    meta = {
        "head": head,
        # What the class needs to know before loading (e.g. whether TensorFlow is needed); the groups
        # themselves are recorded by name below.
        "head_options": {k: v for k, v in options.items() if k not in ("groups", "groups_file")},
        "params": _jsonable(est.get_params(deep=False)),
        **meta_core,
        "features": {k: data.attrs[k] for k in PROVENANCE_KEYS if k in data.attrs},
        "training": {"features_file": str(features), "val_file": str(val) if val else None,
                     "val_split": None if val else val_split, "seed": seed, "used_flipped": data.used_flipped,
                     # What stays on one side of the split: an image with its mirror, or a whole group (video).
                     "split": data.split,
                     "n_train_rows": data.n_train_rows, "n_val_rows": data.n_val_rows,
                     "n_training_samples": len(data.X), "n_invalid_skipped": data.n_invalid_skipped,
                     "n_missing_targets_skipped": getattr(data, "n_missing_targets_skipped", 0),
                     "in_memory": data.in_memory, "seconds": round(fit_seconds, 2), "grid": grid_info,
                     # The metrics below are the selection step's, on the split; the saved head was then
                     # refitted on every row (refit.n_training_samples), so it never saw them held out.
                     "refit": refit_info},
        "metrics": metrics,
    }
    meta["training"].update(selected.training_record())
    if hasattr(est, "groups_"):  # keypoint groups by name: what a reader of model.json can check by eye
        meta["groups"] = {g: [data.target_names[i] for i in cols] for g, cols in est.groups_.items()}
    saved = save_model_dir(output, est, meta, extra_files=extra, overwrite=overwrite)
    data.close() if hasattr(data, "close") else None
    return saved


def _refit_on_every_row(est, features, *, pooling, use_flipped, memory_budget):
    """A clone of ``est`` with what it chose on validation, fitted on every usable row of ``features``."""
    from sklearn.base import clone

    chosen = est.selected_for_refit()  # e.g. the dense head's best epoch count
    final = clone(est).set_params(**chosen)
    everything = load_training_data(features, pooling=pooling, use_flipped=use_flipped, val_split=0,
                                    memory_budget=memory_budget)
    try:
        log.info("refitting on every training row: %d rows%s", len(everything.X),
                 f" with {_jsonable(chosen)}" if chosen else "")
        final.fit(everything.X, everything.y)
        # training.* keeps what the selection step chose; refit.* adds what the saved head chose again.
        return final, {"n_training_samples": len(everything.X), "n_train_rows": everything.n_train_rows,
                       "params": _jsonable(chosen), **_jsonable(final.refit_record())}
    finally:
        everything.close()


def _grid_csv(search) -> str:
    res = search.cv_results_
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["params", "mean_test_score", "std_test_score", "rank", "mean_fit_time"])
    for i, p in enumerate(res["params"]):
        w.writerow([json.dumps(_jsonable(p)), res["mean_test_score"][i], res["std_test_score"][i],
                    res["rank_test_score"][i], res["mean_fit_time"][i]])
    return buf.getvalue().encode()

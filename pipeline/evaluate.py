"""Metrics of a head on cached features: accuracy/top-k/per-class/confusion, or RMSE/MAE in pixels.

``bneck evaluate MODEL_DIR FEATURES.h5 --json`` prints one JSON object whose headline figure
(``accuracy`` or ``rmse_px``) is at the top level, for Makefiles and scripts.
"""

from __future__ import annotations

import numpy as np

from pipeline.data.featurefile import FeatureFile, check_compatible
from pipeline.data.keypoint_frame import to_image_pixels
from pipeline.data.training import refuse_unlabelled
from pipeline.modeldir import load_model_dir

#: Feature attrs that must agree between a model and the features it is applied to.
MODEL_COMPAT_KEYS = ("backbone", "layer", "input_size", "preprocessing", "pooling", "weights", "weights_sha256")


def check_top_k(top_k) -> None:
    """Raise ValueError unless ``top_k`` is an integer >= 1."""
    # A slice [:0] would report no class and [:-1] would silently drop the last one.
    if not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")


def classification_metrics(y_true, scores, class_names, *, top_k=5) -> dict:
    """Accuracy, top-k, per-class precision/recall and the confusion matrix from class scores."""
    check_top_k(top_k)
    y_true = np.asarray(y_true, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    n_classes = len(class_names)
    pred = scores.argmax(axis=1)
    order = np.argsort(-scores, axis=1)
    out = {"accuracy": float((pred == y_true).mean()) if len(y_true) else float("nan"), "n": int(len(y_true))}
    for k in sorted({1, min(top_k, n_classes)} | ({5} if n_classes > 5 else set())):
        out[f"top{k}_accuracy"] = float((order[:, :k] == y_true[:, None]).any(axis=1).mean())
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, pred), 1)
    per_class = {}
    for c, name in enumerate(class_names):
        tp, predicted, actual = cm[c, c], cm[:, c].sum(), cm[c, :].sum()
        per_class[str(name)] = {"precision": float(tp / predicted) if predicted else 0.0,
                                "recall": float(tp / actual) if actual else 0.0, "support": int(actual)}
    out["per_class"] = per_class
    out["confusion_matrix"] = cm.tolist()
    out["class_names"] = [str(c) for c in class_names]
    return out


def regression_metrics(y_true, y_pred, target_names) -> dict:
    """RMSE and MAE over present (finite) targets, overall and per target, in the targets' units (pixels)."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    present = np.isfinite(y_true)
    err = np.where(present, y_pred - np.where(present, y_true, 0), 0)
    count = present.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rmse_col = np.sqrt((err ** 2).sum(axis=0) / count)
        mae_col = np.abs(err).sum(axis=0) / count
    total = present.sum()
    out = {
        "rmse_px": float(np.sqrt((err ** 2).sum() / total)) if total else float("nan"),
        "mae_px": float(np.abs(err).sum() / total) if total else float("nan"),
        "n": int(len(y_true)), "n_values": int(total),
        "per_target": {str(nm): {"rmse_px": _f(r), "mae_px": _f(m), "n": int(c)}
                       for nm, r, m, c in zip(target_names, rmse_col, mae_col, count)},
    }
    # Keypoint error as a distance: one figure per point from its _x/_y pair.
    names = [str(n) for n in target_names]
    points = {}
    for i, n in enumerate(names):
        if n.lower().endswith("_x") and (n[:-2] + "_y") in names:
            j = names.index(n[:-2] + "_y")
            both = present[:, i] & present[:, j]
            if both.any():
                d = np.hypot(err[both, i], err[both, j])
                points[n[:-2]] = {"mean_distance_px": float(d.mean()), "n": int(both.sum())}
    if points:
        out["per_keypoint"] = points
    return out


def _f(x) -> float | None:
    return float(x) if np.isfinite(x) else None


def head_scores(head, X, task):
    """Class scores (N, C) for classification heads, predictions (N, K) for regression heads."""
    if task == "classification":
        if hasattr(head, "predict_proba"):
            return np.asarray(head.predict_proba(X))
        return np.asarray(head.decision_function(X))
    return np.asarray(head.predict(X), dtype=np.float64)


def metrics_for(head, X, y, meta, *, top_k=5, sizes=None) -> dict:
    """The task's metrics of ``head`` on (X, y); keypoints compared in each image's pixels (``sizes``, (N, 2))."""
    if meta["task"] == "classification":
        return classification_metrics(y, head_scores(head, X, "classification"), meta["class_names"], top_k=top_k)
    pred = to_image_pixels(meta, head_scores(head, X, "regression"), sizes)
    return regression_metrics(y, pred, meta["target_names"])


def evaluate(model_dir, features, *, top_k: int = 5, trust_pickle: bool = False) -> dict:
    """Evaluate a trained model directory on a feature file; refuses features that don't fit the model.

    Returns a dict with the headline metric (``accuracy`` or ``rmse_px``) at the top level.
    ``trust_pickle`` allows a format-v1 ``head.joblib`` (a pickle: it runs code; see ``load_model_dir``).
    """
    return evaluate_rows(model_dir, features, top_k=top_k, trust_pickle=trust_pickle)[0]


def evaluate_rows(model_dir, features, *, top_k: int = 5, trust_pickle: bool = False):
    """:func:`evaluate` and what it scored: ``(result, meta, rows, outputs)``.

    ``rows`` are the feature file's valid row indices, ``outputs`` the head's class scores (N, C) or
    keypoints in each image's own pixels (N, K), so a report's per-row figures add up to ``result``.
    """
    head, meta = load_model_dir(model_dir, trust_pickle=trust_pickle, scoring=True)
    with FeatureFile(features) as ff:
        refuse_unlabelled(ff, "evaluate against")
        check_compatible(meta["features"], ff.attrs, path=str(features),
                         keys=[k for k in MODEL_COMPAT_KEYS if k in meta["features"]])
        if ff.task != meta["task"]:
            raise ValueError(f"{features}: task {ff.task} but the model is a {meta['task']} model")
        names = ff.class_names if meta["task"] == "classification" else ff.target_names
        expected = meta["class_names"] if meta["task"] == "classification" else meta["target_names"]
        if list(names) != list(expected):
            raise ValueError(f"{features}: {'classes' if meta['task'] == 'classification' else 'targets'} "
                             f"{list(names)[:10]} differ from the model's {list(expected)[:10]}")
        rows = np.flatnonzero(ff.valid)
        y = ff.labels[rows] if meta["task"] == "classification" else ff.targets[rows]
        X = ff.view(rows, pooling=meta["pooling"])
        sizes = ff.image_size[rows]
        # Scored once: the metrics read the same outputs the caller gets back.
        scores = head_scores(head, X, meta["task"])
        result = metrics_for(PassThrough(), scores, y, meta, top_k=top_k, sizes=sizes)
        result["n_invalid_skipped"] = int((~ff.valid).sum())
    head_metric = "accuracy" if meta["task"] == "classification" else "rmse_px"
    result = {head_metric: result.pop(head_metric), "task": meta["task"], "head": meta["head"],
              "model": str(model_dir), "features": str(features), **result}
    return result, meta, rows, to_image_pixels(meta, scores, sizes)


def format_report(result: dict) -> str:
    """Human-readable summary of :func:`evaluate`'s result."""
    lines = [f"{result['head']} head on {result['features']} ({result['n']} rows, "
             f"{result.get('n_invalid_skipped', 0)} invalid skipped)"]
    if result["task"] == "classification":
        tops = ", ".join(f"{k.split('_')[0]} {v:.4f}" for k, v in result.items() if k.startswith("top"))
        lines.append(f"  accuracy {result['accuracy']:.4f}   {tops}")
        lines.append(f"  {'class':20s} {'precision':>9s} {'recall':>7s} {'support':>7s}")
        for name, m in result["per_class"].items():
            lines.append(f"  {name[:20]:20s} {m['precision']:9.3f} {m['recall']:7.3f} {m['support']:7d}")
        lines.append("  confusion matrix (rows: true, columns: predicted):")
        for row in result["confusion_matrix"]:
            lines.append("    " + " ".join(f"{v:4d}" for v in row))
    else:
        lines.append(f"  RMSE {result['rmse_px']:.3f} px   MAE {result['mae_px']:.3f} px   "
                     f"({result['n_values']} values)")
        for name, m in result.get("per_keypoint", {}).items():
            lines.append(f"  {name:28s} mean distance {m['mean_distance_px']:.3f} px  (n={m['n']})")
    return "\n".join(lines)


class PassThrough:
    """A 'head' whose inputs already are its scores (a whole network's outputs), for :func:`metrics_for`."""

    def predict_proba(self, s):
        return s

    def predict(self, s):
        return s

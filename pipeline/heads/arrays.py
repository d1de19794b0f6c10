"""Linear heads as plain arrays: ``head.npz`` (``allow_pickle=False``) plus their parameters in ``head.json``.

A standardised linear classifier is five arrays (the scaler's mean and scale, the coefficients, the
intercepts, the classes). Stored as such it can hold no code at all, loads in well under a millisecond
and, through :class:`LinearScorer`, is scored with numpy alone: ``bneck evaluate`` of a logreg model
then imports neither scikit-learn nor skops (~1 s each per process here, bench/stage2.py (d)).

This module imports numpy only; the heads that write these files (:mod:`pipeline.heads.linear`) rebuild
their scikit-learn estimators from them when a caller wants the estimator itself.
"""

from __future__ import annotations

import json
import os

import numpy as np

from .base import UnsafeHeadFile

ARRAYS_FILE = "head.npz"
PARAMS_FILE = "head.json"
#: The arrays every linear head file holds (the scaler's var_ is kept so a rebuilt scaler is whole).
ARRAYS = ("mean", "scale", "var", "coef", "intercept", "classes", "n_iter")


def write_linear(dirpath, *, params: dict, fitted: dict, arrays: dict) -> None:
    """Write ``head.npz`` (the arrays, no pickle possible) and ``head.json`` (params and scalar state)."""
    missing = [k for k in ARRAYS if k not in arrays]
    if missing:
        raise ValueError(f"linear head arrays lack {', '.join(missing)}")
    classes = np.asarray(arrays["classes"])
    if classes.dtype == object:  # string labels: stored as unicode, never as objects
        classes = classes.astype(str)
    np.savez(os.path.join(dirpath, ARRAYS_FILE), **{**{k: np.asarray(arrays[k]) for k in ARRAYS}, "classes": classes})
    with open(os.path.join(dirpath, PARAMS_FILE), "w", encoding="utf-8") as f:
        json.dump({"params": params, "fitted": fitted}, f, indent=1)


def read_linear(dirpath) -> tuple[dict, dict, dict]:
    """``(params, fitted, arrays)`` as :func:`write_linear` wrote them; refuses object arrays."""
    path = os.path.join(dirpath, ARRAYS_FILE)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as exc:  # "Object arrays cannot be loaded when allow_pickle=False": a pickle inside
        raise UnsafeHeadFile(f"{path}: refusing to load it: {exc}") from None
    except (OSError, EOFError) as exc:
        raise UnsafeHeadFile(f"{path}: not a linear head file ({exc})") from None
    missing = [k for k in ARRAYS if k not in arrays]
    if missing:
        raise UnsafeHeadFile(f"{path}: not a linear head file (no {', '.join(missing)})")
    with open(os.path.join(dirpath, PARAMS_FILE), encoding="utf-8") as f:
        doc = json.load(f)
    return doc["params"], doc["fitted"], arrays


class LinearScorer:
    """A fitted linear head scored with numpy only, computing what its scikit-learn pipeline computes.

    The same operations in the same order as ``StandardScaler.transform`` (in the features' own
    float dtype) and ``LinearClassifierMixin.decision_function``, so labels are identical and scores
    agree to rounding. :meth:`predict_proba` is both heads' rule: a sigmoid for two classes, else the
    softmax of the decision function (LogisticRegression's probabilities; the SVM's uncalibrated scores).
    """

    def __init__(self, arrays: dict, head: str):
        self.mean_, self.scale_ = arrays["mean"], arrays["scale"]
        self.coef_, self.intercept_, self.classes_ = arrays["coef"], arrays["intercept"], arrays["classes"]
        self.n_features_in_ = int(self.coef_.shape[1])
        self.head = head

    @classmethod
    def from_dir(cls, dirpath, head: str) -> LinearScorer:
        return cls(read_linear(dirpath)[2], head)

    def _rows(self, X) -> np.ndarray:
        a = np.asarray(X[:] if not isinstance(X, np.ndarray) and hasattr(X, "shape") else X)
        a = a.reshape(len(a), -1)
        if a.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {a.shape[1]} features, but the {self.head} head is expecting "
                             f"{self.n_features_in_} features as input")
        if a.dtype not in (np.float32, np.float64):
            a = a.astype(np.float64)
        return np.array(a, copy=True)

    def decision_function(self, X) -> np.ndarray:
        x = self._rows(X)
        x -= self.mean_
        x /= self.scale_
        scores = x @ self.coef_.T + self.intercept_
        return scores.reshape(-1) if scores.shape[1] == 1 else scores

    def predict(self, X) -> np.ndarray:
        d = self.decision_function(X)
        return self.classes_[(d > 0).astype(int) if d.ndim == 1 else d.argmax(axis=1)]

    def predict_proba(self, X) -> np.ndarray:
        return decision_to_proba(self.decision_function(X))


def decision_to_proba(d: np.ndarray) -> np.ndarray:
    """Class scores from a linear decision function: ``[1 - sigmoid(d), sigmoid(d)]`` for two classes
    (equal to ``softmax([0, d])``), else the row-wise softmax, shifted by the row max so large margins
    don't overflow."""
    if d.ndim == 1:
        p = 1.0 / (1.0 + np.exp(-d))
        return np.column_stack([1.0 - p, p])
    z = d - d.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)

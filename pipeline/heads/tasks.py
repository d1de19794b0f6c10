"""The tasks heads learn, how to tell them from the targets, and the regression score of every head.

Kept free of Keras so the head's estimator tags (classifier or regressor) are known without TensorFlow.
"""

import numpy as np

__all__ = ["TASKS", "CLASSIFICATION", "infer_task", "neg_rmse"]

TASKS = ("multiclass", "binary", "multilabel", "regression")
CLASSIFICATION = ("multiclass", "binary", "multilabel")


def infer_task(y):
    """Guess the task from targets: float 2-D -> regression, 2-D 0/1 -> multilabel, else by class count."""
    y = np.asarray(y)
    if y.dtype.kind == "f" and (y.ndim == 2 or np.isnan(y).any() or np.any(np.mod(y, 1))):
        return "regression"
    if y.ndim == 2:
        if np.isin(y, (0, 1)).all():
            return "multilabel"
        raise ValueError("2-D integer targets must be 0/1 (multi-label); use float for regression")
    n = len(np.unique(y))
    if n < 2:
        raise ValueError("y has a single class; a classifier needs at least two")
    return "binary" if n == 2 else "multiclass"


def neg_rmse(Y, P):
    """Negative root-mean-squared error over the finite entries of `Y`."""
    Y = np.asarray(Y, dtype=float).reshape(len(P), -1)
    mask = np.isfinite(Y)
    if not mask.any():
        raise ValueError("no finite targets to score against")
    return -float(np.sqrt(np.mean((np.asarray(P).reshape(Y.shape)[mask] - Y[mask]) ** 2)))

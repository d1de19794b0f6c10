"""Per-keypoint-group "specialist" regressors on bottleneck features.

Follows the specialists idea of Daniel Nouri's Kaggle facial-keypoints write-up:
the training set has many rows with only some keypoints labelled (in the Kaggle
data ~70% of the rows have only the four "easy" points).  One model over all
30 targets must either drop those rows or learn from a masked loss; instead each
group of related keypoints gets its own regressor, trained on every row in which
*that group's* keypoints are present, so no labelled row is wasted.
"""

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from .linear import as_2d, single_blas

__all__ = ["SpecialistsHead", "default_groups", "KAGGLE_GROUPS", "neg_rmse"]

#: The six groups of the write-up, by keypoint name (each has an _x and _y column).
KAGGLE_GROUPS = {
    "eye_centers": ("left_eye_center", "right_eye_center"),
    "nose_tip": ("nose_tip",),
    "mouth_corners_top_lip": ("mouth_left_corner", "mouth_right_corner", "mouth_center_top_lip"),
    "bottom_lip": ("mouth_center_bottom_lip",),
    "eye_corners": ("left_eye_inner_corner", "left_eye_outer_corner",
                    "right_eye_inner_corner", "right_eye_outer_corner"),
    "eyebrows": ("left_eyebrow_inner_end", "left_eyebrow_outer_end",
                 "right_eyebrow_inner_end", "right_eyebrow_outer_end"),
}


def default_groups(target_names):
    """Map target column names to the six Kaggle groups (dict name -> column indices)."""
    names = list(target_names)
    index = {n: i for i, n in enumerate(names)}
    groups, used = {}, set()
    for group, points in KAGGLE_GROUPS.items():
        cols = sorted(index[p + s] for p in points for s in ("_x", "_y") if p + s in index)
        if cols:  # groups with none of their columns present are dropped
            groups[group] = cols
            used.update(cols)
    # Anything else (a non-Kaggle keypoint set) must still be predicted: keep an
    # x/y pair together as one group named after the point, never split it.
    for i, n in enumerate(names):
        if i in used:
            continue
        base = n[:-2] if n.endswith(("_x", "_y")) else n
        if base in KAGGLE_GROUPS:  # don't merge into a Kaggle group by name clash
            base = n
        groups.setdefault(base, []).append(i)
    return groups


@single_blas
def _fit_group(est, X, Y, rows, cols):
    """Fit one specialist on its own rows/columns (module-level so joblib can pickle it)."""
    y = Y[np.ix_(rows, cols)]
    # Single-target groups get a 1-D y so regressors that reject 2-D y (SVR,
    # gradient boosting, ...) work as `base` without a MultiOutputRegressor.
    return est.fit(X[rows], y[:, 0] if len(cols) == 1 else y)


def neg_rmse(Y, P):
    """Negative root-mean-squared error over the finite entries of `Y`."""
    Y = np.asarray(Y, dtype=float).reshape(len(P), -1)
    mask = np.isfinite(Y)
    if not mask.any():
        raise ValueError("no finite targets to score against")
    return -float(np.sqrt(np.mean((np.asarray(P).reshape(Y.shape)[mask] - Y[mask]) ** 2)))


class SpecialistsHead(RegressorMixin, BaseEstimator):
    """One regressor per group of target columns, each trained on the rows where its group is present.

    Parameters
    ----------
    base : sklearn regressor or None, default None
        Unfitted template, cloned once per group.  None means
        ``make_pipeline(StandardScaler(), Ridge(alpha=10.0))``.  It receives
        2-D X (samples flattened) and, for groups of two or more columns, a 2-D
        y -- wrap single-output models in ``MultiOutputRegressor``.
    groups : dict of str -> list of int
        Group name -> target column indices.  Required; build it from the
        column names with :func:`default_groups`.  Groups must not overlap.
    n_jobs : int, default 1
        Groups are fitted in parallel with ``joblib.Parallel(n_jobs)``.

    Attributes
    ----------
    estimators_ : dict of str -> fitted estimator
    groups_ : dict of str -> list of int
    n_rows_used_ : dict of str -> int
        Rows a specialist was trained on: those where *all of its own* columns
        are finite; other columns may be missing.
    n_targets_ : int
        K, the width of the full target vector.

    Notes
    -----
    Horizontal-flip augmentation is the caller's job: append the flipped
    feature rows together with targets whose x were mirrored and whose
    left/right columns were swapped, then fit on the enlarged set.
    :meth:`predict` returns the full (N, K) keypoint vector; :meth:`score` is
    the negative RMSE over finite targets (higher is better, as GridSearchCV wants).
    """

    def __init__(self, base=None, groups=None, n_jobs=1):
        self.base = base
        self.groups = groups
        self.n_jobs = n_jobs

    def _check_groups(self, n_targets):
        """Validate `groups` against K columns and return it as dict name -> list[int]."""
        if self.groups is None:
            raise ValueError("SpecialistsHead needs groups= (dict name -> target column "
                             "indices); build one with default_groups(target_names)")
        if not isinstance(self.groups, dict) or not self.groups:
            raise ValueError(f"groups must be a non-empty dict, got {type(self.groups).__name__}")
        groups, seen = {}, {}
        for name, cols in self.groups.items():
            cols = [int(c) for c in np.atleast_1d(cols)]
            if not cols or not all(0 <= c < n_targets for c in cols):
                raise ValueError(f"group {name!r}: columns {cols} must be a non-empty "
                                 f"subset of 0..{n_targets - 1}")
            for c in cols:
                if c in seen:
                    raise ValueError(f"column {c} is in both group {seen[c]!r} and {name!r}")
                seen[c] = name
            groups[str(name)] = cols
        return groups

    @single_blas
    def fit(self, X, Y):
        """Fit one clone of `base` per group on the rows where that group's targets are all present."""
        X2 = as_2d(X)
        Y = np.asarray(Y, dtype=float)
        Y = Y.reshape(len(Y), -1)
        if len(X2) != len(Y):
            raise ValueError(f"X has {len(X2)} rows but Y has {len(Y)}")
        groups = self._check_groups(Y.shape[1])
        rows = {g: np.flatnonzero(np.isfinite(Y[:, cols]).all(axis=1)) for g, cols in groups.items()}
        for g, r in rows.items():  # fail before spending time on the other groups
            if len(r) < 2:
                raise ValueError(f"group {g!r} (columns {groups[g]}) has only {len(r)} row(s) "
                                 "with all its targets present; need at least 2")
        base = self.base if self.base is not None else make_pipeline(StandardScaler(), Ridge(alpha=10.0))
        # X2 is passed whole (joblib memory-maps large arrays once for all
        # workers) and each worker slices its own rows.
        fitted = Parallel(n_jobs=self.n_jobs)(
            delayed(_fit_group)(clone(base), X2, Y, rows[g], cols) for g, cols in groups.items())
        self.estimators_ = dict(zip(groups, fitted))
        self.groups_ = groups
        self.n_rows_used_ = {g: int(len(r)) for g, r in rows.items()}
        self.n_targets_ = Y.shape[1]
        self.n_features_in_ = X2.shape[1]
        return self

    @single_blas
    def predict(self, X):
        """Predict every group and merge into the full (N, K) target vector (NaN for ungrouped columns)."""
        check_is_fitted(self, "estimators_")
        X2 = as_2d(X)
        out = np.full((len(X2), self.n_targets_), np.nan)
        for g, est in self.estimators_.items():
            out[:, self.groups_[g]] = np.asarray(est.predict(X2)).reshape(len(X2), -1)
        return out

    def score(self, X, y, sample_weight=None):
        """Negative RMSE over the finite entries of `y` (sample_weight is not supported)."""
        if sample_weight is not None:
            raise ValueError("SpecialistsHead.score does not support sample_weight")
        return neg_rmse(y, self.predict(X))

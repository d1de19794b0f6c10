"""Per-keypoint-group "specialist" regressors on bottleneck features.

Follows the specialists idea of Daniel Nouri's Kaggle facial-keypoints write-up:
the training set has many rows with only some keypoints labelled (in the Kaggle
data ~70% of the rows have only the four "easy" points).  One model over all
30 targets must either drop those rows or learn from a masked loss; instead each
group of related keypoints gets its own regressor, trained on every row in which
*that group's* keypoints are present, so no labelled row is wasted.
"""

import copy
import json
import os
import re

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, MultiOutputMixin, RegressorMixin, clone
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from .base import Head, UnsafeHeadFile, dense_on_features, type_name
from .dense import DenseHead
from .linear import check_features, single_blas
from .tasks import neg_rmse

__all__ = ["SpecialistsHead", "default_groups", "KAGGLE_GROUPS", "DEFAULT_ALPHAS", "linear_regressor_weights",
           "SUBHEADS_FILE"]

#: Written beside ``head.skops`` when specialists are dense heads: group -> the folder holding its head.keras.
SUBHEADS_FILE = "specialists.json"
_SUBHEAD_DIR = re.compile(r"specialists/[0-9]{1,6}")

#: Ridge alphas searched per group by RidgeCV's efficient leave-one-out (GCV) when no alpha is given.
#: Standardised bottleneck features are wide (VGG16 block4_pool at 96 px: 18,432 columns), so useful
#: alphas reach far above 1; weak features (seeded random weights) chose the old grid's floor of 0.1
#: for every group in bench/quality.py, so the grid spans 1e-3 .. 1e6 in half decades.
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-3, 6, 19))

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


def linear_regressor_weights(est):
    """(W, b) with ``X @ W + b == est.predict(X)`` for ``[StandardScaler ...] -> linear regressor``, else None."""
    from sklearn.base import is_regressor
    from sklearn.linear_model._base import LinearModel  # predict == X @ coef_.T + intercept_

    steps = [s for _, s in est.steps if s not in (None, "passthrough")] if isinstance(est, Pipeline) else [est]
    *scalers, last = steps
    # LinearModel excludes GLMs (Poisson...: a link function) and RANSAC-style wrappers.
    if not (isinstance(last, LinearModel) and is_regressor(last)
            and all(isinstance(s, StandardScaler) for s in scalers)):
        return None
    W = np.atleast_2d(last.coef_).T.astype(np.float64)  # (F, k); a 1-D y gave coef_ (F,)
    b = np.broadcast_to(np.asarray(last.intercept_, np.float64), (W.shape[1],)).copy()
    for s in reversed(scalers):  # ((x - m) / s) @ W + b == x @ (W / s) + (b - (m / s) @ W)
        scale = s.scale_ if s.scale_ is not None else np.ones(W.shape[0])
        mean = s.mean_ if s.with_mean else np.zeros(W.shape[0])
        b, W = b - (mean / scale) @ W, W / scale[:, None]
    return W, b


def _chosen_alpha(est):
    """The ridge alpha a fitted specialist uses (RidgeCV's choice or Ridge's given value), else None."""
    last = est.steps[-1][1] if isinstance(est, Pipeline) else est
    alpha = getattr(last, "alpha_", getattr(last, "alpha", None))
    return float(alpha) if isinstance(alpha, (int, float, np.floating)) else None


class SpecialistsHead(Head, MultiOutputMixin, RegressorMixin, BaseEstimator):
    """One regressor per group of target columns, each trained on the rows where its group is present.

    Parameters
    ----------
    base : sklearn regressor or None, default None
        Unfitted template, cloned once per group.  None means ``StandardScaler -> RidgeCV``
        over `alphas` (each group picks its own alpha by efficient leave-one-out), or
        ``StandardScaler -> Ridge(alpha)`` when `alpha` is given.  It receives 2-D X
        (samples flattened) and, for groups of two or more columns, a 2-D y -- wrap
        single-output models in ``MultiOutputRegressor``.
    groups : dict of str -> list of int, or None
        Group name -> target column indices; groups must not overlap.  Build it from the
        column names with :func:`default_groups`.  None means one group per target column.
    n_jobs : int, default 1
        Groups are fitted in parallel with ``joblib.Parallel(n_jobs)``.
    alpha : float or None, default None
        A fixed ridge alpha for every group (only with ``base=None``).
    alphas : sequence of float or None, default None
        The alphas RidgeCV chooses from when `alpha` and `base` are None; None means
        :data:`DEFAULT_ALPHAS`.

    Attributes
    ----------
    estimators_ : dict of str -> fitted estimator
    groups_ : dict of str -> list of int
    n_rows_used_ : dict of str -> int
        Rows a specialist was trained on: those where *all of its own* columns
        are finite; other columns may be missing.
    alphas_ : dict of str -> float or None
        The ridge alpha each group uses (chosen by CV, or the given one); None for other bases.
    n_targets_ : int
        K, the width of the full target vector.
    n_features_in_ : int

    Notes
    -----
    Horizontal-flip augmentation is the caller's job: append the flipped
    feature rows together with targets whose x were mirrored and whose
    left/right columns were swapped, then fit on the enlarged set.
    :meth:`predict` returns the full (N, K) keypoint vector ((N,) after a 1-D y);
    :meth:`score` is the negative RMSE over finite targets (higher is better, as
    GridSearchCV wants).
    """

    name = "specialists"
    tasks = ("regression",)
    user_params = ("alpha",)
    user_options = ("groups", "specialist_base")
    #: What its head.skops may hold: the ridge specialists' pipelines, and an unfitted dense ``base`` (its params).
    trusted_types = tuple(type_name(c) for c in (Pipeline, StandardScaler, Ridge, RidgeCV, DenseHead))

    def __init__(self, base=None, groups=None, n_jobs=1, alpha=None, alphas=None):
        self.base = base
        self.groups = groups
        self.n_jobs = n_jobs
        self.alpha = alpha
        self.alphas = alphas

    def __setstate__(self, state):
        # Heads pickled before alpha/alphas existed carry their Ridge in `base`; they load unchanged.
        state.setdefault("alpha", None)
        state.setdefault("alphas", None)
        super().__setstate__(state)

    # -- the command line and the registry ------------------------------------------------------
    @classmethod
    def applicable_params(cls, options=None) -> tuple[str, ...]:
        """``alpha`` for ridge specialists; the dense head's parameters with ``specialist_base="dense"``."""
        if (options or {}).get("specialist_base", "ridge") == "dense":
            from .dense import DenseHead

            return DenseHead.user_params
        return cls.user_params

    @classmethod
    def needs_tensorflow(cls, options=None) -> bool:
        return (options or {}).get("specialist_base", "ridge") == "dense"

    @classmethod
    def loads_tensorflow(cls, meta: dict) -> bool:
        # Directories from before head_options: train records the dense base's repr in params.
        base = (meta.get("params") or {}).get("base")
        return super().loads_tensorflow(meta) or (isinstance(base, str) and base.startswith("DenseHead("))

    @classmethod
    def build(cls, task, params=None, *, seed=0, jobs=1, target_names=None, options=None):
        """Specialists over ``options["groups"]`` (default: :func:`default_groups` of the target names).

        ``options["specialist_base"]`` is "ridge" (default) or "dense"; ``options["groups_file"]``
        names where the groups came from in errors.
        """
        cls.check_task(task)
        options, params = dict(options or {}), dict(params or {})
        cls.check_params(params, options)
        groups = options.get("groups") or default_groups(target_names)
        covered = {c for cols in groups.values() for c in cols}
        missing = [n for i, n in enumerate(target_names) if i not in covered]
        if missing:  # they would be predicted as NaN, and every RMSE with them
            shown = ", ".join(missing[:6]) + (f", ... ({len(missing)} in all)" if len(missing) > 6 else "")
            raise ValueError(f"{options.get('groups_file', 'groups')}: no group predicts target column(s) {shown}; "
                             "add them to a group, or extract only the targets you want with --target-columns")
        base_name = options.get("specialist_base", "ridge")
        if base_name == "dense":
            from .dense import DenseHead

            return cls(base=DenseHead.build("regression", params, seed=seed), groups=groups, n_jobs=jobs)
        if base_name != "ridge":
            raise ValueError(f"--specialist-base must be ridge or dense, got {base_name!r}")
        return cls(groups=groups, n_jobs=jobs, alpha=params.get("alpha"))

    # -- fitting ----------------------------------------------------------------------------------
    def _check_groups(self, n_targets):
        """Validate `groups` against K columns and return it as dict name -> list[int]."""
        if self.groups is None:
            return {str(c): [c] for c in range(n_targets)}
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

    def _base(self):
        """The unfitted template cloned per group (see the `base`, `alpha` and `alphas` parameters)."""
        if self.base is not None:
            if self.alpha is not None:
                raise ValueError("alpha applies to the default ridge specialists only; set it in `base` instead")
            return self.base
        if self.alpha is not None:
            return make_pipeline(StandardScaler(), Ridge(alpha=float(self.alpha)))
        return make_pipeline(StandardScaler(), RidgeCV(alphas=DEFAULT_ALPHAS if self.alphas is None else self.alphas))

    @single_blas
    def fit(self, X, Y):
        """Fit one clone of `base` per group on the rows where that group's targets are all present."""
        if Y is None:
            raise ValueError("SpecialistsHead requires y to be passed, but the target y is None")
        X2 = check_features(self, X, reset=True)  # y is checked here: NaN targets mean "missing"
        Y = np.asarray(Y, dtype=float)
        y_ndim = Y.ndim
        Y = Y.reshape(len(Y), -1)
        if len(X2) != len(Y):
            raise ValueError(f"X has {len(X2)} rows but Y has {len(Y)}")
        groups = self._check_groups(Y.shape[1])
        rows = {g: np.flatnonzero(np.isfinite(Y[:, cols]).all(axis=1)) for g, cols in groups.items()}
        for g, r in rows.items():  # fail before spending time on the other groups
            if len(r) < 2:
                raise ValueError(f"group {g!r} (columns {groups[g]}) has {len(r)} sample(s) "
                                 "with all its targets present; need at least 2")
        base = self._base()
        # X2 is passed whole (joblib memory-maps large arrays once for all
        # workers) and each worker slices its own rows.
        fitted = Parallel(n_jobs=self.n_jobs)(
            delayed(_fit_group)(clone(base), X2, Y, rows[g], cols) for g, cols in groups.items())
        self.estimators_ = dict(zip(groups, fitted))
        self.groups_ = groups
        self.n_rows_used_ = {g: int(len(r)) for g, r in rows.items()}
        self.alphas_ = {g: _chosen_alpha(est) for g, est in self.estimators_.items()}
        self.n_targets_ = Y.shape[1]
        self.y_ndim_ = y_ndim
        return self

    @single_blas
    def predict(self, X):
        """Predict every group and merge into the full (N, K) target vector (NaN for ungrouped columns)."""
        check_is_fitted(self, "estimators_")
        X2 = check_features(self, X, reset=False)
        out = np.full((len(X2), self.n_targets_), np.nan)
        for g, est in self.estimators_.items():
            out[:, self.groups_[g]] = np.asarray(est.predict(X2)).reshape(len(X2), -1)
        return out[:, 0] if getattr(self, "y_ndim_", 2) == 1 else out

    def score(self, X, y, sample_weight=None):
        """Negative RMSE over the finite entries of `y` (sample_weight is not supported)."""
        if sample_weight is not None:
            raise ValueError("SpecialistsHead.score does not support sample_weight")
        return neg_rmse(y, self.predict(X))

    # -- the model directory and export ------------------------------------------------------------
    def save(self, dirpath) -> None:
        """``head.skops``; dense specialists (Keras networks) each save themselves into ``specialists/<i>/``.

        Their groups hold None in ``head.skops`` and :data:`SUBHEADS_FILE` maps each group to its folder.
        """
        dense = {g: est for g, est in getattr(self, "estimators_", {}).items() if isinstance(est, DenseHead)}
        if not dense:
            return super().save(dirpath)
        shell = copy.copy(self)
        shell.estimators_ = {g: None if g in dense else est for g, est in self.estimators_.items()}
        Head.save(shell, dirpath)
        folders = {g: f"specialists/{i}" for i, g in enumerate(dense)}
        for g, est in dense.items():
            est.save(os.path.join(dirpath, *folders[g].split("/")))
        with open(os.path.join(dirpath, SUBHEADS_FILE), "w", encoding="utf-8") as fh:
            json.dump({"dense": folders}, fh, indent=1)

    @classmethod
    def _folders(cls, dirpath) -> dict:
        """group -> folder of a dense specialist, from :data:`SUBHEADS_FILE` (absent: none), each name checked."""
        path = os.path.join(dirpath, SUBHEADS_FILE)
        if not os.path.isfile(path):
            return {}
        try:
            with open(path, encoding="utf-8") as fh:
                folders = json.load(fh).get("dense")
        except (ValueError, AttributeError, UnicodeDecodeError, RecursionError):
            folders = None
        if not isinstance(folders, dict) or not all(isinstance(f, str) and _SUBHEAD_DIR.fullmatch(f)
                                                    for f in folders.values()):
            raise UnsafeHeadFile(f"{path}: malformed (expected {{\"dense\": {{group: \"specialists/<i>\"}}}})")
        return folders

    @classmethod
    def files_to_read(cls, dirpath) -> tuple[str, ...]:
        """``head.skops``, and with dense specialists :data:`SUBHEADS_FILE` and each one's head.keras + head.json."""
        folders = cls._folders(dirpath)
        extra = [f"{f}/{n}" for f in folders.values() for n in DenseHead.saved_files]
        return (*cls.saved_files, *([SUBHEADS_FILE] if folders else []), *extra)

    @classmethod
    def load(cls, dirpath):
        """Read ``head.skops`` (types checked), then each dense specialist with :meth:`DenseHead.load`."""
        head = super().load(dirpath)
        for g, folder in cls._folders(dirpath).items():
            if head.estimators_.get(g, 0) is not None:
                raise UnsafeHeadFile(f"{os.path.join(dirpath, SUBHEADS_FILE)}: group {g!r} is not a dense specialist")
            head.estimators_[g] = DenseHead.load(os.path.join(dirpath, *folder.split("/")))
        missing = [g for g, est in head.estimators_.items() if est is None]
        if missing:
            raise UnsafeHeadFile(f"{dirpath}: no saved network for specialist group(s) {', '.join(missing)}")
        return head

    def training_record(self) -> dict:
        return {"rows_used_per_group": {g: int(n) for g, n in self.n_rows_used_.items()},
                "alpha_per_group": dict(getattr(self, "alphas_", {}))}

    def refit_record(self) -> dict:
        return self.training_record()  # RidgeCV chooses each group's alpha again on every row

    def keras_output(self, x, task: str):
        """One frozen linear Dense layer holding every group's columns (linear specialists only)."""
        # Columns in no group are NaN in predict; a NaN bias reproduces that.
        W, b = np.zeros((self.n_features_in_, self.n_targets_)), np.full(self.n_targets_, np.nan)
        for g, est in self.estimators_.items():
            wb = linear_regressor_weights(est)
            if wb is None:
                raise ValueError(f"cannot export specialist {g!r} ({type(est).__name__}): only linear scikit-learn "
                                 "heads convert to a Dense layer (StandardScaler -> Ridge/LinearRegression...)")
            W[:, self.groups_[g]], b[self.groups_[g]] = wb
        return dense_on_features(x, W, b)

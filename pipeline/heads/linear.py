"""Linear stage-two heads (SVM, logistic regression) and grid-search helpers.

These heads are meant for *pooled* bottleneck features: the whole feature matrix
is loaded into memory (a lazy HDF5 view is read in contiguous chunks) and
flattened to 2-D.  Both are scikit-learn Pipelines ``StandardScaler -> model``;
:meth:`_LinearHead.linear_weights` folds the scaler back into one affine map so
a fitted head can be turned into a Keras ``Dense`` layer on top of a backbone.
"""

import functools
import os
import re

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import ThreadpoolController

from .arrays import ARRAYS_FILE, PARAMS_FILE, decision_to_proba, read_linear, write_linear
from .base import SKOPS_FILE, Head, dense_on_features, type_name

__all__ = ["SVMHead", "LogRegHead", "grid_search", "parse_grid", "as_array", "as_2d", "check_features", "BLAS_THREADS",
           "DEFAULT_C"]

#: C values cross-validated when the user gives neither ``--C`` nor ``--grid``. Bottleneck features are
#: wide, so the best C is often well below 1; three decades cost 3 x cv + 1 fits of a linear model.
DEFAULT_C = (0.01, 0.1, 1.0)

#: BLAS threads while a head fits/predicts.  The multi-threaded OpenBLAS shipped
#: with numpy/scipy spends more time synchronising than computing on these
#: problem sizes (measured on 2 cores: LogisticRegression 5000x512 7x slower,
#: sklearn digits 75x slower with 2 threads than with 1).  Parallelism comes from
#: n_jobs (joblib processes) instead.  None leaves the BLAS default alone.
BLAS_THREADS = 1


@functools.lru_cache(maxsize=1)
def _blas_controller():
    # Finding the loaded BLAS libraries walks every shared object in the process: ~4 ms once scipy
    # and scikit-learn are loaded, paid on each fit/predict call (21 in a default C search) by a fresh
    # threadpool_limits. The libraries are all loaded by the time a head runs, so one lookup serves.
    return ThreadpoolController()


def single_blas(method):
    """Decorator: run `method` with BLAS limited to :data:`BLAS_THREADS` threads."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with _blas_controller().limit(limits=BLAS_THREADS, user_api="blas"):
            return method(*args, **kwargs)

    return wrapper


def as_array(X, chunk_rows=4096):
    """Load `X` (ndarray, array-like or lazy feature view) into memory with shape (N, ...)."""
    if isinstance(X, np.ndarray) or hasattr(X, "__array__") or not (hasattr(X, "shape") and hasattr(X, "__getitem__")):
        return np.asarray(X)
    # Lazy views take sorted int index arrays; contiguous chunks keep each HDF5
    # read a simple hyperslab and bound the temporary memory of one read.
    n = len(X)
    parts = [np.asarray(X[np.arange(s, min(s + chunk_rows, n))]) for s in range(0, n, chunk_rows)]
    return np.concatenate(parts) if parts else np.empty(tuple(X.shape), np.float32)


def as_2d(X):
    """Load `X` fully and flatten every sample: shape (N, prod(feature_shape))."""
    a = as_array(X)
    return a.reshape(len(a), -1)


def check_features(est, X, y="no_validation", *, reset):
    """`X` loaded and flattened to (N, F), checked the scikit-learn way (plus `y` when given): ``validate_data``.

    ``reset=True`` (fit) records ``n_features_in_``; ``reset=False`` (predict) refuses another width.
    Sparse, 1-D, non-numeric, NaN or infinite features raise a ValueError/TypeError saying so.
    """
    from scipy import sparse
    from sklearn.utils.validation import validate_data

    if sparse.issparse(X):  # sklearn's own message: "Sparse data was passed ..., but dense data is required"
        validate_data(est, X, accept_sparse=False, reset=reset)
    if y is None:
        raise ValueError(f"{type(est).__name__} requires y to be passed, but the target y is None")
    a = as_array(X)
    if a.ndim < 2:
        raise ValueError(f"Expected 2D array, got {a.ndim}D array instead: features are rows of shape (N, F...); "
                         "Reshape your data with X.reshape(1, -1) for a single sample")
    return validate_data(est, a.reshape(len(a), -1), y, reset=reset)


class _LinearHead(Head, ClassifierMixin, BaseEstimator):
    """Shared fit/predict plumbing for the Pipeline-based heads."""

    tasks = ("classification",)
    #: A linear model is saved as plain arrays (head.npz + head.json: no code, loads in microseconds,
    #: scored by numpy alone); an rbf SVC, whose state is libsvm's, as skops.
    head_loader = "arrays"
    saved_files = (ARRAYS_FILE, PARAMS_FILE)
    #: What its head.skops may hold (beside containers and arrays): the Pipeline and its two steps.
    trusted_types = tuple(type_name(c) for c in (Pipeline, StandardScaler, LinearSVC, SVC, LogisticRegression))

    # -- the model directory: arrays for linear models, skops otherwise ----------------------------
    def _is_linear(self) -> bool:
        return getattr(self, "kernel", "linear") == "linear"

    def saved_loader(self) -> str:
        return "arrays" if self._is_linear() else "skops"

    @classmethod
    def reads(cls, head_loader: str) -> bool:
        return head_loader in ("arrays", "skops")

    @classmethod
    def files_to_read(cls, dirpath) -> tuple[str, ...]:
        return cls.saved_files if os.path.exists(os.path.join(dirpath, ARRAYS_FILE)) else (SKOPS_FILE,)

    def save(self, dirpath) -> None:
        """``head.npz`` + ``head.json`` for a linear model (no pickle can hide in them), else ``head.skops``."""
        if not self._is_linear():
            return super().save(dirpath)
        check_is_fitted(self, "pipeline_")
        scaler, clf = self.pipeline_.named_steps["scale"], self.pipeline_.named_steps["clf"]
        write_linear(dirpath, params=self.get_params(), fitted={"n_samples_seen": int(scaler.n_samples_seen_)},
                     arrays={"mean": scaler.mean_, "scale": scaler.scale_, "var": scaler.var_, "coef": clf.coef_,
                             "intercept": clf.intercept_, "classes": clf.classes_,
                             "n_iter": np.asarray(clf.n_iter_)})

    @classmethod
    def load(cls, dirpath):
        """The fitted head rebuilt from its arrays (or read from its checked skops file)."""
        if not os.path.exists(os.path.join(dirpath, ARRAYS_FILE)):
            return super().load(dirpath)
        params, fitted, a = read_linear(dirpath)
        head = cls(**params)
        scaler = StandardScaler()
        scaler.mean_, scaler.scale_, scaler.var_ = a["mean"], a["scale"], a["var"]
        scaler.n_samples_seen_, scaler.n_features_in_ = fitted["n_samples_seen"], len(a["mean"])
        clf = head._make_model()
        clf.coef_, clf.intercept_, clf.classes_ = a["coef"], a["intercept"], a["classes"]
        clf.n_iter_, clf.n_features_in_ = a["n_iter"] if a["n_iter"].ndim else a["n_iter"].item(), a["coef"].shape[1]
        head.pipeline_ = Pipeline([("scale", scaler), ("clf", clf)])
        head.classes_, head.n_iter_, head.n_features_in_ = clf.classes_, clf.n_iter_, clf.n_features_in_
        return head

    def _make_model(self):  # pragma: no cover - overridden
        raise NotImplementedError

    @single_blas
    def fit(self, X, y):
        """Scale features and fit the linear model on 2-D `X` and class labels `y`."""
        X2, y = check_features(self, X, y, reset=True)
        self.pipeline_ = Pipeline([("scale", StandardScaler()), ("clf", self._make_model())])
        self.pipeline_.fit(X2, y)
        self.classes_ = self.pipeline_.classes_
        self.n_iter_ = self.pipeline_.named_steps["clf"].n_iter_
        return self

    @single_blas
    def predict(self, X):
        """Predicted class labels, shape (N,)."""
        check_is_fitted(self, "pipeline_")
        return self.pipeline_.predict(check_features(self, X, reset=False))

    @single_blas
    def decision_function(self, X):
        """Raw margins: (N,) for two classes, (N, n_classes) otherwise."""
        check_is_fitted(self, "pipeline_")
        return self.pipeline_.decision_function(check_features(self, X, reset=False))

    def linear_weights(self):
        """Return (W, b), W (n_features, n_outputs), with ``X2d @ W + b == decision_function(X)``."""
        check_is_fitted(self, "pipeline_")
        if getattr(self, "kernel", "linear") != "linear":
            raise ValueError(
                f"only linear heads convert to a Dense layer; this SVMHead uses kernel={self.kernel!r}"
            )
        scaler = self.pipeline_.named_steps["scale"]
        clf = self.pipeline_.named_steps["clf"]
        coef = np.atleast_2d(clf.coef_)  # (n_outputs, n_features); binary -> 1 output
        intercept = np.atleast_1d(clf.intercept_)
        # decision = ((x - mean) / scale) @ coef.T + intercept
        #          = x @ (coef.T / scale) + (intercept - (mean / scale) @ coef.T)
        W = coef.T / scaler.scale_[:, None]
        b = intercept - (scaler.mean_ / scaler.scale_) @ coef.T
        return W, b

    def default_grid(self, params=None) -> dict:
        """``{"C": DEFAULT_C}`` unless the user chose C (a value the user gives is always respected).

        Only for linear models: an rbf SVC costs far more per fit and has gamma to tune as well.
        """
        if "C" in (params or {}) or getattr(self, "kernel", "linear") != "linear":
            return {}
        return {"C": list(DEFAULT_C)}

    def keras_output(self, x, task: str):
        """One frozen softmax Dense layer on the flattened features: the same scores as :meth:`predict_proba`."""
        if getattr(self, "kernel", "linear") != "linear":
            raise ValueError(f"cannot export an svm head with kernel={self.kernel!r}: only linear scikit-learn heads "
                             "convert to a Dense layer (retrain with kernel='linear', or a logreg/dense head)")
        W, b = self.linear_weights()
        if W.shape[1] == 1:  # binary: both predict_proba are [1 - sigmoid(d), sigmoid(d)] == softmax([0, d])
            W, b = np.hstack([np.zeros_like(W), W]), np.concatenate([[0.0], b])
        return dense_on_features(x, W, b, "softmax")


class SVMHead(_LinearHead):
    """Support-vector classifier on (pooled) bottleneck features.

    ``StandardScaler -> LinearSVC`` for ``kernel="linear"`` (fast, scales to many
    samples, convertible to a Dense layer with :meth:`linear_weights`) or
    ``StandardScaler -> SVC(kernel="rbf", probability=False)``.

    Parameters
    ----------
    C : float, default 1.0
        Inverse regularisation strength.
    kernel : {"linear", "rbf"}, default "linear"
    max_iter : int or None, default None
        None means 5000 for LinearSVC (its own default of 1000 often stops short
        on wide bottleneck features) and no limit (-1) for SVC.
    class_weight : dict, "balanced" or None
    seed : int, default 0
        ``random_state`` of the underlying estimator.
    tol : float or None, default None
        Stopping tolerance. None means 1e-2 for LinearSVC -- LIBLINEAR's own
        default for its primal solver, not scikit-learn's 1e-4 -- and 1e-3 (libsvm's
        default) for SVC.

    Attributes
    ----------
    pipeline_ : sklearn.pipeline.Pipeline
    classes_ : ndarray of shape (n_classes,)

    Notes
    -----
    :meth:`predict_proba` is *not* calibrated: it is the softmax of the
    decision function (sigmoid for two classes), a monotone score that sums to
    one -- good for ranking or top-k, not for probabilities.  Use
    :class:`LogRegHead` when calibrated probabilities matter.
    """

    name = "svm"
    user_params = ("C", "kernel", "tol")

    def __init__(self, C=1.0, kernel="linear", max_iter=None, class_weight=None, seed=0, tol=None):
        self.C = C
        self.kernel = kernel
        self.max_iter = max_iter
        self.class_weight = class_weight
        self.seed = seed
        self.tol = tol

    def _make_model(self):
        if self.kernel == "linear":
            # scikit-learn's tol=1e-4 is 100x tighter than LIBLINEAR's primal default and buys
            # nothing measurable: on 10k pooled 512-d features one C=10 CV fold took 1,581 primal
            # iterations (41 s) at 1e-4 and 27 (6.5 s) at 1e-2, with CV accuracy 0.820 vs 0.825.
            return LinearSVC(C=self.C, tol=1e-2 if self.tol is None else self.tol,
                             max_iter=5000 if self.max_iter is None else self.max_iter,
                             class_weight=self.class_weight, random_state=self.seed)
        if self.kernel == "rbf":
            # probability=False is SVC's default; passing it explicitly raises a
            # FutureWarning in scikit-learn >= 1.9 (the parameter is deprecated).
            return SVC(C=self.C, kernel="rbf", tol=1e-3 if self.tol is None else self.tol,
                       max_iter=-1 if self.max_iter is None else self.max_iter,
                       class_weight=self.class_weight, random_state=self.seed)
        raise ValueError(f"kernel must be 'linear' or 'rbf', got {self.kernel!r}")

    def predict_proba(self, X):
        """Approximate, uncalibrated scores: softmax of the decision function, (N, n_classes)."""
        return decision_to_proba(self.decision_function(X))


class LogRegHead(_LinearHead):
    """Multinomial logistic regression on (pooled) bottleneck features.

    ``StandardScaler -> LogisticRegression`` (lbfgs).  Gives calibrated-ish
    probabilities and converts to a softmax Dense layer via :meth:`linear_weights`.

    Parameters
    ----------
    C : float, default 1.0
        Inverse regularisation strength.
    max_iter : int, default 1000
    class_weight : dict, "balanced" or None
    seed : int, default 0

    Attributes
    ----------
    pipeline_ : sklearn.pipeline.Pipeline
    classes_ : ndarray of shape (n_classes,)
    """

    name = "logreg"
    user_params = ("C",)

    def __init__(self, C=1.0, max_iter=1000, class_weight=None, seed=0):
        self.C = C
        self.max_iter = max_iter
        self.class_weight = class_weight
        self.seed = seed

    def _make_model(self):
        return LogisticRegression(C=self.C, max_iter=self.max_iter,
                                  class_weight=self.class_weight, random_state=self.seed)

    @single_blas
    def predict_proba(self, X):
        """Class probabilities, shape (N, n_classes)."""
        check_is_fitted(self, "pipeline_")
        return self.pipeline_.predict_proba(check_features(self, X, reset=False))


def check_grid(head, param_grid) -> None:
    """Raise ValueError for a grid naming a parameter ``head`` lacks, or words for a numeric one.

    Cheap (no data): ``bneck train`` runs it on an unfitted head before loading any features.
    """
    valid = head.get_params()
    unknown = sorted(set(param_grid) - set(valid))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {type(head).__name__}; "
                         f"valid: {sorted(valid)}")
    for name, values in param_grid.items():
        default = valid[name]
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            bad = [v for v in values if not isinstance(v, (int, float)) or isinstance(v, bool)]
            if bad:
                raise ValueError(f"grid parameter {name!r} takes numbers (default {default!r}), got {bad[0]!r}")


def grid_search(head, param_grid, X, y, *, cv=3, n_jobs=1, groups=None):
    """Fit ``GridSearchCV(head, param_grid)`` on `X`, `y` and return it (refit on all data).

    ``groups`` (one id per row) keeps rows of one image -- its original and mirrored view --
    in the same fold. Without it a mirror sits in training while its original is scored,
    which flatters the CV score and pushes the search towards weak regularisation.
    """
    check_grid(head, param_grid)
    # GridSearchCV slices X by arbitrary fold indices, so a lazy view is loaded
    # once here rather than once per fold.
    if groups is not None and isinstance(cv, int) and len(np.unique(groups)) < len(groups):
        from sklearn.base import is_classifier
        from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

        cv = StratifiedGroupKFold(n_splits=cv) if is_classifier(head) else GroupKFold(n_splits=cv)
    elif groups is not None:  # one row per image (no mirrors): plain folds, 0.1 s quicker to draw here
        groups = None
    search = GridSearchCV(head, {k: list(v) for k, v in param_grid.items()},
                          cv=cv, n_jobs=n_jobs, refit=True,
                          # An invalid value (C=-1) stops the search with the estimator's own message,
                          # instead of a page of per-fold tracebacks and a model chosen among the rest.
                          error_score="raise")
    return search.fit(as_array(X), np.asarray(y), groups=groups)


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INT = re.compile(r"^[+-]?\d+$")


def _parse_value(text):
    """'3' -> 3, '0.1'/'1e-3' -> float, 'None' -> None, anything else stays a str."""
    if _INT.match(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return None if text == "None" else text


def parse_grid(specs):
    """Parse CLI grid specs like ``["C=0.01,0.1,1", "kernel=linear,rbf"]`` into a param_grid dict."""
    grid = {}
    for spec in specs:
        name, sep, values = (s.strip() for s in str(spec).partition("="))
        items = [v.strip() for v in values.split(",")]
        if not sep or not _NAME.match(name) or not all(items):
            raise ValueError(f"malformed grid spec {spec!r}: expected NAME=V1,V2,... "
                             "(e.g. 'C=0.01,0.1,1') with no empty values")
        if name in grid:
            raise ValueError(f"grid parameter {name!r} given twice")
        grid[name] = [_parse_value(v) for v in items]
    return grid

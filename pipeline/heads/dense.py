"""Dense (MLP) head trained with Keras on cached bottleneck features.

The network is tiny, so on 2 cores reading features dominates: an ndarray goes
straight to ``model.fit``; a lazy HDF5 view is streamed in sorted-index batches
(:mod:`pipeline.heads.dense_fit` holds the batching, losses and epoch control).

Keras is imported inside the methods that build, fit, run or load a network, never at module level:
the class (its name, tags, hyper-parameters) is read by the CLI and the head registry before anything
decides whether TensorFlow is needed.
"""

import csv
import json
import os
import stat
import zipfile
from pathlib import PurePosixPath

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.metrics import accuracy_score
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d

from .base import Head, UnsafeHeadFile, frozen_dense
from .linear import check_features
from .tasks import CLASSIFICATION, infer_task, neg_rmse

__all__ = ["DenseHead", "load_keras_file", "check_keras_file", "KERAS_FLOOR"]

#: The oldest Keras trusted to load a ``.keras`` file: earlier ones have published ``safe_mode`` bypasses
#: (CVE-2025-1550, CVE-2025-8747, CVE-2025-9906, CVE-2025-9905, CVE-2025-12060, CVE-2026-1462).
KERAS_FLOOR = (3, 14)

#: What a ``.keras`` archive holds; anything else (a member outside these, a link) is refused unread.
_KERAS_MEMBERS = ("config.json", "metadata.json", "model.weights.h5", "model.weights.npz")
#: Layers that run code or load another model from a path: never in a bneck network.
_CODE_LAYERS = ("Lambda", "TFSMLayer")
_MAX_CONFIG_BYTES = 64 * 2**20


def _keras_version_ok() -> tuple[bool, str]:
    import keras

    version = keras.version()
    parts = [int("".join(c for c in p if c.isdigit()) or 0) for p in version.split(".")[:2]]
    return tuple(parts) >= KERAS_FLOOR, version


def _refuse(path, why):
    raise UnsafeHeadFile(f"{path}: refusing to load: {why}")


def check_keras_file(path, trusted_packages: dict[str, tuple[str, ...]] | None = None) -> None:
    """Refuse a ``.keras`` file that is not a plain archive of built-in Keras objects, without loading it.

    ``trusted_packages`` (``{registered package: module prefixes}``) admits the layers of those installed
    packages too: a fine-tuned network holds its backbone's KerasHub layers and bneck's own token layer.
    Heads pass none: they are built-in layers only.

    This is checked before Keras sees the file, so these hold whatever Keras version is installed:
    the file is a zip (a legacy HDF5 ``.h5`` model is refused: Keras ignores ``safe_mode`` for those),
    its members are the archive's own files (no absolute path, no ``..``, no link), and every object
    ``config.json`` names is a Keras built-in (``module`` is ``keras`` or ``keras.*``; no ``Lambda``,
    no ``TFSMLayer``, no function). Raises :class:`pipeline.heads.UnsafeHeadFile` naming what it found.
    """
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic == b"\x89HDF\r\n\x1a\n":
        _refuse(path, "a legacy HDF5 (.h5) Keras model: Keras does not apply safe_mode to those (CVE-2025-9905); "
                      "only .keras archives are read")
    if not zipfile.is_zipfile(path):
        _refuse(path, "not a .keras archive (a zip of config.json, metadata.json and model.weights.h5)")
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            name = info.filename
            rel = PurePosixPath(name.replace("\\", "/"))
            if rel.is_absolute() or ".." in rel.parts or ":" in name or not rel.parts:
                _refuse(path, f"archive member {name!r} points outside the archive (path traversal, CVE-2025-12060)")
            if stat.S_ISLNK(info.external_attr >> 16):
                _refuse(path, f"archive member {name!r} is a symbolic link")
            if name not in _KERAS_MEMBERS and not (rel.parts[0] == "assets" and len(rel.parts) > 1):
                _refuse(path, f"unexpected archive member {name!r} (a .keras file holds {', '.join(_KERAS_MEMBERS)})")
        try:
            info = z.getinfo("config.json")
        except KeyError:
            _refuse(path, "no config.json in the archive")
        if info.file_size > _MAX_CONFIG_BYTES:
            _refuse(path, f"config.json is {info.file_size} bytes")
        try:
            config = json.loads(z.read(info))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            _refuse(path, f"config.json is not readable JSON ({type(exc).__name__})")
    if isinstance(config, dict):  # compile=False: the compile config (optimizer, loss) is never deserialised
        config = {k: v for k, v in config.items() if k != "compile_config"}
    trusted = trusted_packages or {}
    modules = ("keras.", *(p for prefixes in trusted.values() for p in prefixes))  # beside "keras" itself
    stack = [config]
    while stack:  # iterative: a deeply nested config cannot exhaust the stack here
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            module, cls = node.get("module"), node.get("class_name")
            if cls in _CODE_LAYERS:
                _refuse(path, f"config.json holds a {cls} layer, which can run code or load files "
                              "(arbitrary code execution); bneck networks use built-in layers only")
            keras_module = isinstance(module, str) and (module == "keras" or module.startswith(modules))
            if module is not None and not keras_module:
                _refuse(path, f"config.json names {module}.{cls}, which is not a Keras built-in "
                              "(a module or function outside Keras could run arbitrary code)")
            registered = node.get("registered_name")
            if isinstance(registered, str) and ">" in registered and \
                    registered.split(">", 1)[0] not in trusted:  # "package>Name": custom
                _refuse(path, f"config.json names the custom object {registered!r}; bneck networks use built-ins only")
            stack.extend(node.values())


def load_keras_file(path, trusted_packages: dict[str, tuple[str, ...]] | None = None, custom_objects=None):
    """``keras.saving.load_model(path, safe_mode=True, compile=False)`` after :func:`check_keras_file`.

    Refuses to run on a Keras older than :data:`KERAS_FLOOR`, whose ``safe_mode`` has known bypasses.
    ``trusted_packages`` as in :func:`check_keras_file`; ``custom_objects`` go to Keras (load fixes of
    a trusted package's classes).
    """
    import keras

    ok, version = _keras_version_ok()
    if not ok:
        raise UnsafeHeadFile(f"{path}: refusing to load with Keras {version}: releases before "
                             f"{'.'.join(map(str, KERAS_FLOOR))} have published safe_mode bypasses "
                             "(CVE-2025-1550 ... CVE-2026-1462); pip install 'keras>=3.14'")
    check_keras_file(path, trusted_packages)
    return keras.saving.load_model(path, safe_mode=True, compile=False, custom_objects=custom_objects)

_FITTED = ("task_", "n_outputs_", "best_epoch_", "history_", "input_shape_", "y_ndim_")


class DenseHead(Head, BaseEstimator):
    """Small Keras MLP head on bottleneck features, as a scikit-learn estimator.

    ``Input -> Flatten | GlobalAveragePooling -> Dense(units, relu) -> Dropout -> output``
    where the output matches the task: multiclass = softmax + sparse categorical
    cross-entropy; binary = one sigmoid unit + binary cross-entropy; multilabel =
    one sigmoid per label + binary cross-entropy; regression = linear + MSE over
    finite targets only (NaN = missing; a partly labelled row still trains the
    outputs it has).

    Parameters
    ----------
    task : {"auto", "multiclass", "binary", "multilabel", "regression"}
        "auto" uses :func:`infer_task`; set it explicitly so GridSearchCV treats
        the head as a classifier (stratified folds) or regressor.
    pool : {"flatten", "gap"}
        How (N, H, W, C) maps become vectors; 2-D features are used as they are.
    units, dropout : int (0 = no hidden layer), float or "auto" (0.5 classes, 0.1 regression)
    optimizer, learning_rate : {"adam", "sgd"}, float
    momentum, nesterov : SGD only
    lr_decay : {"auto", "linear", "none"}
        "linear" decays the LR from `learning_rate` to ``learning_rate * 0.01``
        over `epochs` (Nouri's keypoints write-up); "auto" = linear for SGD, none for Adam.
    epochs, batch_size : int
    patience : int or None
        Stop after this many epochs without a lower ``val_loss`` (``loss`` when
        there is no validation data).  The best epoch's weights are always restored.
    seed : int
        ``fit`` calls ``keras.utils.set_random_seed(seed)``: this seeds the
        *global* Python, NumPy and TensorFlow RNGs (what Keras needs to repeat a fit).
    verbose : int

    Attributes
    ----------
    model_ : keras.Model, compiled, best weights restored
    classes_ : ndarray (classification; 0..C-1 label indices for multilabel)
    n_outputs_, task_, best_epoch_ : int, str, int
    history_ : dict of per-epoch lists: loss, accuracy | mae, val_*, lr
    """

    name = "dense"
    tasks = ("classification", "regression")
    user_params = ("units", "dropout", "epochs", "batch_size", "optimizer", "learning_rate", "momentum",
                   "lr_decay", "patience", "pool")
    head_loader = "keras"
    uses_validation = True
    saved_files = ("head.keras", "head.json")

    def __init__(self, task="auto", pool="flatten", units=256, dropout="auto", optimizer="adam",
                 learning_rate=1e-3, momentum=0.9, nesterov=True, lr_decay="auto", epochs=30,
                 batch_size=64, patience=8, normalize=True, seed=0, verbose=0):
        self.task, self.pool, self.units, self.dropout = task, pool, units, dropout
        self.normalize = normalize
        self.optimizer, self.learning_rate, self.momentum = optimizer, learning_rate, momentum
        self.nesterov, self.lr_decay, self.epochs = nesterov, lr_decay, epochs
        self.batch_size, self.patience, self.seed, self.verbose = batch_size, patience, seed, verbose

    def __sklearn_tags__(self):
        from sklearn.utils import ClassifierTags, RegressorTags

        # The estimator type depends on `task`; with "auto" it is unknown until fit.
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        if self.task in CLASSIFICATION:
            tags.estimator_type, tags.regressor_tags = "classifier", None
            tags.classifier_tags = ClassifierTags(multi_label=self.task == "multilabel")
        elif self.task == "regression":  # one output per target column: (N, K) targets are native
            tags.estimator_type, tags.regressor_tags = "regressor", RegressorTags()
            tags.target_tags.multi_output = True
        return tags

    def _features(self, X, *, reset):
        """`X` as float32 (N, ...) checked the scikit-learn way; a lazy view stays lazy (only its width is checked)."""
        lazy = (not isinstance(X, np.ndarray) and hasattr(X, "shape") and hasattr(X, "__getitem__")
                and not hasattr(X, "__array__") and not hasattr(X, "tocsr"))
        if lazy:  # reading a whole HDF5 view to validate it would defeat streaming
            n_features = int(np.prod(X.shape[1:]))
            if reset:
                self.n_features_in_ = n_features
            elif n_features != self.n_features_in_:
                raise ValueError(f"X has {n_features} features, but DenseHead is expecting "
                                 f"{self.n_features_in_} features as input")
            return X
        flat = check_features(self, X, reset=reset)  # refuses sparse, 1-D, non-numeric, NaN or inf
        return np.asarray(flat, dtype=np.float32).reshape(len(flat), *np.asarray(X).shape[1:])

    def _encode(self, y):
        """Targets in the form the task's loss expects."""
        y = np.asarray(y)
        if self.task_ == "multiclass":
            if not np.isin(y, self.classes_).all():
                raise ValueError("y contains labels not seen in the training targets")
            return np.searchsorted(self.classes_, y).astype(np.int32)
        if self.task_ == "binary":
            return (y == self.classes_[1]).astype(np.float32).reshape(-1, 1)
        return y.astype(np.float32).reshape(len(y), -1)

    @classmethod
    def needs_tensorflow(cls, options=None) -> bool:
        return True

    @classmethod
    def build(cls, task, params=None, *, seed=0, jobs=1, target_names=None, options=None):
        """A DenseHead for ``task``: regression files train a regressor, class labels infer their kind."""
        cls.check_task(task)
        params = dict(params or {})
        cls.check_params(params, options)
        return cls(**{"task": "regression" if task == "regression" else "auto", "seed": seed, **params})

    def selected_for_refit(self) -> dict:
        """Parameters that repeat this fit without validation data: the best epoch's count, no early stop."""
        check_is_fitted(self, "best_epoch_")
        return {"epochs": int(self.best_epoch_) + 1, "patience": None}

    def training_record(self) -> dict:
        return {"best_epoch": int(self.best_epoch_)} if getattr(self, "best_epoch_", None) is not None else {}

    def _build(self, activation):
        """The head network: (pool) -> hidden -> dropout -> output."""
        import keras
        from keras import layers

        inp = keras.Input(shape=self.input_shape_, name="features")
        x = inp
        if self.normalize:  # built-in layer: loads with safe_mode and travels with exports
            x = layers.Normalization(axis=-1, mean=self.feature_mean_, variance=self.feature_var_, name="normalize")(x)
        if len(self.input_shape_) > 1:  # 2-D features need no pooling
            gap = {2: layers.GlobalAveragePooling1D, 3: layers.GlobalAveragePooling2D,
                   4: layers.GlobalAveragePooling3D}.get(len(self.input_shape_))
            pool = {"flatten": layers.Flatten, "gap": gap}.get(self.pool)
            if pool is None:
                raise ValueError(f"pool must be 'flatten' or 'gap' (gap: 2-4 feature dims); got "
                                 f"{self.pool!r} for features of shape {self.input_shape_}")
            x = pool(name="pool")(x)
        if self.units:
            x = layers.Dense(self.units, activation="relu", name="hidden")(x)
            # Heavy dropout regularises classifiers but starves pixel-accurate regression
            # (measured on the demo faces: RMSE 3.5 px at 0.5 vs 0.6 px at 0.1).
            rate = (0.1 if self.task_ == "regression" else 0.5) if self.dropout == "auto" else float(self.dropout)
            x = layers.Dropout(rate, seed=self.seed, name="dropout")(x)
        out_layer = layers.Dense(self.n_outputs_, activation=activation, name="output")
        out = out_layer(x)
        if self.task_ == "regression" and self.target_mean_ is not None:
            # Start at the mean target (e.g. the mean keypoint in pixels) instead of 0.
            w, _ = out_layer.get_weights()
            out_layer.set_weights([w, self.target_mean_.astype(np.float32)])
        return keras.Model(inp, out, name="dense_head")

    def fit(self, X, y, validation_data=None):
        """Train on `X` (ndarray or lazy view) and `y`; `validation_data=(X_val, y_val)` drives early stopping."""
        import keras

        from .dense_fit import Batches, EpochControl, channel_stats, make_optimizer, output_spec

        if y is None:
            raise ValueError("DenseHead requires y to be passed, but the target y is None")
        X, y = self._features(X, reset=True), np.asarray(y)
        if len(X) != len(y):
            raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
        self.task_ = infer_task(y) if self.task == "auto" else self.task
        if self.task_ != "regression":  # NaN marks a missing regression target; a class label is never missing
            check_array(y, ensure_2d=False, dtype=None, input_name="y")
            if self.task_ != "multilabel":
                check_classification_targets(y)  # "Unknown label type: continuous" for float targets
                y = column_or_1d(y, warn=True)  # a (N, 1) column of labels is N labels, said with a warning
        elif np.isinf(np.asarray(y, dtype=np.float64)).any():
            raise ValueError("Input y contains infinity: regression targets are finite, or NaN where missing")
        activation, loss, metric = output_spec(self.task_)
        if self.task_ in ("multiclass", "binary"):
            self.classes_ = np.unique(y)
            self.n_outputs_ = 1 if self.task_ == "binary" else len(self.classes_)
        else:
            self.n_outputs_ = y.reshape(len(y), -1).shape[1]
            if self.task_ == "multilabel":
                self.classes_ = np.arange(self.n_outputs_)
        self.input_shape_, self.y_ndim_ = tuple(int(d) for d in X.shape[1:]), y.ndim
        # Lazy views are read in training-sized batches, never in big slabs.
        rows = 4096 if isinstance(X, np.ndarray) else int(self.batch_size)
        self.feature_mean_, self.feature_var_ = channel_stats(X, rows) if self.normalize else (None, None)
        self.target_mean_ = None
        if self.task_ == "regression":
            with np.errstate(all="ignore"):
                self.target_mean_ = np.nan_to_num(np.nanmean(y.reshape(len(y), -1).astype(np.float64), axis=0))
        keras.utils.set_random_seed(self.seed)
        opt, lr_at = make_optimizer(self.optimizer, self.learning_rate, self.momentum, self.nesterov,
                                    self.lr_decay, self.epochs)
        self.model_ = self._build(activation)
        self.model_.compile(optimizer=opt, loss=loss, metrics=[metric])
        y_enc, val = self._encode(y), None
        if validation_data is not None:
            Xv, yv = validation_data
            Xv, yv = self._features(Xv, reset=False), self._encode(yv)
            val = (Xv, yv) if isinstance(Xv, np.ndarray) else Batches(Xv, yv, self.batch_size, False)
        control = EpochControl(lr_at, "val_loss" if val is not None else "loss", self.patience)
        kw = dict(epochs=int(self.epochs), validation_data=val, callbacks=[control], verbose=self.verbose)
        if isinstance(X, np.ndarray):  # fast path: Keras slices and shuffles in memory
            self.model_.fit(X, y_enc, batch_size=self.batch_size, shuffle=True, **kw)
        else:  # our PyDataset does its own (file-friendly) shuffling
            self.model_.fit(Batches(X, y_enc, self.batch_size, True, self.seed), shuffle=False, **kw)
        self.history_, self.best_epoch_ = control.history, int(control.best_epoch)
        return self

    def _forward(self, X, batch_size=None):
        """Raw model outputs, computed in contiguous chunks (lazy views are read chunk by chunk)."""
        from keras import ops

        check_is_fitted(self, "model_")
        X = self._features(X, reset=False)
        n, bs = len(X), int(batch_size or max(self.batch_size, 256))
        # Eager calls: no tf.function to trace per model and per odd-sized last chunk.
        rows = (lambda s: X[s:s + bs]) if isinstance(X, np.ndarray) else \
            (lambda s: np.asarray(X[np.arange(s, min(s + bs, n))], dtype=np.float32))
        outs = [ops.convert_to_numpy(self.model_(rows(s), training=False)) for s in range(0, n, bs)]
        return np.concatenate(outs) if outs else np.empty((0, self.n_outputs_), np.float32)

    def predict(self, X, batch_size=None):
        """Labels (classification, 0/1 matrix for multilabel) or (N, K) values (regression)."""
        out = self._forward(X, batch_size)
        if self.task_ == "multiclass":
            return self.classes_[out.argmax(axis=1)]
        if self.task_ == "binary":
            return self.classes_[(out[:, 0] > 0.5).astype(int)]
        if self.task_ == "multilabel":
            return (out > 0.5).astype(int)
        return out[:, 0] if self.y_ndim_ == 1 else out

    def _has_proba(self):
        # hasattr(head, "predict_proba") must be False for regression: sklearn and evaluate() branch on it.
        return getattr(self, "task_", self.task) != "regression"

    @available_if(_has_proba)
    def predict_proba(self, X, batch_size=None):
        """Class probabilities: (N, C) for multiclass/multilabel, (N, 2) for binary."""
        out = self._forward(X, batch_size)
        return np.column_stack([1.0 - out[:, 0], out[:, 0]]) if self.task_ == "binary" else out

    def score(self, X, y):
        """Accuracy (subset accuracy for multilabel) or negative RMSE over finite targets."""
        pred = self.predict(X)
        if self.task_ != "regression":
            return float(accuracy_score(np.asarray(y), pred))
        return neg_rmse(y, pred)

    def to_keras(self):
        """A standalone, uncompiled copy of the head model (input = feature tensor) for stitching."""
        import keras

        check_is_fitted(self, "model_")
        model = keras.models.clone_model(self.model_)
        model.set_weights(self.model_.get_weights())
        return model

    def save(self, dirpath):
        """Write ``head.keras`` (weights, no optimizer state) and ``head.json`` (params + fitted attributes)."""
        check_is_fitted(self, "model_")
        os.makedirs(dirpath, exist_ok=True)
        self.to_keras().save(os.path.join(dirpath, "head.keras"))
        meta = {"params": self.get_params(), "fitted": {k: getattr(self, k) for k in _FITTED}}
        if hasattr(self, "classes_"):
            meta["classes"], meta["classes_dtype"] = self.classes_.tolist(), self.classes_.dtype.str
        with open(os.path.join(dirpath, "head.json"), "w") as f:
            json.dump(meta, f, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o))

    @classmethod
    def load(cls, dirpath):
        """Rebuild a fitted head saved by :meth:`save` (:func:`load_keras_file`: checked, ``safe_mode=True``)."""
        with open(os.path.join(dirpath, "head.json")) as f:
            meta = json.load(f)
        head = cls(**meta["params"])
        for k, v in meta["fitted"].items():
            setattr(head, k, tuple(v) if k == "input_shape_" else v)
        if "classes" in meta:
            head.classes_ = np.array(meta["classes"], dtype=np.dtype(meta["classes_dtype"]))
        # Not stored by directories written before the estimator checks: it follows from the input shape.
        head.n_features_in_ = int(np.prod(head.input_shape_))
        head.model_ = load_keras_file(os.path.join(dirpath, "head.keras"))
        return head

    def keras_output(self, x, task: str):
        """The head network applied to ``x``; binary heads get ``[1 - p, p]`` like :meth:`predict_proba`."""
        net = self.to_keras()
        if tuple(net.input_shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(f"the dense head expects features {net.input_shape[1:]}, the backbone gives {x.shape[1:]}")
        y = net(x)
        if task == "classification" and self.task_ == "binary":
            y = frozen_dense(np.array([[-1.0, 1.0]]), np.array([1.0, 0.0]), "binary_proba", x=y)
        return y

    def history_csv(self, path):
        """Write :attr:`history_` as CSV: one row per epoch, one column per logged quantity."""
        check_is_fitted(self, "history_")
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["epoch", *self.history_])
            w.writerows([i, *row] for i, row in enumerate(zip(*self.history_.values())))

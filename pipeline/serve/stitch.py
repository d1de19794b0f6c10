"""Stitch a trained model directory into ONE Keras model: RGB pixels in, class scores or targets out.

The model is ``Input((H, W, 3), float32 pixel values 0..255, RGB)`` -> the backbone's
``preprocess_input`` as a frozen 1x1 ``Conv2D`` named ``preprocess`` -> the truncated backbone ->
extraction pooling -> on-load pooling -> the head -> ``scores`` (what ``predict_proba`` gives) or
``targets`` (regression, in training-image pixels). Only built-in layers are used, so the
``.keras`` file loads with ``safe_mode=True`` and no custom objects, and the same graph converts
to a TF SavedModel and to TFLite. :mod:`pipeline.serve.export` writes it; ``finetune`` trains it.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("bneck")
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN, _TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def preprocess_affine(mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(kernel (3 in, 3 out), bias (3,)) with ``x @ kernel + bias == preprocess_input(x)`` for ``mode``."""
    if mode == "caffe":  # RGB -> BGR, then minus the ImageNet BGR means
        return np.eye(3)[:, ::-1], -np.array(_CAFFE_MEAN_BGR)
    if mode == "tf":  # x / 127.5 - 1
        return np.eye(3) / 127.5, -np.ones(3)
    if mode == "torch":  # (x / 255 - mean) / std
        std, mean = np.array(_TORCH_STD), np.array(_TORCH_MEAN)
        return np.diag(1.0 / (255.0 * std)), -mean / std
    if mode.startswith("none"):  # EfficientNet rescales inside the model
        return np.eye(3), np.zeros(3)
    raise ValueError(f"unknown preprocessing {mode!r}; expected caffe, tf, torch or 'none (in model)'")


def preprocessing_layer(mode: str):
    """A built, frozen ``Conv2D(3, 1)`` named "preprocess" computing the backbone's preprocess_input."""
    from keras import layers

    kernel, bias = preprocess_affine(mode)
    # Every Keras preprocess_input mode is a per-pixel affine map, i.e. a 1x1 conv; a built-in
    # layer needs no custom object (a Lambda would not load with safe_mode=True).
    conv = layers.Conv2D(3, 1, name="preprocess", trainable=False)
    conv.build((None, None, None, 3))
    conv.set_weights([kernel.reshape(1, 1, 3, 3).astype("float32"), bias.astype("float32")])
    return conv


def _frozen_dense(W, b, name, activation=None):
    from keras import layers

    dense = layers.Dense(W.shape[1], activation=activation, name=name, trainable=False)
    dense.build((None, W.shape[0]))
    dense.set_weights([np.asarray(W, "float32"), np.asarray(b, "float32")])
    return dense


def _linear_regressor(est):
    """(W, b) of a fitted ``[StandardScaler ...] -> linear regressor`` (pipeline), else None."""
    from sklearn.base import is_regressor
    from sklearn.linear_model._base import LinearModel  # predict == X @ coef_.T + intercept_
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

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


def _head_output(head, meta, x):
    """Apply the head to feature tensor ``x`` with built-in layers; same values as ``head_scores``."""
    from keras import layers

    kind, task = meta["head"], meta["task"]
    if kind == "dense":
        net = head.to_keras()
        if tuple(net.input_shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(f"the dense head expects features {net.input_shape[1:]}, the backbone gives {x.shape[1:]}")
        y = net(x)
        if task == "classification" and head.task_ == "binary":  # predict_proba is [1 - p, p]
            y = _frozen_dense(np.array([[-1.0, 1.0]]), np.array([1.0, 0.0]), "binary_proba")(y)
        return y
    flat = layers.Flatten(name="flatten")(x) if len(x.shape) > 2 else x  # C order, like as_2d
    if kind in ("svm", "logreg"):
        if getattr(head, "kernel", "linear") != "linear":
            raise ValueError(f"cannot export an svm head with kernel={head.kernel!r}: only linear scikit-learn heads "
                             "convert to a Dense layer (retrain with kernel='linear', or a logreg/dense head)")
        W, b = head.linear_weights()
        if W.shape[1] == 1:  # binary: both predict_proba are [1 - sigmoid(d), sigmoid(d)] == softmax([0, d])
            W, b = np.hstack([np.zeros_like(W), W]), np.concatenate([[0.0], b])
    elif kind == "specialists":
        # Columns in no group are NaN in SpecialistsHead.predict; a NaN bias reproduces that.
        W, b = np.zeros((head.n_features_in_, head.n_targets_)), np.full(head.n_targets_, np.nan)
        for g, est in head.estimators_.items():
            wb = _linear_regressor(est)
            if wb is None:
                raise ValueError(f"cannot export specialist {g!r} ({type(est).__name__}): only linear scikit-learn "
                                 "heads convert to a Dense layer (StandardScaler -> Ridge/LinearRegression...)")
            W[:, head.groups_[g]], b[head.groups_[g]] = wb
    else:
        raise ValueError(f"unknown head type {kind!r}")
    if W.shape[0] != flat.shape[-1]:
        raise ValueError(f"the head expects {W.shape[0]} features, the backbone gives {flat.shape[-1]}")
    return _frozen_dense(W, b, "head", "softmax" if task == "classification" else None)(flat)


def stitch(model_dir, *, weights_dirs=()):
    """(keras.Model pixels -> scores/targets, head, meta, spec, backbone) for a trained model directory."""
    import keras
    from keras import layers

    from pipeline.modeldir import load_model_dir
    from pipeline.serve.backbone import build_backbone_from

    head, meta = load_model_dir(model_dir)
    prov = meta["features"]
    if prov.get("precision", "fp32") != "fp32":
        log.info("features were extracted in %s; the exported backbone runs in fp32", prov["precision"])
    # fp32 whatever the features used: bf16/fp16 policies are a runtime choice of stage one.
    spec, backbone, _ = build_backbone_from(prov, precision="fp32", model_dir=model_dir, weights_dirs=weights_dirs)
    inp = keras.Input((*(int(v) for v in prov["input_size"]), 3), dtype="float32", name="image")
    x = backbone(preprocessing_layer(prov.get("preprocessing") or spec.preprocessing)(inp))
    pools = {"avg": layers.GlobalAveragePooling2D, "max": layers.GlobalMaxPooling2D}
    for name, how in (("extract_pool", prov.get("pooling", "none")), ("load_pool", meta.get("pooling", "none"))):
        if how in pools and len(x.shape) == 4:  # on-load pooling is a no-op on pooled features
            x = pools[how](name=name)(x)
    y = _head_output(head, meta, x)
    out = layers.Identity(name="scores" if meta["task"] == "classification" else "targets")(y)
    return keras.Model(inp, out, name="bneck_export"), head, meta, spec, backbone

"""Export a trained model directory as ONE stitched model: RGB pixels in, class scores or targets out.

The Keras model is ``Input((H, W, 3), float32 pixel values 0..255, RGB)`` -> the backbone's
``preprocess_input`` as a frozen 1x1 ``Conv2D`` named ``preprocess`` -> the truncated backbone ->
extraction pooling -> on-load pooling -> the head -> ``scores`` (what ``predict_proba`` gives) or
``targets`` (regression, in training-image pixels). Only built-in layers are used, so the
``.keras`` file loads with ``safe_mode=True`` and no custom objects, and the same graph converts
to a TF SavedModel and to TFLite. Decoding/resizing (:func:`features.images.load_rgb`) stays
outside: callers feed pixels. Versus ``bneck predict``: the backbone runs in float32 even when
the features were extracted in bf16/fp16 (TFLite ``quantize=`` is the deployment precision knob);
features are not rounded to ``store_dtype`` as the HDF5 store did (~1e-3 relative for float16;
heads do not depend on it); no ``--tta-flip``.

Heads: ``dense`` is the head's own Keras network; ``svm``/``logreg`` (linear) become one ``Dense``
from ``linear_weights()`` plus their ``predict_proba`` transform; ``specialists`` made of
``StandardScaler -> linear regressor`` pipelines fold into one ``Dense`` over all K targets.
Other heads (rbf SVM, dense-based specialists) raise ``ValueError``.

Writing the artefact (atomic, per format), int8 calibration images and the reload-and-compare
check are in :mod:`pipeline.export_artefact`.

Core ML is an optional route, not a dependency: ``coremltools.convert(keras.saving.load_model(
"model.keras"))``, or ``coremltools.convert("saved_model_dir")`` on the SavedModel export.
"""

from __future__ import annotations

import logging

import numpy as np

# Writing, reopening and checking artefacts lives in export_artefact; its names stay importable
# from here, where callers and tests have always found them.
from pipeline.export_artefact import (FORMATS, IMAGE_SUFFIXES, _compare, _open_artefact,  # noqa: F401
                                      calibration_images, check_target, find_images, write_artefact)

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


def stitch(model_dir):
    """(keras.Model pixels -> scores/targets, head, meta, spec, backbone) for a trained model directory."""
    import keras
    from keras import layers

    from pipeline.modeldir import load_model_dir
    from pipeline.stitch import build_backbone_from

    head, meta = load_model_dir(model_dir)
    prov = meta["features"]
    if prov.get("precision", "fp32") != "fp32":
        log.info("features were extracted in %s; the exported backbone runs in fp32", prov["precision"])
    # fp32 whatever the features used: bf16/fp16 policies are a runtime choice of stage one.
    spec, backbone, _ = build_backbone_from(prov, precision="fp32")
    inp = keras.Input((*(int(v) for v in prov["input_size"]), 3), dtype="float32", name="image")
    x = backbone(preprocessing_layer(prov.get("preprocessing") or spec.preprocessing)(inp))
    pools = {"avg": layers.GlobalAveragePooling2D, "max": layers.GlobalMaxPooling2D}
    for name, how in (("extract_pool", prov.get("pooling", "none")), ("load_pool", meta.get("pooling", "none"))):
        if how in pools and len(x.shape) == 4:  # on-load pooling is a no-op on pooled features
            x = pools[how](name=name)(x)
    y = _head_output(head, meta, x)
    out = layers.Identity(name="scores" if meta["task"] == "classification" else "targets")(y)
    return keras.Model(inp, out, name="bneck_export"), head, meta, spec, backbone


def export(model_dir, output, *, format: str = "keras", quantize: str | None = None, representative_images=None,
           n_representative: int = 100, check: bool = True, overwrite: bool = False) -> dict:
    """Export ``model_dir`` as one stitched model (pixels -> scores/targets) and check it against predict.

    Args:
        model_dir: a ``bneck train`` model directory; the backbone is rebuilt from model.json.
        output: a ``.keras`` file, a SavedModel directory or a ``.tflite`` file, written atomically
            (temporary name beside it, then a rename). Only an old SavedModel directory is replaced.
        format: "keras" (``model.save``), "savedmodel" (``model.export``: TF SavedModel, signature
            ``serving_default``) or "tflite".
        quantize: tflite only: None (float32), "float16" (float16 weights) or "int8" (int8 weights
            and activations, float32 input/output, calibrated on representative images).
        representative_images: image paths for int8 calibration and the check; for int8 the default
            is up to ``n_representative`` images found under the features' ``source_root``.
        overwrite: replace an existing ``output`` (without it, an existing one is an error).
        check: reload the artefact, run it on up to 8 images (the representative ones, else seeded
            random pixels) and compare with fp32 backbone + head (``Predictor.predict_arrays``).

    The model maps float32 (N, H, W, 3) RGB pixels 0..255 at the training size to (N, C) class
    scores as ``bneck predict`` gives them, or to (N, K) regression targets. Returns {path, format,
    quantize, bytes, input_shape, output_names} and, with ``check``, n_checked, max_abs_diff and
    top1_agreement (classification) or max_rel_diff (regression).
    """
    from pipeline.finetune import export_finetuned, is_finetuned

    if is_finetuned(model_dir):
        return export_finetuned(model_dir, output, format=format, quantize=quantize,
                                representative_images=representative_images,
                                n_representative=n_representative, check=check, overwrite=overwrite)
    output = check_target(output, format, quantize, overwrite=overwrite)
    model, head, meta, spec, backbone = stitch(model_dir)
    size = tuple(int(v) for v in meta["features"]["input_size"])
    calib = calibration_images(representative_images, size, n_representative, quantize,
                               meta["features"].get("source_root") or "")
    if quantize == "float16" and max(float(np.abs(w).max()) for w in model.get_weights()) > 65504:
        # A folded StandardScaler divides by feature stds: tiny stds give weights float16 cannot hold.
        log.warning("some weights exceed the float16 range; expect inf or large errors (see max_abs_diff)")
    report, run = write_artefact(model, output, format, quantize, calib, size, meta.get("target_frame"))
    if check:
        x = calib[:8] if calib is not None else np.random.default_rng(0).integers(0, 256, (4, *size, 3), np.uint8)
        report.update(_compare(run(x), _reference(backbone, spec, head, meta, x), meta["task"]))
    log.info("exported %s -> %s (%s, %d bytes)", model_dir, output, format, report["bytes"])
    return report


def _reference(backbone, spec, head, meta, x: np.ndarray) -> np.ndarray:
    """What ``Predictor.predict_arrays`` gives for ``x`` with the fp32 backbone (no flip)."""
    from pipeline.evaluate import head_scores
    from pipeline.stitch import as_stored, pool_on_load

    prov = meta["features"]
    # An independent path on purpose: the backbone's own preprocess_input, NumPy pooling and
    # the sklearn/Keras head, rather than the layers being checked.
    feats = np.asarray(backbone(spec.preprocess_input(x.astype(np.float32)), training=False), np.float32)
    feats = pool_on_load(as_stored(pool_on_load(feats, prov.get("pooling", "none")), prov), meta["pooling"])
    return head_scores(head, feats, meta["task"])

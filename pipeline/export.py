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

Core ML is an optional route, not a dependency: ``coremltools.convert(keras.saving.load_model(
"model.keras"))``, or ``coremltools.convert("saved_model_dir")`` on the SavedModel export.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
import warnings

import numpy as np

log = logging.getLogger("bneck")

FORMATS = ("keras", "savedmodel", "tflite")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
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


def find_images(root, n: int) -> list[str]:
    """About ``2 * n`` image file paths under ``root``, spread evenly over the sorted tree."""
    found = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in sorted(files)
                  if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")]
    # Evenly spaced, not the first n, so every class folder is represented; twice as many as
    # needed because some may not decode.
    return [found[i] for i in np.unique(np.linspace(0, len(found) - 1, min(len(found), 2 * n)).astype(int))]


def _load_images(paths, size, n, *, skip_bad):
    """Up to ``n`` decoded uint8 images; undecodable ones are skipped (discovered) or raise (given)."""
    from features import images

    arrays = [a for a in (images.decode(p, size)[0] if skip_bad else images.load_rgb(p, size) for p in paths[:2 * n])
              if a is not None][:n]
    return np.stack(arrays) if arrays else None


def export(model_dir, output, *, format: str = "keras", quantize: str | None = None, representative_images=None,
           n_representative: int = 100, check: bool = True) -> dict:
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
                                n_representative=n_representative, check=check)
    output = check_target(output, format, quantize)
    model, head, meta, spec, backbone = stitch(model_dir)
    size = tuple(int(v) for v in meta["features"]["input_size"])
    calib = calibration_images(representative_images, size, n_representative, quantize,
                               meta["features"].get("source_root") or "")
    if quantize == "float16" and max(float(np.abs(w).max()) for w in model.get_weights()) > 65504:
        # A folded StandardScaler divides by feature stds: tiny stds give weights float16 cannot hold.
        log.warning("some weights exceed the float16 range; expect inf or large errors (see max_abs_diff)")
    report, run = write_artefact(model, output, format, quantize, calib, size)
    if check:
        x = calib[:8] if calib is not None else np.random.default_rng(0).integers(0, 256, (4, *size, 3), np.uint8)
        report.update(_compare(run(x), _reference(backbone, spec, head, meta, x), meta["task"]))
    log.info("exported %s -> %s (%s, %d bytes)", model_dir, output, format, report["bytes"])
    return report


def check_target(output, format: str, quantize) -> str:
    """Validate format/quantize/output before any work; returns the output path as a string."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if quantize not in (None, "float16", "int8"):
        raise ValueError(f"quantize must be None, 'float16' or 'int8', got {quantize!r}")
    if quantize and format != "tflite":
        raise ValueError("quantize applies to format='tflite' only")
    output = os.fspath(output)
    if format == "keras" and not output.endswith(".keras"):
        raise ValueError(f"{output}: a Keras model file must end in .keras")
    if os.path.isdir(output) and not (format == "savedmodel" and _is_savedmodel(output)):
        raise FileExistsError(f"{output}: is a directory and not a SavedModel export; not replacing it")
    return output


def calibration_images(paths, size, n: int, quantize, source_root: str):
    """Representative uint8 images: the given paths, else (for int8) images under the training source root."""
    calib = _load_images(list(paths), size, n, skip_bad=False) if paths else None
    if quantize == "int8" and calib is None:
        if os.path.isdir(source_root):
            calib = _load_images(find_images(source_root, n), size, n, skip_bad=True)
        if calib is None:
            raise ValueError(f"int8 quantization needs representative images and none were found under the "
                             f"features' source_root {source_root!r}; pass representative_images=[paths]")
    return calib


def write_artefact(model, output: str, format: str, quantize, calib, size):
    """Write ``model`` atomically in ``format``; returns (report dict, callable running the artefact)."""
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    # Same directory => same filesystem, so the final rename is atomic.
    tmp = os.path.join(parent, f".{os.path.basename(output)}.{uuid.uuid4().hex[:12]}.partial")
    try:
        if format == "keras":
            tmp += ".keras"  # Keras insists on the suffix
            model.save(tmp)
            os.replace(tmp, output)
        elif format == "savedmodel":
            model.export(tmp, format="tf_saved_model", verbose=False)
            _replace_dir(tmp, output)
        else:
            with open(tmp, "wb") as f:
                f.write(_tflite_bytes(model, quantize, calib))
            os.replace(tmp, output)
    except BaseException:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.remove(tmp)
        raise
    run, names = _open_artefact(output, format)
    n_bytes = os.path.getsize(output) if os.path.isfile(output) else \
        sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(output) for f in fs)
    report = {"path": output, "format": format, "quantize": quantize, "bytes": n_bytes,
              "input_shape": [None, *size, 3], "output_names": names}
    return report, run


def _tflite_bytes(model, quantize, calib) -> bytes:
    """Convert via a temporary SavedModel: the converter's best-supported input for Keras 3 models."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as d:
        model.export(d, format="tf_saved_model", verbose=False)
        conv = tf.lite.TFLiteConverter.from_saved_model(d)
        if quantize:
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            conv.target_spec.supported_types = [tf.float16]
        elif quantize == "int8":
            # No inference_input_type: input/output stay float32, so callers feed the same pixels.
            conv.representative_dataset = lambda: ([im[None].astype(np.float32)] for im in calib)
        return conv.convert()


def _is_savedmodel(path) -> bool:
    return os.path.isdir(path) and not os.path.islink(path) and os.path.isfile(os.path.join(path, "saved_model.pb"))


def _replace_dir(tmp, output):
    """Move the finished directory ``tmp`` to ``output``; only an old SavedModel is ever replaced."""
    if not os.path.lexists(output):
        os.replace(tmp, output)
        return
    if not _is_savedmodel(output):
        raise FileExistsError(f"{output}: exists and is not a SavedModel directory; not replacing it")
    old = f"{tmp}.old"  # a non-empty directory cannot be replaced atomically: old aside, new in
    os.replace(output, old)
    os.replace(tmp, output)
    shutil.rmtree(old, ignore_errors=True)


def _open_artefact(path, format):
    """(callable uint8 batch -> outputs, output names) of the written artefact, reloaded from disk."""
    import tensorflow as tf

    if format == "keras":
        import keras

        model = keras.saving.load_model(path, safe_mode=True, compile=False)
        return (lambda x: np.asarray(model(x.astype(np.float32), training=False))), list(model.output_names)
    if format == "savedmodel":
        loaded = tf.saved_model.load(path)  # the closure keeps it alive: its variables die with it
        names = list(loaded.signatures["serving_default"].structured_outputs)
        return (lambda x: np.asarray(loaded.serve(tf.constant(x.astype(np.float32))))), names
    with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation notice (-> ai_edge_litert)
        warnings.simplefilter("ignore")
        it = tf.lite.Interpreter(model_path=path)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]

    def run(x):  # one image at a time on the converted (1, H, W, 3) input: valid for every quantization
        rows = []
        for im in x.astype(np.float32):
            it.set_tensor(inp, im[None])
            it.invoke()
            rows.append(it.get_tensor(out)[0].copy())
        return np.stack(rows)

    sig = it.get_signature_list()
    return run, list(next(iter(sig.values()))["outputs"]) if sig else []


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


def _compare(got: np.ndarray, ref: np.ndarray, task: str) -> dict:
    got, ref = got.reshape(len(got), -1).astype(np.float64), ref.reshape(len(ref), -1).astype(np.float64)
    present = np.isfinite(ref)  # ungrouped specialist columns are NaN in both
    d = np.abs(got - ref)[present]
    diff = float(np.where(np.isfinite(d), d, np.inf).max()) if d.size else 0.0
    out = {"n_checked": len(got), "max_abs_diff": diff}
    if task == "classification":
        out["top1_agreement"] = float((got.argmax(1) == ref.argmax(1)).mean())
    else:
        out["max_rel_diff"] = diff / max(float(np.abs(ref[present]).max()) if d.size else 0.0, 1e-12)
    return out

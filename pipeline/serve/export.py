"""Export a trained model directory as ONE stitched model (:mod:`pipeline.serve.stitch`): pixels in, scores out.

The Keras model is ``Input((H, W, 3), float32 pixel values 0..255, RGB)`` -> the backbone's
``preprocess_input`` as a frozen 1x1 ``Conv2D`` named ``preprocess`` -> the truncated backbone ->
extraction pooling -> on-load pooling -> the head -> ``scores`` (what ``predict_proba`` gives) or
``targets`` (regression, in training-image pixels). Only built-in layers are used, so the
``.keras`` file loads with ``safe_mode=True`` and no custom objects, and the same graph converts
to a TF SavedModel and to TFLite. Decoding/resizing (:func:`features.images.load_rgb`) stays
outside: callers feed pixels, as the report's ``input_contract`` says; with ``any_size`` the model
resizes uint8 images of any size itself (keras and savedmodel). Versus ``bneck predict``: the
backbone runs in float32 even when the features were extracted in bf16/fp16 (TFLite ``quantize=``
is the deployment precision knob); features are not rounded to ``store_dtype`` as the HDF5 store
did (~1e-3 relative for float16; heads do not depend on it); no ``--tta-flip``.

Heads: ``dense`` is the head's own Keras network; ``svm``/``logreg`` (linear) become one ``Dense``
from ``linear_weights()`` plus their ``predict_proba`` transform; ``specialists`` made of
``StandardScaler -> linear regressor`` pipelines fold into one ``Dense`` over all K targets.
Other heads (rbf SVM, dense-based specialists) raise ``ValueError``.

Writing the artefact (atomic, per format), int8 calibration images and the reload-and-compare
check are in :mod:`pipeline.serve.artefact`.

Core ML is an optional route, not a dependency: ``coremltools.convert(keras.saving.load_model(
"model.keras"))``, or ``coremltools.convert("saved_model_dir")`` on the SavedModel export.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from pipeline.serve.artefact import calibration_images, check_target, compare, write_artefact
from pipeline.serve.finetuned import export_finetuned, is_finetuned
from pipeline.serve.stitch import any_size_input, stitch

log = logging.getLogger("bneck")


class _Copied:
    """What ``save_model_dir`` writes as the head of an exported copy: nothing itself (the files come as extras)."""

    def __init__(self, head_loader: str, format_version: int):
        self.head_loader, self.format_version = head_loader, format_version

    def save(self, dirpath) -> None:
        pass


def export_dir(model_dir, output, *, bundle_weights: bool = False, overwrite: bool = False, weights_dirs=(),
               trust_pickle: bool = False) -> dict:
    """Copy ``model_dir`` to the model directory ``output``: checked first, with its weights file if asked.

    The source is verified and its head loaded the checked way first, so a copy never spreads a
    tampered or hostile directory. A pickled head (format v1) needs ``trust_pickle`` and is written
    in its safe format, as ``bneck upgrade-model`` would; any other head's files are copied as they
    are. With ``bundle_weights`` the backbone weights file (found by its sha256, like ``predict``
    finds it) is copied into ``output``, where ``predict`` looks first, so ``output`` works on a
    machine with no other copy. ImageNet weights come from Keras' own cache and are not bundled.
    Written atomically (``save_model_dir``). Returns a report dict.
    """
    from pipeline.modeldir import load_model_dir, save_model_dir, verify_model_dir
    from pipeline.serve.backbone import weights_argument

    from features.images import input_contract

    meta = verify_model_dir(model_dir)
    keep = {k: v for k, v in meta.items() if k not in ("files", "format", "format_version", "head_loader")}
    # What an app must feed the model: the copy may go where bneck's decoder is not (features.images).
    keep["input_contract"] = input_contract(meta["features"]["input_size"])
    report = {"path": str(output), "format": "dir", "input_contract": keep["input_contract"]}
    if is_finetuned(model_dir):
        from pipeline.serve.finetuned import load_finetuned

        load_finetuned(model_dir)  # checked and loaded with safe_mode before it is passed on
        head, copied = _Copied(meta["head_loader"], meta["format_version"]), set(meta["files"])
        report["weights"] = "in model.keras"
    else:
        head, meta = load_model_dir(model_dir, trust_pickle=trust_pickle)
        from pipeline.heads import Head, PickledHead

        if isinstance(head, Head) and meta["head_loader"] == PickledHead.head_loader:  # upgraded on the way
            keep["upgraded_from"] = {"head_loader": meta["head_loader"], "format_version": meta["format_version"]}
            copied = {n for n in meta["files"] if n not in PickledHead.saved_files}
        else:
            head, copied = _Copied(meta["head_loader"], meta["format_version"]), set(meta["files"])
    extra = {name: os.path.join(model_dir, *name.split("/")) for name in sorted(copied)}
    if bundle_weights and "weights" not in report:
        found, _ = weights_argument(meta["features"], model_dir=model_dir, weights_dirs=weights_dirs)
        if found in ("imagenet", "none", "none-raw"):
            report["weights"] = f"{found}: not a file, nothing to bundle"
            if found == "imagenet":
                log.warning("ImageNet weights are Keras' own download, not bundled: the target machine needs "
                            "them in its Keras cache (bneck backbones --prefetch) or network access")
        else:
            name = os.path.basename(found)
            if name in extra or name == "model.json":
                name = f"backbone.{name}"
            extra[name] = found
            report["weights"] = name
    doc = save_model_dir(output, head, keep, extra_files=extra, overwrite=overwrite)
    report.update(head_loader=doc["head_loader"], format_version=doc["format_version"], files=sorted(doc["files"]),
                  bytes=sum(os.path.getsize(os.path.join(output, *n.split("/"))) for n in doc["files"]))
    log.info("exported %s -> %s (model directory, %d files)", model_dir, output, len(doc["files"]))
    return report


def export(model_dir, output, *, format: str = "keras", quantize: str | None = None, representative_images=None,
           n_representative: int = 100, check: bool = True, overwrite: bool = False, weights_dirs=(),
           trust_pickle: bool = False, bundle_weights: bool = False, any_size: bool = False) -> dict:
    """Export ``model_dir`` as one stitched model (pixels -> scores/targets) and check it against predict.

    Args:
        model_dir: a ``bneck train`` model directory; the backbone is rebuilt from model.json.
        output: a ``.keras`` file, a SavedModel directory or a ``.tflite`` file, written atomically
            (temporary name beside it, then a rename). Only an old SavedModel directory is replaced.
        format: "keras" (``model.save``), "savedmodel" (``model.export``: TF SavedModel, signature
            ``serving_default``), "tflite", or "dir": a checked copy of the model directory itself
            (:func:`export_dir`; with ``bundle_weights`` it holds the backbone weights file too).
        quantize: tflite only: None (float32), "float16" (float16 weights) or "int8" (int8 weights
            and activations, float32 input/output, calibrated on representative images).
        representative_images: image paths for int8 calibration and the check; for int8 the default
            is up to ``n_representative`` images found under the features' ``source_root``.
        overwrite: replace an existing ``output`` (without it, an existing one is an error).
        weights_dirs: more folders to find the backbone weights in (by sha256).
        trust_pickle: allow a format-v1 ``head.joblib`` (a pickle, which runs code).
        check: reload the artefact, run it on up to 8 images (the representative ones, else seeded
            random pixels) and compare with fp32 backbone + head (``Predictor.predict_arrays``).
        any_size: keras/savedmodel only: the model takes uint8 RGB images of any size and resizes them
            itself (:func:`pipeline.serve.stitch.any_size_input`), so an app needs no copy of bneck's decoder.

    The model maps float32 (N, H, W, 3) RGB pixels 0..255 at the training size to (N, C) class
    scores as ``bneck predict`` gives them, or to (N, K) regression targets (``any_size``: uint8
    (N, H', W', 3) of any H', W'). Returns {path, format, quantize, bytes, input_shape, output_names,
    input_contract} (what pixels to feed: :func:`features.images.input_contract`) and, with ``check``,
    n_checked, max_abs_diff and top1_agreement (classification) or max_rel_diff (regression).
    """
    if format == "dir":
        return export_dir(model_dir, output, bundle_weights=bundle_weights, overwrite=overwrite,
                          weights_dirs=weights_dirs, trust_pickle=trust_pickle)
    if bundle_weights:
        raise ValueError("bundle_weights applies to format='dir' only")
    if is_finetuned(model_dir):
        return export_finetuned(model_dir, output, format=format, quantize=quantize,
                                representative_images=representative_images,
                                n_representative=n_representative, check=check, overwrite=overwrite,
                                any_size=any_size)
    output = check_target(output, format, quantize, overwrite=overwrite, any_size=any_size)
    model, head, meta, spec, backbone = stitch(model_dir, weights_dirs=weights_dirs, trust_pickle=trust_pickle)
    size = tuple(int(v) for v in meta["features"]["input_size"])
    calib = calibration_images(representative_images, size, n_representative, quantize,
                               meta["features"].get("source_root") or "")
    if quantize == "float16" and max(float(np.abs(w).max()) for w in model.get_weights()) > 65504:
        # A folded StandardScaler divides by feature stds: tiny stds give weights float16 cannot hold.
        log.warning("some weights exceed the float16 range; expect inf or large errors (see max_abs_diff)")
    if any_size:
        model = any_size_input(model, size)
    report, run = write_artefact(model, output, format, quantize, calib, size, meta.get("target_frame"),
                                 any_size=any_size)
    if check:
        x = calib[:8] if calib is not None else np.random.default_rng(0).integers(0, 256, (4, *size, 3), np.uint8)
        report.update(compare(run(x), _reference(backbone, spec, head, meta, x), meta["task"]))
    log.info("exported %s -> %s (%s, %d bytes)", model_dir, output, format, report["bytes"])
    return report


def _reference(backbone, spec, head, meta, x: np.ndarray) -> np.ndarray:
    """What ``Predictor.predict_arrays`` gives for ``x`` with the fp32 backbone (no flip)."""
    from pipeline.evaluate import head_scores
    from pipeline.serve.backbone import as_stored, pool_on_load

    prov = meta["features"]
    # An independent path on purpose: the backbone's own preprocess_input, NumPy pooling and
    # the sklearn/Keras head, rather than the layers being checked.
    feats = np.asarray(backbone(spec.preprocess_input(x.astype(np.float32)), training=False), np.float32)
    feats = pool_on_load(as_stored(pool_on_load(feats, prov.get("pooling", "none")), prov), meta["pooling"])
    return head_scores(head, feats, meta["task"])

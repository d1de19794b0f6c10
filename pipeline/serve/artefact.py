"""Write an exported model to disk and check it: the formats, int8 calibration images, reload and compare.

:mod:`pipeline.serve.export` builds the stitched Keras model; this module turns any such model (also a
fine-tuned one, :func:`pipeline.serve.finetuned.export_finetuned`) into a ``.keras`` file, a TF
SavedModel directory or a ``.tflite`` file, atomically, then reopens the artefact from disk so
the check runs what a user would deploy.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings

import numpy as np

from features.fsutil import atomic_path, expand_paths, replace_dir, temp_beside, walk_files
from features.reader.sources import IMAGE_SUFFIXES

FORMATS = ("keras", "savedmodel", "tflite")


def check_target(output, format: str, quantize, *, overwrite: bool = False, any_size: bool = False) -> str:
    """Validate format/quantize/output before any work; returns the output path as a string."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if any_size and format == "tflite":
        # Antialiased resize is TF's ScaleAndTranslate op: not a TFLite builtin (only with the Flex delegate).
        raise ValueError("any_size (--any-size) is for keras and savedmodel: its antialiased resize is not a TFLite "
                         "builtin op; for TFLite, resize in the app as the report's input_contract says")
    if quantize not in (None, "float16", "int8"):
        raise ValueError(f"quantize must be None, 'float16' or 'int8', got {quantize!r}")
    if quantize and format != "tflite":
        raise ValueError("quantize applies to format='tflite' only")
    output = os.fspath(output)
    if format == "keras" and not output.endswith(".keras"):
        raise ValueError(f"{output}: a Keras model file must end in .keras")
    if os.path.isdir(output) and not (format == "savedmodel" and _is_savedmodel(output)):
        raise FileExistsError(f"{output}: is a directory and not a SavedModel export; not replacing it")
    if os.path.lexists(output) and not overwrite:
        raise FileExistsError(f"{output}: already exists (use --overwrite, or overwrite=True in Python, to replace it)")
    return output


def calibration_images(paths, size, n: int, quantize, source_root: str):
    """Representative uint8 images: the given files/directories, else (for int8) images under the training root."""
    calib = None
    if paths:
        found = expand_paths(paths)  # directories expand like `bneck predict`'s inputs; a missing path fails here
        if not found:
            raise ValueError(f"representative images: no files under {', '.join(map(str, paths))}")
        calib = _load_images(found, size, n, skip_bad=False)
    if quantize == "int8" and calib is None:
        if os.path.isdir(source_root):
            calib = _load_images(find_images(source_root, n), size, n, skip_bad=True)
        if calib is None:
            raise ValueError(f"int8 quantization needs representative images and none were found under the "
                             f"features' source_root {source_root!r}; pass --representative IMAGES "
                             "(representative_images= in Python)")
    return calib


def find_images(root, n: int) -> list[str]:
    """About ``2 * n`` image file paths under ``root``, spread evenly over the sorted tree."""
    found = walk_files(root, suffixes=IMAGE_SUFFIXES)
    # Evenly spaced, not the first n, so every class folder is represented; twice as many as
    # needed because some may not decode.
    return [found[i] for i in np.unique(np.linspace(0, len(found) - 1, min(len(found), 2 * n)).astype(int))]


def _load_images(paths, size, n, *, skip_bad):
    """Up to ``n`` decoded uint8 images; undecodable ones are skipped (discovered) or raise (given)."""
    from features import images

    arrays = []
    for p in paths[:2 * n]:
        arr, _, reason = images.decode(p, size)
        if arr is None and not skip_bad:  # the user chose this file: say which one and why
            raise ValueError(f"representative image {p}: {reason} ({images.REASONS.get(reason, '')})")
        if arr is not None:
            arrays.append(arr)
        if len(arrays) == n:
            break
    return np.stack(arrays) if arrays else None


def write_artefact(model, output: str, format: str, quantize, calib, size, target_frame=None, *,
                   any_size: bool = False):
    """Write ``model`` atomically in ``format``; returns (report dict, callable running the artefact).

    The report's ``input_contract`` (:func:`features.images.input_contract`) says what pixels the
    artefact expects: how bneck decodes and resizes, or (``any_size``) uint8 of any size.

    A keypoint model's report names its ``target_frame``: the exported network outputs coordinates in
    those training pixels, and an app scales them to its photo as ``bneck predict`` does.
    """
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    # Not fsynced (durable=False), as before: an export is rerun, not resumed, after a crash.
    # Each artefact is read back from its temporary name before it replaces anything: one that does not load
    # (a layer whose config Keras cannot rebuild) is refused, and an older file at `output` is kept.
    if format == "keras":
        with atomic_path(output, durable=False) as tmp:  # the temp name keeps .keras: Keras insists on it
            model.save(tmp)
            run, names = _read_back(tmp, format, output)
    elif format == "savedmodel":
        tmp = temp_beside(output)  # same directory => same filesystem, so the final rename is atomic
        try:
            model.export(tmp, format="tf_saved_model", verbose=False)
            run, names = _read_back(tmp, format, output)
            _replace_dir(tmp, output)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    else:
        tflite = _tflite_bytes(model, quantize, calib)
        with atomic_path(output, durable=False) as tmp:
            with open(tmp, "wb") as f:
                f.write(tflite)
            run, names = _read_back(tmp, format, output)
    n_bytes = os.path.getsize(output) if os.path.isfile(output) else \
        sum(os.path.getsize(f) for f in walk_files(output))
    from features.images import input_contract

    report = {"path": output, "format": format, "quantize": quantize, "bytes": n_bytes,
              "input_shape": [None, None, None, 3] if any_size else [None, *size, 3], "output_names": names,
              "input_contract": input_contract(size, resize_in_model=any_size)}
    if target_frame:
        report["target_frame"] = [int(v) for v in target_frame]
    return report, run


def _read_back(tmp, format, output):
    """:func:`open_artefact` of the just-written ``tmp``, or a ValueError naming ``output`` if it does not load."""
    try:
        return open_artefact(tmp, format)
    except Exception as exc:  # noqa: BLE001 (any failure to load means the artefact is unusable)
        why = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ""
        raise ValueError(f"{output}: the exported {format} model does not load back ({type(exc).__name__}: {why}); "
                         f"nothing was written. Try another --format") from None


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
    """True for a real (not symlinked) directory holding a saved_model.pb."""
    return os.path.isdir(path) and not os.path.islink(path) and os.path.isfile(os.path.join(path, "saved_model.pb"))


def _replace_dir(tmp, output):
    """Move the finished directory ``tmp`` to ``output``; only an old SavedModel is ever replaced."""
    if os.path.lexists(output) and not _is_savedmodel(output):
        raise FileExistsError(f"{output}: exists and is not a SavedModel directory; not replacing it")
    replace_dir(tmp, output, aside=f"{tmp}.old", durable=False)


def open_artefact(path, format):
    """(callable uint8 batch -> outputs, output names) of the written artefact, reloaded from disk.

    The batch is cast to the artefact's input dtype: float32, or uint8 for an ``--any-size`` export.
    """
    import tensorflow as tf

    if format == "keras":
        import keras

        from features.backbones.hub import load_fixes

        model = keras.saving.load_model(path, safe_mode=True, compile=False, custom_objects=load_fixes())
        dtype = np.dtype(model.inputs[0].dtype)
        return (lambda x: np.asarray(model(x.astype(dtype), training=False))), list(model.output_names)
    if format == "savedmodel":
        loaded = tf.saved_model.load(path)  # the closure keeps it alive: its variables die with it
        sig = loaded.signatures["serving_default"]
        names = list(sig.structured_outputs)
        dtype = next(iter(sig.structured_input_signature[1].values())).dtype.as_numpy_dtype
        return (lambda x: np.asarray(loaded.serve(tf.constant(x.astype(dtype))))), names
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


def compare(got: np.ndarray, ref: np.ndarray, task: str) -> dict:
    """Check numbers for the report: max abs diff, and top-1 agreement or the diff relative to ``ref``."""
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

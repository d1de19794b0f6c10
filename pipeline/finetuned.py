"""Serving a fine-tuned model directory: predict, evaluate on images and export the whole network."""

from __future__ import annotations

import logging
import os

import numpy as np

from features import keypoints
from pipeline.finetune_data import decode_rows, targets_for
from pipeline.keypoint_frame import unmirror_widths
from pipeline.predict import Predictor

log = logging.getLogger("bneck")

MODEL_FILE = "model.keras"


class _Identity:
    """A 'head' whose outputs are already the scores, for :func:`pipeline.evaluate.metrics_for`."""

    def predict_proba(self, s):
        return s

    def predict(self, s):
        return s


def is_finetuned(model_dir) -> bool:
    """True when ``model_dir`` is a fine-tuned model directory (``head: "finetuned"``)."""
    from pipeline.modeldir import read_model_json

    return read_model_json(model_dir).get("head") == "finetuned"


def load_finetuned(model_dir):
    """(keras model, meta) of a fine-tuned model directory, checksums verified, ``safe_mode=True``."""
    import keras

    from pipeline.modeldir import ModelDirError, verify_model_dir

    meta = verify_model_dir(model_dir)
    if meta.get("head") != "finetuned" or MODEL_FILE not in meta["files"]:
        raise ModelDirError(f"{model_dir}: not a fine-tuned model directory (no {MODEL_FILE})")
    return keras.saving.load_model(os.path.join(model_dir, MODEL_FILE), safe_mode=True, compile=False), meta


class FinetunedPredictor(Predictor):
    """:class:`pipeline.predict.Predictor` for a fine-tuned model directory: same ``predict_files``/``predict_arrays``.

    >>> FinetunedPredictor("models/finetuned").predict_files(["cat.jpg"], top_k=3)
    """

    def __init__(self, model_dir, *, tta_flip: bool = False, batch_size: int = 32):
        self.model, self.meta = load_finetuned(model_dir)
        self.prov, self.tta_flip, self.batch_size = self.meta["features"], tta_flip, batch_size
        self.input_size = tuple(int(v) for v in self.prov["input_size"])

    def predict_arrays(self, x: np.ndarray, widths=None) -> np.ndarray:
        """Scores (classification) or targets (regression) for a uint8 batch at the input size."""
        run = lambda a: np.asarray(self.model.predict(a.astype(np.float32), batch_size=self.batch_size,  # noqa: E731
                                                      verbose=0), np.float64)
        out = run(x)
        if not self.tta_flip:
            return out
        other = run(x[:, :, ::-1])
        if self.meta["task"] == "regression":
            w = unmirror_widths(self.meta, widths, len(x), self.input_size)
            other = keypoints.flip_targets(other, self.meta["target_names"], w)
        return (out + other) / 2


def predictor_for(model_dir, **kw):
    """The right predictor for any model directory: fine-tuned or head on a frozen backbone."""
    return FinetunedPredictor(model_dir, **kw) if is_finetuned(model_dir) else Predictor(model_dir, **kw)


def evaluate_on_images(model_dir, data, *, top_k: int = 5, batch_size: int = 32, source=None,
                       max_bad_fraction: float = 0.05) -> dict:
    """Metrics of any model directory on labelled images (class folder, CSV, Kaggle CSV), decoded end to end.

    Returns a dict with the headline ``accuracy`` or ``rmse_px`` at the top level, like
    :func:`pipeline.evaluate.evaluate`, plus ``n_bad_skipped`` and ``bad_images`` (the first 100
    undecodable images left out, ``[{"path", "reason"}]``). More than ``max_bad_fraction`` of them
    raises :class:`features.runner.TooManyBadImages` (``bneck`` exits 3), naming them: a metric
    over what happened to decode is not the metric of the data set.
    """
    from features.runner import TooManyBadImages
    from features.sources import read_source
    from pipeline.evaluate import metrics_for

    man = read_source(data, **(source or {}))  # a malformed CSV fails before the model is built
    pred = predictor_for(model_dir, batch_size=batch_size)
    x, hw, rows, bad = decode_rows(man, pred.input_size)
    if len(man) and len(bad) / len(man) > max_bad_fraction:
        from features.images import name_bad

        raise TooManyBadImages(f"{data}: {len(bad)} of {len(man)} images ({len(bad) / len(man):.1%}) could not be "
                               f"decoded, more than --max-bad-fraction {max_bad_fraction}: {name_bad(bad)}")
    y = targets_for(man, pred.meta, rows)
    scores = np.concatenate([pred.predict_arrays(x[s:s + batch_size], widths=hw[s:s + batch_size, 1])
                             for s in range(0, len(x), batch_size)]) if len(x) else np.zeros((0, 1))
    result = metrics_for(_Identity(), scores, y, pred.meta, top_k=top_k, sizes=hw)
    key = "accuracy" if pred.meta["task"] == "classification" else "rmse_px"
    return {key: result.pop(key), "task": pred.meta["task"], "head": pred.meta["head"], "model": str(model_dir),
            "data": str(data), "n_bad_skipped": len(bad),
            "bad_images": [{"path": p, "reason": r} for p, r in bad[:100]], **result}


def export_finetuned(model_dir, output, *, format: str = "keras", quantize: str | None = None,
                     representative_images=None, n_representative: int = 100, check: bool = True,
                     overwrite: bool = False) -> dict:
    """Export a fine-tuned model directory like :func:`pipeline.export.export` (same formats, report and check).

    The saved network already is the stitched pixels -> scores/targets model, so it is written as
    it is: ``.keras``, a TF SavedModel directory, or ``.tflite`` (``quantize`` float16/int8).
    """
    from pipeline import export_artefact as ex

    output = ex.check_target(output, format, quantize, overwrite=overwrite)
    pred = FinetunedPredictor(model_dir)
    size = pred.input_size
    calib = ex.calibration_images(representative_images, size, n_representative, quantize,
                                  pred.prov.get("source_root") or "")
    report, run = ex.write_artefact(pred.model, output, format, quantize, calib, size, pred.meta.get("target_frame"))
    if check:
        x = calib[:8] if calib is not None else np.random.default_rng(0).integers(0, 256, (4, *size, 3), np.uint8)
        report.update(ex._compare(run(x), pred.predict_arrays(x), pred.meta["task"]))
    return report

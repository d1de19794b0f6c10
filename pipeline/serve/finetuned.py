"""Serving a fine-tuned model directory: predict, evaluate on images and export the whole network."""

from __future__ import annotations

import logging
import os

import numpy as np

from features import keypoints
from pipeline.data.keypoint_frame import unmirror_widths
from pipeline.serve import artefact
from pipeline.serve.predictor import Predictor

log = logging.getLogger("bneck")

MODEL_FILE = "model.keras"


def is_finetuned(model_dir) -> bool:
    """True when ``model_dir`` is a fine-tuned model directory (``head: "finetuned"``)."""
    from pipeline.modeldir import read_model_json

    return read_model_json(model_dir).get("head") == "finetuned"


def load_finetuned(model_dir):
    """(keras model, meta) of a fine-tuned model directory, checksums verified, checked and ``safe_mode=True``."""
    from pipeline.heads import UnsafeHeadFile, load_keras_file
    from pipeline.modeldir import ModelDirError, verify_model_dir

    meta = verify_model_dir(model_dir)
    if meta.get("head") != "finetuned" or MODEL_FILE not in meta["files"]:
        raise ModelDirError(f"{model_dir}: not a fine-tuned model directory (no {MODEL_FILE})")
    from features.backbones.hub import NETWORK_PACKAGES, load_fixes

    try:
        # A fine-tuned KerasHub backbone keeps its own layers (and bneck's token layer): trusted by package.
        return load_keras_file(os.path.join(model_dir, MODEL_FILE), trusted_packages=NETWORK_PACKAGES,
                               custom_objects=load_fixes()), meta
    except UnsafeHeadFile as exc:
        raise ModelDirError(str(exc)) from None


class FinetunedPredictor(Predictor):
    """A :class:`~pipeline.serve.predictor.Predictor` for a fine-tuned model directory (same methods).

    >>> FinetunedPredictor("models/finetuned").predict_files(["cat.jpg"], top_k=3)
    """

    def __init__(self, model_dir, *, tta_flip: bool = False, batch_size: int = 32, weights_dirs=(),
                 trust_pickle: bool = False):
        # weights_dirs, trust_pickle: accepted like Predictor's; the whole network is in model.keras, no pickle.
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


def export_finetuned(model_dir, output, *, format: str = "keras", quantize: str | None = None,
                     representative_images=None, n_representative: int = 100, check: bool = True,
                     overwrite: bool = False, any_size: bool = False) -> dict:
    """Export a fine-tuned model directory like :func:`pipeline.serve.export.export` (same formats, report and check).

    The saved network already is the stitched pixels -> scores/targets model, so it is written as
    it is: ``.keras``, a TF SavedModel directory, or ``.tflite`` (``quantize`` float16/int8).
    """
    from pipeline.serve.stitch import any_size_input

    output = artefact.check_target(output, format, quantize, overwrite=overwrite, any_size=any_size)
    pred = FinetunedPredictor(model_dir)
    size = pred.input_size
    calib = artefact.calibration_images(representative_images, size, n_representative, quantize,
                                        pred.prov.get("source_root") or "")
    model = any_size_input(pred.model, size) if any_size else pred.model
    report, run = artefact.write_artefact(model, output, format, quantize, calib, size,
                                          pred.meta.get("target_frame"), any_size=any_size)
    if check:
        x = calib[:8] if calib is not None else np.random.default_rng(0).integers(0, 256, (4, *size, 3), np.uint8)
        report.update(artefact.compare(run(x), pred.predict_arrays(x), pred.meta["task"]))
    return report

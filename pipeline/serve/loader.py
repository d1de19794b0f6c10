"""One entry point for any model directory: a head on a frozen backbone, or a fine-tuned whole network."""

from __future__ import annotations

from pipeline.serve.finetuned import FinetunedPredictor, is_finetuned
from pipeline.serve.predictor import Predictor


def predictor_for(model_dir, **kw):
    """The right predictor for any model directory: fine-tuned or head on a frozen backbone."""
    return FinetunedPredictor(model_dir, **kw) if is_finetuned(model_dir) else Predictor(model_dir, **kw)

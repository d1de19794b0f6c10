"""``bneck evaluate-images``: metrics of any model directory on labelled images, decoded end to end."""

from __future__ import annotations

import numpy as np

from features.config import TooManyBadImages
from features.images import name_bad
from features.reader.sources import read_source
from pipeline.evaluate import PassThrough, metrics_for
from pipeline.serve.loader import predictor_for
from pipeline.serve.rows import decode_rows, refuse_unlabelled_source, targets_for


def evaluate_on_images(model_dir, data, *, top_k: int = 5, batch_size: int = 32, source=None,
                       max_bad_fraction: float = 0.05, weights_dirs=(), trust_pickle: bool = False) -> dict:
    """Metrics of any model directory on labelled images (class folder, CSV, Kaggle CSV), decoded end to end.

    Returns a dict with the headline ``accuracy`` or ``rmse_px`` at the top level, like
    :func:`pipeline.evaluate.evaluate`, plus ``n_bad_skipped`` and ``bad_images`` (the first 100
    undecodable images left out, ``[{"path", "reason"}]``). More than ``max_bad_fraction`` of them
    raises :class:`features.runner.TooManyBadImages` (``bneck`` exits 3), naming them: a metric
    over what happened to decode is not the metric of the data set.
    """
    man = read_source(data, **(source or {}))  # a malformed CSV fails before the model is built
    refuse_unlabelled_source(man, data)
    pred = predictor_for(model_dir, batch_size=batch_size, weights_dirs=weights_dirs, trust_pickle=trust_pickle)
    x, hw, rows, bad = decode_rows(man, pred.input_size)
    if len(man) and len(bad) / len(man) > max_bad_fraction:
        raise TooManyBadImages(f"{data}: {len(bad)} of {len(man)} images ({len(bad) / len(man):.1%}) could not be "
                               f"decoded, more than --max-bad-fraction {max_bad_fraction}: {name_bad(bad)}")
    y = targets_for(man, pred.meta, rows)
    scores = np.concatenate([pred.predict_arrays(x[s:s + batch_size], widths=hw[s:s + batch_size, 1])
                             for s in range(0, len(x), batch_size)]) if len(x) else np.zeros((0, 1))
    result = metrics_for(PassThrough(), scores, y, pred.meta, top_k=top_k, sizes=hw)
    key = "accuracy" if pred.meta["task"] == "classification" else "rmse_px"
    return {key: result.pop(key), "task": pred.meta["task"], "head": pred.meta["head"], "model": str(model_dir),
            "data": str(data), "n_bad_skipped": len(bad),
            "bad_images": [{"path": p, "reason": r} for p, r in bad[:100]], **result}

"""``bneck predict``: image files or directories -> one result dict per file, through any model directory."""

from __future__ import annotations

from features.fsutil import expand_paths
from pipeline.evaluate import check_top_k
from pipeline.serve.loader import predictor_for


def predict(model_dir, inputs, *, top_k: int = 5, tta_flip: bool = False, batch_size: int = 32, weights_dirs=(),
            trust_pickle: bool = False):
    """Predict on image files/directories; yields result dicts (the ``bneck predict --json`` lines).

    ``weights_dirs``: more folders to find the backbone weights in, by sha256; ``trust_pickle``: allow a
    format-v1 ``head.joblib`` (a pickle, which runs code).
    """
    check_top_k(top_k)  # before the model is built: a typo should not cost a backbone build
    predictor = predictor_for(model_dir, tta_flip=tta_flip, batch_size=batch_size, weights_dirs=weights_dirs,
                              trust_pickle=trust_pickle)
    yield from predictor.predict_files(expand_paths(inputs, keep_missing=True), top_k=top_k)

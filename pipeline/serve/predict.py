"""``bneck predict``: image files or directories, or a feature file's cached rows -> one result dict per row."""

from __future__ import annotations

import numpy as np

from features import images, keypoints
from features.fsutil import expand_paths
from pipeline.data.keypoint_frame import to_image_pixels, unmirror_widths
from pipeline.data.featurefile import FeatureFile, check_compatible
from pipeline.evaluate import MODEL_COMPAT_KEYS, check_top_k, head_scores
from pipeline.modeldir import load_model_dir
from pipeline.serve.loader import predictor_for
from pipeline.serve.predictor import result_for

#: Rows read from a feature file per head call: bounded memory whatever the file's size.
FEATURE_BATCH = 4096


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


def is_feature_file(path) -> bool:
    """Whether ``path`` is an HDF5 file (by its signature), i.e. cached features rather than an image."""
    try:
        with open(path, "rb") as f:
            return f.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


def predict_features(model_dir, features, *, top_k: int = 5, tta_flip: bool = False, trust_pickle: bool = False):
    """Run a trained head on a feature file's cached rows (any task, ``none`` included); no backbone is built.

    Yields one dict per row, in row order, as :func:`predict` does per image, plus its ``row``; a row
    stage one could not decode gives ``{"row", "path", "error", "detail"}``. The file must fit the model
    (same backbone, layer, input size, preprocessing, pooling and weights), as ``bneck evaluate`` checks.
    """
    check_top_k(top_k)
    head, meta = load_model_dir(model_dir)
    if "features" not in meta:
        raise ValueError(f"{model_dir}: a fine-tuned network predicts images, not cached features; "
                         f"give it image files instead of {features}")
    with FeatureFile(features) as ff:
        check_compatible(meta["features"], ff.attrs, path=str(features),
                         keys=[k for k in MODEL_COMPAT_KEYS if k in meta["features"]])
        if tta_flip and not ff.has_flipped:
            raise ValueError(f"{features}: --tta-flip needs mirrored features, and this file was extracted "
                             "with --no-flip")
        valid, paths, sizes, reasons = ff.valid, ff.paths, ff.image_size, ff.reasons
        for start in range(0, ff.n_rows, FEATURE_BATCH):
            rows = np.arange(start, min(start + FEATURE_BATCH, ff.n_rows))
            ok = rows[valid[rows]]
            preds = {}
            if len(ok):
                out = head_scores(head, ff.view(ok, pooling=meta["pooling"]), meta["task"])
                if tta_flip:
                    other = head_scores(head, ff.view(ok, flipped=True, pooling=meta["pooling"]), meta["task"])
                    if meta["task"] == "regression":
                        w = unmirror_widths(meta, sizes[ok][:, 1], len(ok), meta["features"]["input_size"])
                        other = keypoints.flip_targets(other, meta["target_names"], w)
                    out = (out + other) / 2
                out = to_image_pixels(meta, out, sizes[ok])
                preds = dict(zip(ok.tolist(), out))
            for i in rows.tolist():
                if i in preds:
                    yield {"row": i, **result_for(meta, paths[i], preds[i], sizes[i], top_k)}
                else:
                    yield {"row": i, "path": paths[i], "error": reasons[i] or "invalid",
                           "detail": images.REASONS.get(reasons[i], "")}

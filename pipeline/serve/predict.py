"""``bneck predict``: image files or directories, dataset sources, or a feature file's cached rows -> one result
dict per image or row."""

from __future__ import annotations

import os

import numpy as np

from features import images, keypoints
from features.fsutil import expand_paths
from features.reader import fs
from features.reader.errors import SourceError
from features.reader.sources import IMAGE_SUFFIXES, detect_kind, read_source
from pipeline.data.keypoint_frame import to_image_pixels, unmirror_widths
from pipeline.data.featurefile import FeatureFile, check_compatible
from pipeline.evaluate import MODEL_COMPAT_KEYS, check_top_k, head_scores
from pipeline.modeldir import load_model_dir
from pipeline.serve.loader import predictor_for
from pipeline.serve.predictor import result_for

#: Rows read from a feature file per head call: bounded memory whatever the file's size.
FEATURE_BATCH = 4096
#: Source kinds that ``predict`` walks for image files instead (as it always has): image folders, class folders.
WALKED_KINDS = ("folder", "images")


def predict(model_dir, inputs, *, top_k: int = 5, tta_flip: bool = False, batch_size: int = 32, weights_dirs=(),
            trust_pickle: bool = False):
    """Predict on image files/directories and dataset sources; yields result dicts (the ``bneck predict --json`` lines).

    An input that is a dataset source (:func:`source_kind`: a Kaggle keypoints CSV such as its ``test.csv``,
    a CSV of image paths, a list file, webdataset tars, parquet) gives one result per row, in row order, with
    the row's id as its ``path`` and its ``row``; labels or targets in the source are not used. Sources are
    read with their defaults before the model is built, so a malformed one fails fast.

    ``weights_dirs``: more folders to find the backbone weights in, by sha256; ``trust_pickle``: allow a
    format-v1 ``head.joblib`` (a pickle, which runs code).
    """
    check_top_k(top_k)  # before the model is built: a typo should not cost a backbone build
    groups = _input_groups(inputs)
    predictor = predictor_for(model_dir, tta_flip=tta_flip, batch_size=batch_size, weights_dirs=weights_dirs,
                              trust_pickle=trust_pickle)
    for group in groups:
        if isinstance(group, list):
            yield from predictor.predict_files(group, top_k=top_k)
            continue
        # Only a reason about the image counts here: a row without targets (no_targets) is still an image.
        bad = {i: r for i, r in group.row_errors.items() if r in images.REASONS}
        rows = predictor.predict_sources(group.paths, (group.source(i) for i in range(len(group))), top_k=top_k,
                                         bad=bad)
        for i, result in enumerate(rows):
            yield {"row": i, **result}


def source_kind(path) -> str | None:
    """The source kind of a ``predict`` input read row by row, or ``None`` for an image, a folder of images
    (walked, as ever), a feature file or a path that does not exist (reported as ``missing``).

    A source is what ``--source-kind auto`` detects, but image and class folders: a ``.csv`` (Kaggle or
    paths), a ``.txt``/``.lst`` list, ``.tar`` or ``.parquet`` files, a brace pattern or glob of them, or a
    folder of tars or parquet files with no images at its top.
    """
    path = os.fspath(path)
    if isinstance(path, bytes):
        return None  # a file name that is not text (the readers take str): an image path, as before
    if not fs.is_pattern(path):
        if not fs.exists(path) or is_feature_file(path):
            return None
        if os.path.isdir(path) and any(e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES)
                                       for e in os.scandir(path)):
            return None  # photos with a stray .tar beside them: still a folder of images
    kind = detect_kind(path)
    return None if kind in WALKED_KINDS else kind


def _input_groups(inputs):
    """The inputs in their order, as lists of image files (directories expanded) and read dataset manifests."""
    groups, paths = [], []
    for item in inputs:
        kind = source_kind(item)
        if kind is None:
            paths.append(item)
            continue
        if paths:
            groups.append(expand_paths(paths, keep_missing=True))
            paths = []
        try:
            groups.append(read_source(item, kind=kind))
        except SourceError as exc:
            raise SourceError(f"{exc} (`bneck predict` reads a dataset with its defaults; for other settings, "
                              "`bneck extract` it with its flags and predict on the feature file)") from None
    if paths:
        groups.append(expand_paths(paths, keep_missing=True))
    return groups


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

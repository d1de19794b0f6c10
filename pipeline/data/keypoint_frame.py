"""The frame a keypoint head predicts in, and the moves between it and each image's own pixels.

Keypoint targets are stored in each image's own pixels.  A head sees only the resized input, so it
predicts in one frame whatever the new image's size (``target_frame`` in ``model.json``): the
training images' size when they all have one (Kaggle faces: 96x96), else the backbone's input size,
into which training moves the targets of mixed-size images (:func:`training_frame`).  Predictions are
mirrored about the frame's width and then scaled into each image's pixels.
"""

from __future__ import annotations

import logging

import numpy as np

from features import keypoints

log = logging.getLogger("bneck")


def unmirror_widths(meta: dict, widths, n: int, input_size) -> np.ndarray:
    """Widths to un-mirror predicted keypoints with: the frame the head predicts in.

    A keypoint head predicts in its frame whatever the new image's size, so its mirror is taken
    about the frame's width (``meta["target_frame"]``); without a frame (models from before frames
    were recorded), about each image's own width.
    """
    frame = meta.get("target_frame")
    if frame:
        return np.full(n, float(frame[1]))
    return np.asarray(widths if widths is not None else [input_size[1]] * n, dtype=float)


def to_image_pixels(meta: dict, preds, sizes) -> np.ndarray:
    """Keypoints predicted in the training frame, moved into each image's own pixels.

    A head predicts in ``meta["target_frame"]`` (Kaggle faces: 96x96) whatever the new image's size;
    a 192x192 photo's eye is then at twice the predicted x and y.  ``sizes`` is ``(N, 2)`` (height,
    width); rows of size 0 (unknown) stay in the frame.  Classifiers and heads without a frame are
    returned unchanged.
    """
    frame = meta.get("target_frame")
    if meta.get("task") != "regression" or not frame or sizes is None:
        return np.asarray(preds)
    return keypoints.rescale_targets(preds, meta["target_names"], frame, _known(sizes, frame))


def to_frame(meta: dict, targets, sizes) -> np.ndarray:
    """Keypoint targets in each image's own pixels, moved into the head's frame (inverse of :func:`to_image_pixels`).

    Fine-tuning starts from a head that predicts in ``meta["target_frame"]``, so images of another
    size must have their targets in that frame too; without a frame they are returned unchanged.
    """
    if meta.get("task") != "regression":
        return np.asarray(targets)
    return into_frame(np.asarray(targets), meta["target_names"], sizes, meta.get("target_frame"))


def _known(sizes, frame) -> np.ndarray:
    """``sizes`` as (N, 2), with rows of size 0 (invalid: size unknown, no targets) taken as the frame."""
    sizes = np.asarray(sizes).reshape(-1, 2)
    return np.where((sizes > 0).all(axis=1, keepdims=True), sizes, np.asarray(frame))


def training_frame(sizes, input_size, names, *, path="") -> list[int] | None:
    """The frame a head learns keypoints in: the training images' one size, else the backbone's input size.

    Images of one size keep their own pixels (Kaggle faces: 96x96).  Images of mixed sizes are all
    seen resized to ``input_size``, so their targets are moved into that frame: the same face at two
    sizes then gets one answer.  Regression without ``*_x``/``*_y`` columns has no frame when mixed.
    """
    sizes = np.unique(np.asarray(sizes).reshape(-1, 2), axis=0)
    if len(sizes) == 1 and sizes[0].all():
        return [int(v) for v in sizes[0]]
    if len(sizes) < 2 or not (keypoints.x_columns(names) | keypoints.y_columns(names)).any():
        return None
    frame = [int(v) for v in input_size]
    log.info("%s: keypoint targets of images of %d sizes (e.g. %s) are learnt in the %dx%d input frame the "
             "backbone sees; predict and evaluate scale them back to each image", path, len(sizes),
             ", ".join(f"{h}x{w}" for h, w in sizes[:3]), *frame)
    return frame


def into_frame(targets, names, sizes, frame) -> np.ndarray:
    """Targets in the pixels of images of ``sizes`` (N, 2), moved into ``frame`` (float32; unchanged without one)."""
    if not frame:
        return targets
    sizes = _known(sizes, frame)
    if (sizes == np.asarray(frame)).all():
        return targets
    return keypoints.rescale_targets(targets, names, sizes, frame).astype(np.float32)

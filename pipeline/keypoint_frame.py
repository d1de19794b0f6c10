"""The frame a keypoint head predicts in, and the moves between it and each image's own pixels.

Keypoint targets are stored in each image's own pixels.  A head trained on images of one size
(``target_frame`` in ``model.json``, Kaggle faces: 96x96) sees only the resized input, so it predicts
in that frame whatever the new image's size: predictions are mirrored about the frame's width and
then scaled into the image's pixels.
"""

from __future__ import annotations

import numpy as np

from features import keypoints


def unmirror_widths(meta: dict, widths, n: int, input_size) -> np.ndarray:
    """Widths to un-mirror predicted keypoints with: the frame the head predicts in.

    A head trained on images of one size (Kaggle faces: 96x96) predicts in that frame whatever the
    new image's size, so its mirror is taken about the training width (``meta["target_frame"]``).
    A head trained on images of mixed sizes predicts in each image's own pixels.
    """
    frame = meta.get("target_frame")
    if frame:
        return np.full(n, float(frame[1]))
    return np.asarray(widths if widths is not None else [input_size[1]] * n, dtype=float)


def to_image_pixels(meta: dict, preds, sizes) -> np.ndarray:
    """Keypoints predicted in the training frame, moved into each image's own pixels.

    A head trained on images of one size (``meta["target_frame"]``, Kaggle faces: 96x96) predicts
    in that frame whatever the new image's size; a 192x192 photo's eye is then at twice the
    predicted x and y.  ``sizes`` is ``(N, 2)`` (height, width); rows of size 0 (unknown) stay in the
    frame.  Classifiers, and heads trained on mixed sizes (no frame), are returned unchanged.
    """
    frame = meta.get("target_frame")
    if meta.get("task") != "regression" or not frame or sizes is None:
        return np.asarray(preds)
    sizes = np.asarray(sizes, np.float64).reshape(-1, 2)
    sizes = np.where((sizes > 0).all(axis=1, keepdims=True), sizes, np.asarray(frame, np.float64))
    return keypoints.rescale_targets(preds, meta["target_names"], frame, sizes)


def to_frame(meta: dict, targets, sizes) -> np.ndarray:
    """Keypoint targets in each image's own pixels, moved into the head's frame (inverse of :func:`to_image_pixels`).

    Fine-tuning starts from a head that predicts in ``meta["target_frame"]``, so images of another
    size must have their targets in that frame too; without a frame they are returned unchanged.
    """
    frame = meta.get("target_frame")
    if meta.get("task") != "regression" or not frame:
        return np.asarray(targets)
    sizes = np.asarray(sizes, np.float64).reshape(-1, 2)
    return keypoints.rescale_targets(targets, meta["target_names"], sizes, frame).astype(np.float32)


def frame_widths(meta: dict, sizes) -> np.ndarray:
    """Widths to mirror targets about: the frame's width when the head has one, else each image's (float32)."""
    sizes = np.asarray(sizes, np.float32).reshape(-1, 2)
    frame = meta.get("target_frame")
    return np.full(len(sizes), float(frame[1]), np.float32) if frame else sizes[:, 1].copy()

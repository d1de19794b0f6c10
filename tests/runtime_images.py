"""Test helper: natural-ish images and the similarity measure the runtime tests (TF, OpenVINO, int8) share."""

from __future__ import annotations

import numpy as np

#: The input size of the runtime tests' seeded random backbones.
SIZE = (64, 64)


def smooth_images(n: int, seed: int = 0, size=SIZE) -> np.ndarray:
    """``n`` smooth random uint8 images with a little noise (natural-ish, and not mirror-symmetric)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[0], 0:size[1]] / size[0]
    out = np.empty((n, *size, 3), np.uint8)
    for i in range(n):
        a, b, c = rng.uniform(-1, 1, (3, 3))
        img = 128 + 90 * np.sin(3 * (a * xx[..., None] + b * yy[..., None]) + c) + rng.normal(0, 12, (*size, 3))
        out[i] = np.clip(img, 0, 255)
    return out


def cosine(a, b) -> np.ndarray:
    """Per row, the cosine similarity of two feature batches (any shape after the first axis)."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

"""Labelled images as arrays for whole-network work: decoded rows and the model's targets for them.

Both ``evaluate-images`` (serve) and ``finetune`` read their data through here, so the two agree
on which rows are bad and on how class names map to the model's indices.
"""

from __future__ import annotations

import logging

import numpy as np

from features import images

log = logging.getLogger("bneck")


def decode_rows(manifest, size, workers=None):
    """Decode every row at ``size``: (uint8 images, (height, width) (N, 2), kept rows, [(path, reason)] of the bad)."""
    out = images.decode_all([manifest.source(i) for i in range(len(manifest))], size, workers=workers)
    ok = [i for i, (arr, _, _) in enumerate(out) if arr is not None and i not in manifest.row_errors]
    kept = set(ok)
    bad = [(manifest.paths[i], manifest.row_errors.get(i) or out[i][2]) for i in range(len(out)) if i not in kept]
    if bad:
        log.warning("%d of %d images could not be decoded and are skipped: %s", len(bad), len(out),
                    images.name_bad(bad))
    x = np.stack([out[i][0] for i in ok]) if ok else np.zeros((0, *size, 3), np.uint8)
    return x, np.array([out[i][1] for i in ok], np.float32).reshape(-1, 2), np.array(ok, np.int64), bad


def refuse_unlabelled_source(manifest, data) -> None:
    """Refuse a source without labels or targets (task ``none``) for work that scores or trains against them."""
    if manifest.task == "none":
        raise ValueError(f"{data}: this {manifest.kind} source has no labels or targets (task none), so there is "
                         "nothing to score the model against or train it on; `bneck predict MODEL IMAGES` runs a "
                         "model on it")


def targets_for(manifest, meta, rows):
    """The rows' labels (as the model's class indices) or targets (in the model's column order)."""
    refuse_unlabelled_source(manifest, manifest.root)
    if meta["task"] == "classification":
        if manifest.labels is None:
            raise ValueError("the model is a classifier but the data has no class labels")
        index = {c: k for k, c in enumerate(meta["class_names"])}
        unknown = sorted(set(manifest.class_names) - set(index))
        if unknown:
            raise ValueError(f"classes {unknown[:10]} are not among the model's {meta['class_names'][:10]}")
        return np.array([index[c] for c in manifest.class_names], np.int64)[manifest.labels[rows]]
    names = list(manifest.target_names or [])
    missing = [n for n in meta["target_names"] if n not in names]
    if missing:
        raise ValueError(f"the data lacks the model's target columns {missing[:10]}")
    return manifest.targets[rows][:, [names.index(n) for n in meta["target_names"]]]

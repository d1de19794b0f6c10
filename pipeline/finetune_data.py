"""Images and augmentation for fine-tuning: decoding rows, targets, tf.data pipelines, flip-aware keypoints.

Augmentation runs in the input pipeline only (never inside the saved model), on uint8->float pixels
before the model's frozen preprocessing convolution.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np

from features import images, keypoints

log = logging.getLogger("bneck")

#: Augmentation strengths (Keras layer factors; channel shift in pixel levels, like ImageDataGenerator).
AUGMENT = {"translate": 0.1, "zoom": 0.1, "rotate": 0.05, "brightness": 0.1, "channel_shift": 10.0}


def flip_keypoint_batch(x, t, widths, target_names, flip):
    """Mirror the images where ``flip`` is True and their targets as :func:`features.keypoints.flip_targets` does."""
    import tensorflow as tf

    xmask = tf.constant(keypoints.x_columns(target_names))
    perm = np.arange(len(target_names))
    for i, j in keypoints.flip_pairs(target_names):
        perm[i], perm[j] = j, i
    mirrored = tf.gather(tf.where(xmask, (widths[:, None] - 1.0) - t, t), perm, axis=1)  # NaN stays NaN
    return (tf.where(flip[:, None, None, None], tf.reverse(x, axis=[2]), x),
            tf.where(flip[:, None], mirrored, t))


def make_augment(task, *, target_names=None, flip=True, seed=0):
    """A tf function (uint8 images, y, widths) -> (float32 pixels 0..255, y) with random augmentation."""
    import tensorflow as tf
    from keras import layers

    a = AUGMENT
    geometric = [layers.RandomTranslation(a["translate"], a["translate"], seed=seed + 1),
                 layers.RandomZoom(a["zoom"], seed=seed + 2), layers.RandomRotation(a["rotate"], seed=seed + 3)]
    if task == "classification":  # keypoints: only the flip, which flip_keypoint_batch also applies to targets
        spatial = keras.Sequential(([layers.RandomFlip("horizontal", seed=seed)] if flip else []) + geometric)
    brightness = layers.RandomBrightness(a["brightness"], value_range=(0, 255), seed=seed + 4)
    gen = tf.random.Generator.from_seed(seed)

    def augment(x, y, w):
        x = tf.cast(x, tf.float32)
        n = tf.shape(x)[0]
        if task == "classification":
            x = spatial(x, training=True)
        elif flip:
            x, y = flip_keypoint_batch(x, y, w, target_names, gen.uniform([n]) < 0.5)
        x = brightness(x, training=True)
        # Channel shift (ImageDataGenerator's channel_shift_range): one offset per image and channel.
        x = x + gen.uniform([n, 1, 1, 3], -a["channel_shift"], a["channel_shift"])
        return tf.clip_by_value(x, 0.0, 255.0), y

    return augment


def decode_rows(manifest, size, workers=None):
    """Decode every row at ``size``: (uint8 images, (height, width) (N, 2), kept rows, [(path, reason)] of the bad)."""
    with ThreadPoolExecutor(workers or max(1, os.cpu_count() or 1)) as pool:
        out = list(pool.map(lambda i: images.decode(manifest.source(i), size), range(len(manifest))))
    ok = [i for i, (arr, _, _) in enumerate(out) if arr is not None and i not in manifest.row_errors]
    kept = set(ok)
    bad = [(manifest.paths[i], manifest.row_errors.get(i) or out[i][2]) for i in range(len(out)) if i not in kept]
    if bad:
        log.warning("%d of %d images could not be decoded and are skipped: %s", len(bad), len(out),
                    images.name_bad(bad))
    x = np.stack([out[i][0] for i in ok]) if ok else np.zeros((0, *size, 3), np.uint8)
    return x, np.array([out[i][1] for i in ok], np.float32).reshape(-1, 2), np.array(ok, np.int64), bad


def targets_for(manifest, meta, rows):
    """The rows' labels (as the model's class indices) or targets (in the model's column order)."""
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


def _dataset(x, y, w, batch_size, *, augment=None, shuffle=False, seed=0):
    """tf.data over in-memory arrays, reshuffled each epoch, with the augmentation map."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)

    def gen():
        order = rng.permutation(len(x)) if shuffle else np.arange(len(x))
        for s in range(0, len(x), batch_size):
            i = order[s:s + batch_size]
            yield x[i], y[i], w[i]

    sig = (tf.TensorSpec((None, *x.shape[1:]), tf.uint8), tf.TensorSpec((None, *y.shape[1:]), tf.as_dtype(y.dtype)),
           tf.TensorSpec((None,), tf.float32))
    # Known cardinality: Keras then knows the steps per epoch instead of guessing from the first epoch.
    ds = tf.data.Dataset.from_generator(gen, output_signature=sig).apply(
        tf.data.experimental.assert_cardinality(-(-len(x) // batch_size)))
    fn = augment or (lambda a, b, _w: (tf.cast(a, tf.float32), b))
    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)

"""Images and augmentation for fine-tuning: decoding rows, targets, tf.data pipelines, flip-aware keypoints.

Augmentation runs in the input pipeline only (never inside the saved model), on uint8->float pixels
before the model's frozen preprocessing convolution.
"""

from __future__ import annotations

import logging

import numpy as np

from features import keypoints

log = logging.getLogger("bneck")

#: Default augmentation strengths, as in the classic Keras fine-tuning write-ups: small geometric changes only.
#: ``shift``: fraction of the width/height (ImageDataGenerator's width/height_shift_range); ``zoom``: fraction
#: (zoom_range); ``rotation``: degrees (rotation_range); ``brightness``: RandomBrightness factor (fraction of
#: 255); ``channel_shift``: pixel levels (channel_shift_range). Photometric shifts and rotation are off unless
#: asked for: with the head's frozen statistics they move the features more than they teach (measured in
#: docs/performance.md). Keypoints get none of the geometric ones (their targets would have to move too).
AUGMENT = {"shift": 0.1, "zoom": 0.1, "rotation": 0.0, "brightness": 0.0, "channel_shift": 0.0}


def augment_strengths(**given) -> dict:
    """:data:`AUGMENT` with the given (non-None) strengths replaced; refuses unknown names and negative values."""
    unknown = set(given) - set(AUGMENT)
    if unknown:
        raise ValueError(f"unknown augmentation {', '.join(sorted(unknown))}; known: {', '.join(AUGMENT)}")
    out = {**AUGMENT, **{k: float(v) for k, v in given.items() if v is not None}}
    bad = [k for k, v in out.items() if not v >= 0]
    if bad:
        raise ValueError(f"augmentation strengths must be >= 0: {', '.join(f'{k}={out[k]}' for k in bad)}")
    return out


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


def make_augment(task, *, target_names=None, flip=True, seed=0, strengths=None):
    """A tf function (uint8 images, y, widths) -> (float32 pixels 0..255, y) with random augmentation.

    ``strengths``: :data:`AUGMENT` names to values (missing ones take the defaults, 0 turns one off);
    ``flip``: random horizontal mirror (flip-aware for keypoints).
    """
    import keras
    import tensorflow as tf
    from keras import layers

    a = augment_strengths(**(strengths or {}))
    spatial = None
    if task == "classification":  # keypoints: only the flip, which flip_keypoint_batch also applies to targets
        chain = [layers.RandomFlip("horizontal", seed=seed)] if flip else []
        if a["shift"]:
            chain.append(layers.RandomTranslation(a["shift"], a["shift"], seed=seed + 1))
        if a["zoom"]:
            chain.append(layers.RandomZoom(a["zoom"], seed=seed + 2))
        if a["rotation"]:
            chain.append(layers.RandomRotation(a["rotation"] / 360.0, seed=seed + 3))
        spatial = keras.Sequential(chain) if chain else None
    brightness = (layers.RandomBrightness(a["brightness"], value_range=(0, 255), seed=seed + 4)
                  if a["brightness"] else None)
    channel_shift = a["channel_shift"]
    gen = tf.random.Generator.from_seed(seed)

    def augment(x, y, w):
        x = tf.cast(x, tf.float32)
        n = tf.shape(x)[0]
        if spatial is not None:
            x = spatial(x, training=True)
        elif task != "classification" and flip:
            x, y = flip_keypoint_batch(x, y, w, target_names, gen.uniform([n]) < 0.5)
        if brightness is not None:
            x = brightness(x, training=True)
        if channel_shift:  # ImageDataGenerator's channel_shift_range: one offset per image and channel
            x = x + gen.uniform([n, 1, 1, 3], -channel_shift, channel_shift)
        return tf.clip_by_value(x, 0.0, 255.0), y

    return augment


def image_dataset(x, y, w, batch_size, *, augment=None, shuffle=False, seed=0):
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

"""The seeded random init of ``--weights none``: BatchNorm statistics calibrated on synthetic images (issue 19).

Why: a BatchNorm layer built from scratch holds moving mean 0 and variance 1, so at inference it
passes its input's scale through unchanged, and a deep net of random convolutions shrinks or
grows the signal layer by layer (MobileNet at 96 px: activations near 6e-19, which a float16
store keeps as exact zeros). Calibration is what training would have done to those statistics,
without data: one inference-mode forward pass of a fixed, seeded batch of synthetic images in
which each BatchNorm first sets its moving mean and variance to the moments of its own input,
then normalises with them, so every layer sees its upstream layers already calibrated (layer by
layer, in one pass). Inference mode keeps Dropout and noise layers off: only the seed decides.

Limits, measured (tests/features/test_random_init.py): the batch's scale is right at every layer, but a
deep random net still answers some images far more strongly than others (EfficientNetB4+ and
V2-M/L at 96 px: one pink-noise image in 8 comes out ~300x the others), so the float16 store's
overflow/underflow check (features/runner.py) stays the safeguard it was.

The pass always runs in float32 (then the weights are copied into a bf16/fp16 model), so one seed
gives the same weights whatever the precision. A model without BatchNorm is left as it was built.
"""

from __future__ import annotations

import logging
import time

import numpy as np

log = logging.getLogger("bneck")

#: ``WeightsInfo.bn`` of a random init whose BatchNorm statistics were calibrated here.
CALIBRATED = "calibrated"
#: Synthetic images of the calibration pass at up to 128x128 px; fewer at larger sizes (more positions each).
CALIBRATION_IMAGES = 16
_MIN_IMAGES = 4


def batchnorm_layers(model) -> list:
    """Every BatchNormalization layer of ``model``, nested ones included, in the model's order."""
    import keras

    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)]


def synthetic_images(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """``n`` seeded RGB images (float32, 0..255) with a natural image's 1/f amplitude spectrum.

    Why not white noise: random filters respond to an image's spectrum, and photographs (like the
    pink noise here) put most of their energy at low frequencies; statistics measured on white
    noise would misjudge every layer's scale on real images.
    """
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    amplitude = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / max(h, w))
    phase = rng.uniform(0, 2 * np.pi, (n, h, fx.shape[1], 3))
    spectrum = amplitude[None, :, :, None] * np.exp(1j * phase)
    img = np.fft.irfft2(spectrum, s=(h, w), axes=(1, 2))
    # Each image and channel to its own random mean and contrast, clipped to the pixel range.
    img = (img - img.mean(axis=(1, 2), keepdims=True)) / (img.std(axis=(1, 2), keepdims=True) + 1e-12)
    mean = rng.uniform(64, 192, (n, 1, 1, 3))
    contrast = rng.uniform(24, 64, (n, 1, 1, 1))
    return np.clip(mean + contrast * img, 0, 255).astype(np.float32)


def calibration_count(h: int, w: int) -> int:
    """How many synthetic images calibrate at ``h`` x ``w``: 16 up to 128x128, then fewer (at least 4)."""
    return int(max(_MIN_IMAGES, min(CALIBRATION_IMAGES, round(CALIBRATION_IMAGES * 128 * 128 / (h * w)))))


def calibrate_batchnorm(model, preprocess, *, seed: int, input_size) -> bool:
    """Set every BatchNorm's moving mean/variance of ``model`` (float32) from one seeded synthetic batch.

    ``preprocess`` is the backbone's own preprocessing (pixels 0..255 to the model's input).
    Returns whether the model had any BatchNorm to calibrate.
    """
    import keras

    bns = batchnorm_layers(model)
    if not bns:
        return False
    t0 = time.perf_counter()
    h, w = (int(d) for d in input_size)
    x = preprocess(synthetic_images(calibration_count(h, w), h, w, seed))
    for layer in bns:
        layer.call = _calibrating_call(layer)  # an instance attribute shadows the class's call
    try:
        model(keras.ops.convert_to_tensor(x), training=False)
    finally:
        for layer in bns:
            vars(layer).pop("call", None)
    log.debug("calibrated %d BatchNorm layers of %s on %d synthetic images in %.2f s", len(bns), model.name,
              len(x), time.perf_counter() - t0)
    return True


def _calibrating_call(layer):
    """``layer.call`` that first sets the moving statistics from its input, then normalises with them."""
    from keras import ops

    original = layer.call

    def call(inputs, training=None, mask=None):
        x = ops.cast(inputs, "float32")
        channel = layer.axis % len(x.shape)
        mean, var = ops.moments(x, axes=[i for i in range(len(x.shape)) if i != channel])
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(var)
        return original(inputs, training=False, mask=mask)

    return call

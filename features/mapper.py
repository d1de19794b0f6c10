"""Batch of uint8 images -> {original, flipped} bottleneck tensors. Pure: no I/O, no files.

The flip, the cast and the backbone's own ``preprocess_input`` all run inside one
``tf.function``, so on a GPU only uint8 crosses the bus (4x less than float32) and on a
CPU there is one fused graph. Two model calls per batch (original, then flipped) measured
faster here than one call on the concatenated double batch (see ARCHITECTURE notes).
"""

from __future__ import annotations

import os

import numpy as np

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_POLICY = {"fp32": None, "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 (AMX or AVX512_BF16), where bf16 inference is several times faster."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = f.read()
    except OSError:
        return False
    return any(flag in flags for flag in ("amx_bf16", "avx512_bf16"))


def has_gpu() -> bool:
    """True when TensorFlow sees a GPU."""
    from features.quiet import import_tensorflow_quietly

    tf = import_tensorflow_quietly()  # the first device probe prints CUDA noise on CPU machines

    return bool(tf.config.list_physical_devices("GPU"))


def resolve_precision(requested: str = "auto") -> str:
    """``auto`` -> fp16 on a GPU, bf16 on a bf16-capable CPU, else fp32."""
    if requested not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return requested
    if has_gpu():
        return "fp16"
    if os.environ.get("BNECK_NO_BF16") != "1" and cpu_has_bf16():
        return "bf16"
    return "fp32"


def dtype_policy(precision: str) -> str | None:
    """The Keras dtype policy that implements ``precision`` (None = float32)."""
    return _POLICY[precision]


def _pool(y, pooling: str):
    import tensorflow as tf

    if pooling == "avg":
        return tf.reduce_mean(y, axis=[1, 2])
    if pooling == "max":
        return tf.reduce_max(y, axis=[1, 2])
    return y


def check_batch(batch: np.ndarray, batch_size: int, input_size: tuple[int, int]) -> int:
    """Validate a uint8 batch for an extractor of ``batch_size`` at ``input_size``; returns its length."""
    n = len(batch)
    if n > batch_size:
        raise ValueError(f"batch of {n} exceeds the extractor's batch size {batch_size}")
    if tuple(batch.shape[1:3]) != tuple(input_size):
        raise ValueError(f"batch images are {batch.shape[1:3]}, the model expects {input_size}")
    if batch.dtype != np.uint8:
        raise TypeError(f"batch must be uint8, got {batch.dtype}")
    return n


class Extractor:
    """Callable mapping a uint8 batch (B, H, W, 3) to original and flipped features (``out_dtype``).

    The batch is padded to a fixed ``batch_size`` so the graph is traced once and never
    recompiled for the short last batch.
    """

    def __init__(self, model, preprocess_input, *, pooling: str = "none", flip: bool = True, batch_size: int = 32,
                 out_dtype: str = "float32"):
        import tensorflow as tf

        if pooling not in ("none", "avg", "max"):
            raise ValueError(f"--pooling must be none, avg or max, got {pooling!r}")
        self.model, self.pooling, self.flip, self.batch_size = model, pooling, flip, batch_size
        h, w = model.input_shape[1:3]
        self.input_size = (int(h), int(w))
        spec = tf.TensorSpec((batch_size, h, w, 3), tf.uint8)

        def one_view(x_uint8):
            x = preprocess_input(tf.cast(x_uint8, tf.float32))
            y = model(x, training=False)
            # The store dtype is cast here, in the graph: numpy's float32->float16 conversion was
            # the slowest step of the whole MobileNet pipeline (measured with py-spy).
            return tf.cast(tf.cast(_pool(y, pooling), tf.float32), out_dtype)

        self._orig = tf.function(one_view, input_signature=[spec], reduce_retracing=True)
        self._flip = tf.function(lambda x: one_view(tf.reverse(x, axis=[2])), input_signature=[spec])
        out = model.output_shape[1:]
        self.feature_shape = tuple(int(d) for d in (out[-1:] if pooling != "none" else out))

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Features of ``batch`` and of its mirror image (None when flip is off)."""
        n = check_batch(batch, self.batch_size, self.input_size)
        if n < self.batch_size:
            pad = np.zeros((self.batch_size - n,) + batch.shape[1:], dtype=np.uint8)
            batch = np.concatenate([batch, pad])
        orig = self._orig(batch).numpy()[:n]
        flipped = self._flip(batch).numpy()[:n] if self.flip else None
        return orig, flipped

"""Batch of uint8 images -> {original, flipped} bottleneck tensors. Pure: no I/O, no files.

The flip, the cast and the backbone's own ``preprocess_input`` all run inside one
``tf.function``, so on a GPU only uint8 crosses the bus (4x less than float32) and on a
CPU there is one fused graph. Two model calls per batch (original, then flipped) measured
faster here than one call on the concatenated double batch (see ARCHITECTURE notes).
"""

from __future__ import annotations

import logging

import numpy as np

from features import attrs
from features.faults import oom_above
from features.mapper.batches import check_batch
from features.mapper.device import has_gpu, is_out_of_memory

log = logging.getLogger("bneck")



#: ``--pooling`` at extraction: "mean" is "avg" (the mean patch token of a vision transformer); "cls" is
#: built into a token model itself (it ends in its class token), so here it leaves the (B, C) output as it is.
POOLINGS = attrs.POOLINGS


def pool_output(y, pooling: str):
    """Global average/max pooling of a (B, H, W, C) tensor inside the graph; ``none`` keeps the map."""
    import tensorflow as tf

    if len(y.shape) == 2:  # already a vector (a class token)
        return y
    if pooling in ("avg", "mean"):
        return tf.reduce_mean(y, axis=[1, 2])
    if pooling == "max":
        return tf.reduce_max(y, axis=[1, 2])
    return y


class Pending:
    """A submitted batch: its work is queued on the device; :meth:`result` waits for the features."""

    def __init__(self, extractor, batch: np.ndarray, n: int, outputs):
        self._extractor, self._batch, self._n, self._outputs = extractor, batch, n, outputs

    def result(self) -> tuple[np.ndarray, np.ndarray | None]:
        """``(orig, flipped)`` host arrays of the submitted rows (flipped None without flip)."""
        return self._extractor._collect(self)

    def cancel(self) -> None:
        """Let go of the queued work (TensorFlow finishes or drops it; nothing to wait for)."""
        self._outputs = None


class Extractor:
    """Callable mapping a uint8 batch (B, H, W, 3) to original and flipped features (``out_dtype``).

    The batch is padded to a fixed shape so the graph is traced once and never recompiled for
    the short last batch. :meth:`submit` returns at once on a GPU (TensorFlow queues the work),
    so the runner stages the next batch onto the device while this one computes: with two
    batches in flight, prefetch to the device is the last step of the pipeline. On a device
    out-of-memory error the compute batch halves and the batch is redone (the caller's batch,
    and so the chunk layout of the file, stays the same).
    """

    runtime = "tensorflow"

    def __init__(self, model, preprocess_input, *, pooling: str = "none", flip: bool = True, batch_size: int = 32,
                 out_dtype: str = "float32", xla: bool = False, device: str | None = "auto"):
        if pooling not in POOLINGS:
            raise ValueError(f"--pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.model, self.pooling, self.flip, self.batch_size = model, pooling, flip, batch_size
        self.preprocess_input, self.out_dtype, self.xla = preprocess_input, out_dtype, bool(xla)
        # Where uint8 batches are staged: the GPU when there is one. On a CPU there is nothing
        # to copy, and numpy goes into the graph as it is.
        self.device = ("/GPU:0" if has_gpu() else None) if device == "auto" else device
        h, w = model.input_shape[1:3]
        self.input_size = (int(h), int(w))
        self.compute_batch = batch_size  # halves on device OOM; the caller's batch_size never changes
        self._fns: dict[int, tuple] = {}
        out = model.output_shape[1:]
        self.feature_shape = tuple(int(d) for d in (out[-1:] if pooling != "none" else out))

    def _functions(self, size: int):
        """The (original, flipped) graphs for a fixed batch of ``size``, traced once per size."""
        import tensorflow as tf

        if size not in self._fns:
            h, w = self.input_size
            spec = tf.TensorSpec((size, h, w, 3), tf.uint8)
            model, pre, pooling, out_dtype = self.model, self.preprocess_input, self.pooling, self.out_dtype

            def one_view(x_uint8):
                x = pre(tf.cast(x_uint8, tf.float32))
                y = model(x, training=False)
                # The store dtype is cast here, in the graph: numpy's float32->float16 conversion was
                # the slowest step of the whole MobileNet pipeline (measured with py-spy).
                return tf.cast(tf.cast(pool_output(y, pooling), tf.float32), out_dtype)

            opts = dict(input_signature=[spec], jit_compile=self.xla or None)
            self._fns[size] = (tf.function(one_view, **opts),
                               tf.function(lambda x: one_view(tf.reverse(x, axis=[2])), **opts))
        return self._fns[size]

    def _stage(self, x: np.ndarray):
        """Copy a uint8 batch to the compute device (4x less to move than float32)."""
        if self.device is None:
            return x
        import tensorflow as tf

        with tf.device(self.device):
            return tf.identity(x)

    def _launch(self, x: np.ndarray) -> list:
        """Queue every sub-batch of ``x`` (a multiple of compute_batch rows); returns output tensors."""
        size = self.compute_batch
        if size > oom_above():  # the reliability tests' stand-in for a card that is too small
            import tensorflow as tf

            raise tf.errors.ResourceExhaustedError(None, None, f"simulated: batch {size} > BNECK_TEST_OOM_ABOVE")
        fo, ff = self._functions(size)
        outs = []
        for a in range(0, len(x), size):
            part = self._stage(x[a:a + size])
            outs.append((fo(part), ff(part) if self.flip else None))
        return outs

    def _padded(self, batch: np.ndarray, n: int) -> np.ndarray:
        size = self.compute_batch
        total = -(-max(n, 1) // size) * size
        if total == n:
            return batch
        pad = np.zeros((total - n,) + batch.shape[1:], dtype=np.uint8)
        return np.concatenate([batch, pad])

    def submit(self, batch: np.ndarray) -> Pending:
        """Queue ``batch`` and return at once where the device allows (GPU); see :class:`Pending`."""
        n = check_batch(batch, self.batch_size, self.input_size)
        while True:
            try:
                return Pending(self, batch, n, self._launch(self._padded(batch, n)))
            except Exception as exc:  # noqa: BLE001  (only OOM is handled; the rest re-raises)
                self._back_off(exc)

    def _collect(self, pending: Pending):
        n = pending._n
        while True:
            try:
                if pending._outputs is None:  # redo after a back-off
                    pending._outputs = self._launch(self._padded(pending._batch, n))
                orig = np.concatenate([o.numpy() for o, _ in pending._outputs])[:n]
                flipped = np.concatenate([f.numpy() for _, f in pending._outputs])[:n] if self.flip else None
                return orig, flipped
            except Exception as exc:  # noqa: BLE001
                self._back_off(exc)
                pending._outputs = None

    def _back_off(self, exc: Exception) -> None:
        """Halve the compute batch after a device OOM, or re-raise anything else."""
        if not is_out_of_memory(exc):
            raise exc
        if self.compute_batch <= 1:
            raise MemoryError(f"the device ran out of memory even at batch 1 ({exc}); "
                              "use a smaller --input-size or a lighter backbone") from exc
        self.compute_batch = max(1, self.compute_batch // 2)
        self._fns.clear()  # free the big batch's graphs before tracing the smaller one
        log.warning("device out of memory: backing off to batch %d (--batch-size %d still sets the file's "
                    "chunks; only the model call is split)", self.compute_batch, self.batch_size)

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Features of ``batch`` and of its mirror image (None when flip is off)."""
        return self.submit(batch).result()

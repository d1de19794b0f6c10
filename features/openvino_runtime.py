"""OpenVINO CPU runtime for stage one: the same interface as :class:`features.mapper.Extractor`.

How the graph is made: the Keras backbone (already truncated at the chosen layer) is wrapped
with the uint8 -> float32 cast, the backbone's own ``preprocess_input`` and the pooling in one
``tf.function`` traced with a *dynamic* batch dimension (autograph off), and that concrete
function goes straight to ``openvino.convert_model`` in memory (no SavedModel on disk; weights
become constants). The resulting ``ov.Model`` is then reshaped to a static
``(request_batch, H, W, 3)`` uint8 input, because a model traced at a fixed batch cannot be
reshaped later (e.g. EfficientNet's squeeze-excite bakes the batch into a Reshape constant).

How it runs: compiled for CPU with ``PERFORMANCE_HINT=THROUGHPUT`` (several streams, each a
few cores) and ``INFERENCE_PRECISION_HINT`` bf16 or f32. One call submits the original and the
mirrored view (flipped with numpy on uint8, which is cheap) as separate asynchronous infer
requests so the streams work in parallel. When there are more streams than views (no flip, or
many cores) each view is split into sub-batches so every stream gets work. The model must be
float32: OpenVINO applies bf16 itself, and a Keras ``mixed_bfloat16`` graph does not compile.

Compiled blobs are cached in ``cache_dir`` (OpenVINO's ``CACHE_DIR``), so a second run with
the same model and settings skips compilation; conversion from TensorFlow is repeated each run.
An instance is not re-entrant: call it from one thread at a time (the runner's main thread).
"""

from __future__ import annotations

import logging
import os
import threading

import numpy as np

log = logging.getLogger("bneck")

PRECISIONS = ("bf16", "fp32")
_OV_PRECISION = {"bf16": "bf16", "fp32": "f32"}
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "bneck", "openvino")


def available() -> bool:
    """True when the optional ``openvino`` package (``pip install bneck[openvino]``) is importable."""
    try:
        import openvino  # noqa: F401
    except Exception:  # noqa: BLE001  (ImportError, or a broken native library)
        return False
    return True


def _check_float32(model) -> None:
    dtypes = {getattr(layer, "compute_dtype", "float32") for layer in model.layers}
    dtypes.add(getattr(model, "compute_dtype", "float32"))
    if dtypes - {"float32"}:
        raise ValueError(
            f"the OpenVINO runtime needs a float32 backbone, this one computes in {sorted(dtypes)}; build it "
            "with dtype_policy=None and pass precision='bf16' (OpenVINO applies bf16 itself)")


def convert(model, preprocess_input, pooling: str = "none", out_dtype: str = "float32"):
    """The OpenVINO model of uint8 (batch?, H, W, 3) -> float32 features (cast, preprocess, backbone, pooling)."""
    import openvino as ov
    import tensorflow as tf

    from features.mapper import _pool

    h, w = (int(d) for d in model.input_shape[1:3])

    def graph(x_uint8):
        y = model(preprocess_input(tf.cast(x_uint8, tf.float32)), training=False)
        return tf.cast(tf.cast(_pool(y, pooling), tf.float32), out_dtype)  # store dtype cast in the graph

    fn = tf.function(graph, input_signature=[tf.TensorSpec((None, h, w, 3), tf.uint8)], autograph=False)
    return ov.convert_model(fn.get_concrete_function())


def _type_name(t) -> str:
    return t.get_type_name() if hasattr(t, "get_type_name") else str(t)  # "bf16", "f32"


class OpenVINOExtractor:
    """Callable mapping a uint8 batch (B, H, W, 3) to float32 original and flipped features.

    Same contract as :class:`features.mapper.Extractor`: ``batch`` may be shorter than
    ``batch_size`` (it is zero-padded to the fixed compiled shape); returns
    ``(orig, flipped)`` float32 arrays of shape ``(B,) + feature_shape``, flipped None without flip.
    """

    runtime = "openvino"

    def __init__(self, model, preprocess_input, *, pooling: str = "none", flip: bool = True,
                 batch_size: int = 32, precision: str = "bf16", cache_dir: str | None = None,
                 out_dtype: str = "float32"):
        import openvino as ov

        if pooling not in ("none", "avg", "max"):
            raise ValueError(f"--pooling must be none, avg or max, got {pooling!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"the OpenVINO runtime supports --precision {' or '.join(PRECISIONS)}, got {precision!r}")
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        _check_float32(model)
        self.model, self.pooling, self.flip, self.batch_size = model, pooling, flip, batch_size
        self.precision = precision
        h, w = model.input_shape[1:3]
        self.input_size = (int(h), int(w))
        out = model.output_shape[1:]
        self.feature_shape = tuple(int(d) for d in (out[-1:] if pooling != "none" else out))
        self.cache_dir: str | None = cache_dir or DEFAULT_CACHE_DIR
        try:
            os.makedirs(self.cache_dir, exist_ok=True)
        except OSError as exc:  # a read-only home on a cluster node: run, just without the cache
            log.warning("OpenVINO model cache disabled: cannot create %s (%s)", self.cache_dir, exc)
            self.cache_dir = None
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()

        self._core = ov.Core()
        self.out_dtype = np.dtype(out_dtype)
        self._ov_model = convert(model, preprocess_input, pooling, out_dtype)
        views = 2 if flip else 1
        compiled = self._compile(batch_size)
        self.streams = int(compiled.get_property("NUM_STREAMS"))
        # Give every stream a request: split each view into sub-batches when streams outnumber views.
        parts = max(1, min(batch_size, -(-self.streams // views)))
        self.request_batch = -(-batch_size // parts)
        if self.request_batch != batch_size:
            compiled = self._compile(self.request_batch)
        self._parts = -(-batch_size // self.request_batch)
        self._compiled = compiled
        self._queue = ov.AsyncInferQueue(compiled, views * self._parts)
        self._queue.set_callback(self._done)

    def _compile(self, request_batch: int):
        h, w = self.input_size
        self._ov_model.reshape({0: [request_batch, h, w, 3]})
        config = {
            "PERFORMANCE_HINT": "THROUGHPUT",
            "INFERENCE_PRECISION_HINT": _OV_PRECISION[self.precision],
        }
        if self.cache_dir:
            config["CACHE_DIR"] = self.cache_dir
        return self._core.compile_model(self._ov_model, "CPU", config)

    def _done(self, request, userdata) -> None:
        out, rows = userdata
        try:
            out[rows] = request.get_output_tensor(0).data
        except BaseException as exc:  # noqa: BLE001  (re-raised in the calling thread)
            with self._lock:
                self._errors.append(exc)

    def describe(self) -> dict:
        """How the model was compiled (for logs and benches)."""
        c = self._compiled
        return {
            "runtime": "openvino", "precision": self.precision, "streams": self.streams,
            "request_batch": self.request_batch, "requests_per_call": (2 if self.flip else 1) * self._parts,
            "inference_precision": _type_name(c.get_property("INFERENCE_PRECISION_HINT")),
            "threads": int(c.get_property("INFERENCE_NUM_THREADS")), "cache_dir": self.cache_dir,
        }

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Features of ``batch`` and of its mirror image (None when flip is off)."""
        from features.mapper import check_batch

        n = check_batch(batch, self.batch_size, self.input_size)
        padded = self._parts * self.request_batch
        x = np.zeros((padded,) + self.input_size + (3,), dtype=np.uint8)
        x[:n] = batch
        views = [x, np.ascontiguousarray(x[:, :, ::-1])] if self.flip else [x]
        outs = [np.empty((padded,) + self.feature_shape, dtype=self.out_dtype) for _ in views]
        self._errors.clear()
        rb = self.request_batch
        for src, out in zip(views, outs):
            for p in range(self._parts):
                rows = slice(p * rb, (p + 1) * rb)
                # share_inputs: no copy; safe because wait_all() returns before src goes away.
                self._queue.start_async({0: src[rows]}, (out, rows), share_inputs=True)
        self._queue.wait_all()
        if self._errors:
            raise RuntimeError(f"OpenVINO inference failed: {self._errors[0]}") from self._errors[0]
        return outs[0][:n], (outs[1][:n] if self.flip else None)

"""OpenVINO CPU runtime for stage one: the same interface as :class:`features.mapper.tf_runtime.Extractor`.

How the graph is made: the Keras backbone (already truncated at the chosen layer) is wrapped
with the uint8 -> float32 cast, the backbone's own ``preprocess_input`` and the pooling in one
``tf.function`` traced with a *dynamic* batch dimension (autograph off), and that concrete
function goes straight to ``openvino.convert_model`` in memory (no SavedModel on disk; weights
become constants). The resulting ``ov.Model`` is then reshaped to a static
``(request_batch, H, W, 3)`` uint8 input, because a model traced at a fixed batch cannot be
reshaped later (e.g. EfficientNet's squeeze-excite bakes the batch into a Reshape constant).

How it runs: compiled for CPU with ``PERFORMANCE_HINT=THROUGHPUT`` (several streams, each a
few cores) and ``INFERENCE_PRECISION_HINT`` bf16 or f32. ``precision="int8"`` first quantizes
the converted model with NNCF on a calibration set (:mod:`features.mapper.int8`) and caches the result
beside the converted model. Each batch's original and mirrored
view (mirrored by the caller's decode threads, or here with numpy) go as separate asynchronous infer requests
so the streams work in parallel. When there are more streams than views (no flip, or
many cores) each view is split into sub-batches so every stream gets work. The model must be
float32: OpenVINO applies bf16 itself, and a Keras ``mixed_bfloat16`` graph does not compile.

Two caches in ``cache_dir`` make a second run start in a fraction of a second instead of
1.5-5 s: the converted model (OpenVINO IR under ``converted/<key>/``, written atomically, keyed by
the caller's ``model_key`` -- weights sha256, backbone, layer -- plus pooling, dtype, input size
and the TensorFlow/OpenVINO versions), and the compiled blobs (OpenVINO's ``CACHE_DIR``).
Without a ``model_key`` the model is converted every time.

:meth:`submit` queues a batch and returns at once; the runner keeps ``IN_FLIGHT`` batches queued
so the streams never wait for the main thread between batches. An instance is not re-entrant:
call it from one thread at a time (the runner's main thread).
"""

from __future__ import annotations

import logging
import os
import threading

import numpy as np

from features.mapper.tf_runtime import POOLINGS

log = logging.getLogger("bneck")

PRECISIONS = ("bf16", "fp32", "int8")
_OV_PRECISION = {"bf16": "bf16", "fp32": "f32"}  # int8: the ops NNCF leaves in float run in bf16 where the CPU has it
# Bumped when convert() changes what it builds, so older cached conversions are not reused.
CONVERT_VERSION = "1"
IN_FLIGHT = 2  # batches queued at once by the runner (features.runner keeps this many in flight)
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "bneck", "openvino")


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

    from features.mapper.tf_runtime import pool_output

    h, w = (int(d) for d in model.input_shape[1:3])

    def graph(x_uint8):
        y = model(preprocess_input(tf.cast(x_uint8, tf.float32)), training=False)
        return tf.cast(tf.cast(pool_output(y, pooling), tf.float32), out_dtype)  # store dtype cast in the graph

    fn = tf.function(graph, input_signature=[tf.TensorSpec((None, h, w, 3), tf.uint8)], autograph=False)
    return ov.convert_model(fn.get_concrete_function())


def model_key_digest(model_key: str, pooling: str, out_dtype: str, input_size) -> str:
    """Cache key of a converted model: the caller's key (weights, layer...) plus what the graph bakes in."""
    import hashlib

    import openvino as ov
    import tensorflow as tf

    text = "|".join([CONVERT_VERSION, model_key, pooling, str(np.dtype(out_dtype)), str(tuple(input_size)),
                     tf.__version__, ov.get_version()])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def converted_path(cache_dir: str, digest: str) -> str:
    """Where the converted model (OpenVINO IR: .xml + .bin) of ``digest`` lives in ``cache_dir``."""
    return os.path.join(cache_dir, "converted", digest, "model.xml")


def _save_atomically(ov, ov_model, path: str) -> None:
    """Write the IR into a temp dir and rename it into place: a killed run never leaves half a model."""
    final_dir = os.path.dirname(path)
    # Not fsutil.replace_dir: a cache entry is never replaced (another process that got there first
    # wins and this copy is dropped) and never fsynced (a lost entry is converted again).
    tmp_dir = f"{final_dir}.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        ov.save_model(ov_model, os.path.join(tmp_dir, "model.xml"), compress_to_fp16=False)
        os.replace(tmp_dir, final_dir)
    except OSError as exc:  # another process won the race (non-empty target), or the cache is read-only
        log.debug("converted model not cached at %s: %s", final_dir, exc)
        import shutil

        shutil.rmtree(tmp_dir, ignore_errors=True)


def _type_name(t) -> str:
    return t.get_type_name() if hasattr(t, "get_type_name") else str(t)  # "bf16", "f32"


class OpenVINOExtractor:
    """Callable mapping a uint8 batch (B, H, W, 3) to float32 original and flipped features.

    Same contract as :class:`features.mapper.tf_runtime.Extractor`: ``batch`` may be shorter than
    ``batch_size`` (it is zero-padded to the fixed compiled shape); returns
    ``(orig, flipped)`` float32 arrays of shape ``(B,) + feature_shape``, flipped None without flip.
    """

    runtime = "openvino"
    #: :meth:`submit` takes the mirrored batch from the caller (made in the decode threads, in C),
    #: so the main thread does not copy it while the model waits.
    takes_mirrored = True

    def __init__(self, model, preprocess_input, *, pooling: str = "none", flip: bool = True,
                 batch_size: int = 32, precision: str = "bf16", cache_dir: str | None = None,
                 out_dtype: str = "float32", model_key: str | None = None, calibration=None):
        import openvino as ov

        if pooling not in POOLINGS:
            raise ValueError(f"--pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"the OpenVINO runtime supports --precision {' or '.join(PRECISIONS)}, got {precision!r}")
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        if (precision == "int8") != (calibration is not None):
            raise ValueError("precision='int8' needs a calibration set (features.mapper.int8.Calibration), "
                             "and only int8 takes one")
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
        self._lock = threading.Lock()

        self._core = ov.Core()
        self.out_dtype = np.dtype(out_dtype)
        self.model_key = model_key
        self._ov_model, self.converted_from_cache = self._converted(model, preprocess_input, pooling, out_dtype)
        if calibration is not None:
            self._ov_model, self.quantized_from_cache = self._quantized(calibration)
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
        # Requests for IN_FLIGHT batches, so the next batch's requests are queued while this
        # batch's run: the streams never wait for the main thread between batches.
        self._queue = ov.AsyncInferQueue(compiled, IN_FLIGHT * views * self._parts)
        self._queue.set_callback(self._done)

    def _converted(self, model, preprocess_input, pooling, out_dtype):
        """The OpenVINO model: read from the cache when ``model_key`` was converted before, else converted now."""
        return self._cached(self.model_key, "converted-model",
                            lambda: convert(model, preprocess_input, pooling, out_dtype))

    def _quantized(self, calibration):
        """The int8 model: read from the cache when this model and calibration set were quantized before."""
        import nncf

        from features.mapper import int8

        key = f"{self.model_key}|int8|{calibration.key}|{nncf.__version__}" if self.model_key else None
        return self._cached(key, "int8", lambda: int8.quantize(self._ov_model, calibration.images()))

    def _cached(self, key, what: str, make):
        """``(model, from_cache)``: the IR cached under ``key`` (and this graph's pooling, dtype, size), else make().

        A made model is saved atomically under the key; a damaged entry is made again and replaced.
        Without a cache dir or a key nothing is cached.
        """
        import openvino as ov

        path = converted_path(self.cache_dir, model_key_digest(key, self.pooling, str(self.out_dtype),
                                                               self.input_size)) if self.cache_dir and key else None
        if path and os.path.exists(path):
            try:
                return self._core.read_model(path), True
            except Exception as exc:  # noqa: BLE001  (a damaged cache entry: make it again and replace it)
                log.warning("OpenVINO %s cache entry %s is unreadable (%s); making it again", what, path, exc)
        ov_model = make()
        if path:
            _save_atomically(ov, ov_model, path)
        return ov_model, False

    def _compile(self, request_batch: int):
        h, w = self.input_size
        self._ov_model.reshape({0: [request_batch, h, w, 3]})
        config = {
            "PERFORMANCE_HINT": "THROUGHPUT",
            "INFERENCE_PRECISION_HINT": _OV_PRECISION.get(self.precision) or self._int8_float_precision(),
        }
        if self.cache_dir:
            config["CACHE_DIR"] = self.cache_dir
        return self._core.compile_model(self._ov_model, "CPU", config)

    @staticmethod
    def _int8_float_precision() -> str:
        from features.mapper.device import cpu_has_bf16

        return "bf16" if cpu_has_bf16() else "f32"

    def _done(self, request, userdata) -> None:
        pending, out, rows = userdata
        error = None
        try:
            out[rows] = request.get_output_tensor(0).data
        except BaseException as exc:  # noqa: BLE001  (re-raised in the calling thread by result())
            error = exc
        pending._finish_one(error)

    def describe(self) -> dict:
        """How the model was compiled (for logs and benches)."""
        c = self._compiled
        return {
            "runtime": "openvino", "precision": self.precision, "streams": self.streams,
            "request_batch": self.request_batch, "requests_per_call": (2 if self.flip else 1) * self._parts,
            "inference_precision": _type_name(c.get_property("INFERENCE_PRECISION_HINT")),
            "threads": int(c.get_property("INFERENCE_NUM_THREADS")), "cache_dir": self.cache_dir,
            "converted_from_cache": self.converted_from_cache,
            **({"quantized_from_cache": self.quantized_from_cache} if self.precision == "int8" else {}),
        }

    def submit(self, batch: np.ndarray, mirrored: np.ndarray | None = None) -> "_OVPending":
        """Start ``batch`` (both views) on the streams and return at once; ``.result()`` waits for it.

        ``mirrored`` is ``batch`` already mirrored left-right, when the caller has it (the runner's
        decode threads make it); otherwise it is made here.
        """
        from features.mapper.batches import check_batch, mirror_batch

        n = check_batch(batch, self.batch_size, self.input_size)
        x = self._padded(batch, n)
        views = [x]
        if self.flip:
            if mirrored is not None and mirrored.shape != batch.shape:
                raise ValueError(f"mirrored batch has shape {mirrored.shape}, the batch {batch.shape}")
            views.append(self._padded(mirrored, n) if mirrored is not None else mirror_batch(x))
        outs = [np.empty((len(x),) + self.feature_shape, dtype=self.out_dtype) for _ in views]
        pending = _OVPending(self, n, views, outs, len(views) * self._parts)
        rb = self.request_batch
        for src, out in zip(views, outs):
            for p in range(self._parts):
                rows = slice(p * rb, (p + 1) * rb)
                # share_inputs: no copy; safe because the pending batch holds ``views`` until done.
                self._queue.start_async({0: src[rows]}, (pending, out, rows), share_inputs=True)
        return pending

    def _padded(self, batch: np.ndarray, n: int) -> np.ndarray:
        """``batch`` at the compiled shape: shared with the requests when it already is, else a padded copy."""
        padded = self._parts * self.request_batch
        if n == padded and batch.flags.c_contiguous:
            return batch  # not copied: the caller must not change it until result()
        x = np.zeros((padded,) + self.input_size + (3,), dtype=np.uint8)
        x[:n] = batch
        return x

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Features of ``batch`` and of its mirror image (None when flip is off)."""
        return self.submit(batch).result()


class _OVPending:
    """One submitted batch: its requests count down; :meth:`result` waits for the last one."""

    def __init__(self, extractor: OpenVINOExtractor, n: int, views, outs, requests: int):
        self._ex, self._n, self._views, self._outs = extractor, n, views, outs
        self._left, self._done, self._error = requests, threading.Event(), None

    def _finish_one(self, error: BaseException | None) -> None:
        with self._ex._lock:
            self._error = self._error or error
            self._left -= 1
            if self._left == 0:
                self._done.set()

    def result(self) -> tuple[np.ndarray, np.ndarray | None]:
        """``(orig, flipped)`` of the submitted rows (flipped None without flip)."""
        self._done.wait()
        self._views = None  # the inputs may go now
        if self._error is not None:
            raise RuntimeError(f"OpenVINO inference failed: {self._error}") from self._error
        n = self._n
        return self._outs[0][:n], (self._outs[1][:n] if len(self._outs) > 1 else None)

    def cancel(self) -> None:
        """Wait for the requests to finish (their inputs are shared, not copied), dropping the result."""
        self._done.wait()
        self._views = None

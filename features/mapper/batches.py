"""Rows -> batches -> chunks for the stage-one runner, keeping each row's features, validity,
reason and image size together (a row never drifts from its features).

A chunk's arrays are preallocated and each collected batch is copied into its slice, so a
finished chunk goes to the writer thread as it is. Stacking per-row arrays instead cost 0.75 s
of main-thread time per 2,000 MobileNet images (7% of the run), time the model could use.
"""

from __future__ import annotations

import threading

import numpy as np


class BatchRing:
    """The model's uint8 input batches, assembled into a few arrays reused in turn.

    Reuse matters: a fresh 4.8 MB batch array page-faults on first touch, which made assembling
    a batch cost ~7 ms of main-thread time in a VM (py-spy) instead of a plain copy. ``slots``
    must exceed the batches in flight, because extractors may share the arrays without copying
    until a batch's result is collected.
    """

    def __init__(self, slots: int, batch_size: int, input_size, views: int = 1):
        h, w = input_size
        self._slots = [[np.zeros((batch_size, h, w, 3), dtype=np.uint8) for _ in range(views)]
                       for _ in range(slots)]
        self._next = 0

    def assemble(self, results) -> list[np.ndarray]:
        """The batch of decoded rows, one array per view; bad rows are zero (their features are zeroed later).

        Each decoded row is ``(arr, size, reason)``, or ``(arr, size, reason, mirrored)`` when the
        decode threads also mirrored it (view 1).
        """
        arrays = self._slots[self._next]
        self._next = (self._next + 1) % len(self._slots)
        n = len(results)
        out = []
        for view, x in enumerate(arrays):
            x = x[:n]  # a short last batch: the leading rows, still C-contiguous
            for j, (_, _, decoded) in enumerate(results):
                arr = decoded[view * 3]  # arr, or the mirrored arr after size and reason
                x[j] = 0 if arr is None else arr
            out.append(x)
        return out


class Done:
    """A finished batch, for extractors that only have ``__call__`` (no asynchronous submit)."""

    def __init__(self, out):
        self._out = out

    def result(self):
        """The extractor's ``(orig, flipped)``."""
        return self._out

    def cancel(self):
        """Nothing is running."""


def submit(extractor, x: np.ndarray, mirrored: np.ndarray | None = None):
    """Queue ``x`` on the extractor: asynchronously when it can (OpenVINO, TensorFlow on a GPU).

    ``mirrored`` (``x`` mirrored left-right) goes along to extractors that take it.
    """
    start = getattr(extractor, "submit", None)
    if start is None:
        return Done(extractor(x))
    return start(x, mirrored) if mirrored is not None else start(x)


class ChunkBuffer:
    """The rows of one chunk being filled; :meth:`arrays` is what the chunk file stores."""

    def __init__(self, n_rows: int, store_dtype: str):
        self.n_rows, self.store_dtype = n_rows, store_dtype
        self.features = self.features_flipped = None
        self.reset()

    def reset(self) -> None:
        """Empty the buffer for another chunk of the same size, keeping the feature arrays.

        Reuse matters: first-touching fresh pages of a 25 MB feature array cost 10x the copy
        itself (2.7 vs 0.25 ms per MobileNet batch, measured).
        """
        self.filled = 0
        self.valid = np.zeros(self.n_rows, dtype=bool)
        self.reason = [""] * self.n_rows
        self.image_size = np.zeros((self.n_rows, 2), dtype=np.int32)

    @property
    def full(self) -> bool:
        """True once every row of the chunk has been put."""
        return self.filled == self.n_rows

    def put(self, offset: int, results, orig: np.ndarray, flipped: np.ndarray | None) -> int:
        """Store a batch of consecutive rows starting at ``offset``; bad rows get zero features.

        Returns how many good rows the store dtype destroyed (:func:`lost_rows`).
        """
        n = len(results)
        if self.features is None or self.features.shape[1:] != orig.shape[1:]:  # known from the first batch
            self.features = np.zeros((self.n_rows,) + orig.shape[1:], dtype=self.store_dtype)
            if flipped is not None:
                self.features_flipped = np.zeros_like(self.features)
        rows = slice(offset, offset + n)
        self.features[rows] = orig[:n]  # a cast only when the extractor did not cast in-graph
        if flipped is not None:
            self.features_flipped[rows] = flipped[:n]
        for j, (_, _, (arr, size, reason, *_)) in enumerate(results):
            if arr is None:
                self.features[offset + j] = 0
                if flipped is not None:
                    self.features_flipped[offset + j] = 0
                self.reason[offset + j] = reason
            else:
                self.valid[offset + j] = True
                self.image_size[offset + j] = size
        self.filled += n
        good = self.valid[rows]
        lost = lost_rows(self.features[rows][good])
        if flipped is not None:
            lost = max(lost, lost_rows(self.features_flipped[rows][good]))
        return lost

    def arrays(self) -> dict[str, np.ndarray]:
        """The chunk's named arrays (features, features_flipped, valid, reason, image_size)."""
        out = {"features": self.features, "valid": self.valid, "reason": np.array(self.reason, dtype=str),
               "image_size": self.image_size}
        if self.features_flipped is not None:
            out["features_flipped"] = self.features_flipped
        return out


class BufferPool:
    """Chunk buffers handed back by the writer thread once written, for the next chunks."""

    def __init__(self, store_dtype: str):
        self.store_dtype, self._free, self._lock = store_dtype, [], threading.Lock()

    def get(self, n_rows: int) -> ChunkBuffer:
        """A reset buffer of ``n_rows`` (a recycled one when there is one of that size)."""
        with self._lock:
            for i, chunk in enumerate(self._free):
                if chunk.n_rows == n_rows:
                    chunk = self._free.pop(i)
                    chunk.reset()
                    return chunk
        return ChunkBuffer(n_rows, self.store_dtype)

    def give_back(self, chunk: ChunkBuffer) -> None:
        """Called by the writer once ``chunk`` is on disk."""
        with self._lock:
            self._free.append(chunk)


def lost_rows(stored: np.ndarray) -> int:
    """Rows of ``stored`` (good images only) that the store dtype destroyed or nearly so.

    Only float16 can do this (its range is 6e-8 .. 65504): a backbone whose activations are tiny
    (a random-initialised MobileNet gives ~1e-19) is stored as exact zeros, and a head trained on
    them learns nothing. A row counts as lost when it is all zero, holds an infinity, or when most of
    its non-zero values are float16 subnormals (below 6.1e-5, kept with fewer than 10 significant
    bits): activations that small have mostly been flushed to zero beside them. A float32 row of
    zeros is a real (if odd) feature row and is not counted.
    """
    if stored.dtype != np.float16 or not len(stored):
        return 0
    flat = stored.reshape(len(stored), -1)
    nonzero = flat != 0
    subnormal = nonzero & (np.abs(flat) < np.finfo(np.float16).tiny)
    mostly_subnormal = 2 * subnormal.sum(axis=1) > nonzero.sum(axis=1)
    return int((~np.isfinite(flat).all(axis=1) | ~nonzero.any(axis=1) | mostly_subnormal).sum())


class StoreRangeError(ValueError):
    """The features do not fit the store dtype (float16 underflow or overflow): stopped before more work."""


class LostRows:
    """The run's count of good rows the float16 store lost: stops a run whose every good row so far is lost.

    Stopping early matters: a run of random BatchNorm weights or an odd layer would otherwise compute a whole
    dataset of zeros. Once some rows have been kept, losing others is reported at the end instead, with the count.
    """

    def __init__(self):
        self.lost = self.kept = 0

    def add(self, lost: int, good: int) -> None:
        """Count a batch's ``good`` rows, ``lost`` of which the store lost; raises if none was ever kept."""
        if lost and lost == good and not self.kept:
            raise StoreRangeError(
                f"every feature row so far ({self.lost + lost}) is lost in the float16 store (all zeros, infinite "
                "or mostly below float16's range: the backbone's activations do not fit it, as with random "
                "weights on a BatchNorm backbone). Rerun with --store-dtype float32 --overwrite")
        self.lost += lost
        self.kept += good - lost

    def warning(self) -> str | None:
        """The end-of-run warning, or None when no row was lost."""
        if not self.lost:
            return None
        return (f"{self.lost} of {self.lost + self.kept} feature rows were lost in the float16 store (all zeros, "
                "infinite or mostly below its range) and will train nothing; extract with --store-dtype float32 "
                "--overwrite to keep them")


def store_rows(results, features, buf: dict, chunk_range, pool: BufferPool) -> int:
    """Put a collected batch (rows of one chunk, in order) into that chunk's buffer in ``buf``.

    Returns the number of good rows the float16 store destroyed (:func:`lost_rows`).
    """
    orig, flipped = features
    k, first = results[0][0], results[0][1]
    a, b = chunk_range(k)
    if k not in buf:
        buf[k] = pool.get(b - a)
    return buf[k].put(first - a, results, orig, flipped)


def mirror_batch(x: np.ndarray) -> np.ndarray:
    """Left-right mirror of a uint8 batch (B, H, W, C), reversing whole pixels at once.

    Viewing each pixel as one C-byte item makes numpy's reversed copy 3x faster than
    ``x[:, :, ::-1]`` on the uint8 axis (6.6 vs 19 ms per batch of 32 at 224 px, measured).
    """
    x = np.ascontiguousarray(x)
    pixels = x.view(f"V{x.shape[-1] * x.itemsize}")  # (B, H, W, 1): one item per pixel
    return np.ascontiguousarray(pixels[:, :, ::-1]).view(x.dtype).reshape(x.shape)


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

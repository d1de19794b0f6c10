"""features.batches: rows stay with their features through batches and recycled chunk buffers."""

import numpy as np

from features import batches


def _results(k, first, n, bad=()):
    out = []
    for j in range(n):
        i = first + j
        arr = None if i in bad else np.full((4, 4, 3), i, np.uint8)
        out.append((k, i, (arr, (10 + i, 20 + i), "not_image" if i in bad else "")))
    return out


def test_chunk_buffer_keeps_rows_aligned_and_zeroes_bad_rows():
    pool = batches.BufferPool("float16")
    buf = {}
    chunk_range = lambda k: (4 * k, 4 * k + 4)  # noqa: E731
    for first in (4, 6):  # chunk 1 in two batches of 2
        res = _results(1, first, 2, bad={5})
        x = batches.assemble(res, (4, 4))
        feats = x.reshape(2, -1)[:, :3].astype(np.float32) + 0.5  # features that name their row
        batches.store_rows(res, (feats, -feats), buf, chunk_range, pool)
    chunk = buf[1]
    assert chunk.full
    a = chunk.arrays()
    assert a["features"].dtype == np.float16 and a["features"][:, 0].tolist() == [4.5, 0, 6.5, 7.5]
    assert a["features_flipped"][:, 0].tolist() == [-4.5, 0, -6.5, -7.5]
    assert a["valid"].tolist() == [True, False, True, True] and a["reason"].tolist() == ["", "not_image", "", ""]
    assert a["image_size"].tolist() == [[14, 24], [0, 0], [16, 26], [17, 27]]


def test_pool_recycles_written_buffers_clean():
    pool = batches.BufferPool("float32")
    first = pool.get(2)
    first.put(0, _results(0, 0, 2, bad={1}), np.ones((2, 3)), None)
    arrays_before = first.features
    pool.give_back(first)
    again = pool.get(2)
    assert again is first and again.features is arrays_before and again.filled == 0
    assert not again.valid.any() and again.reason == ["", ""] and "features_flipped" not in again.arrays()
    assert pool.get(3) is not first  # another size: a new buffer


def test_submit_wraps_plain_callables():
    done = batches.submit(lambda x: (x + 1, None), np.zeros(2))
    assert done.result()[0].tolist() == [1, 1]
    done.cancel()

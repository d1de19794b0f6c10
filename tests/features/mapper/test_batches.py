"""features.mapper.batches: rows stay with their features through batches and recycled chunk buffers."""

import numpy as np

from features.mapper import batches


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
        x, = batches.BatchRing(2, 2, (4, 4)).assemble(res)
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


def test_ring_assembles_both_views_and_reuses_its_arrays():
    rows = [(0, 0, (np.full((2, 2, 3), 1, np.uint8), (2, 2), "", np.full((2, 2, 3), 2, np.uint8))),
            (0, 1, (None, (0, 0), "empty", None))]
    ring = batches.BatchRing(2, 3, (2, 2), views=2)
    first = ring.assemble([(0, 0, (np.full((2, 2, 3), 9, np.uint8), (2, 2), "", np.full((2, 2, 3), 9, np.uint8)))] * 3)
    second = ring.assemble(rows)
    assert [x.shape[0] for x in second] == [2, 2] and all(x.flags.c_contiguous for x in second)
    assert second[0][:, 0, 0, 0].tolist() == [1, 0] and second[1][:, 0, 0, 0].tolist() == [2, 0]
    third = ring.assemble(rows)  # back in the first slot: yesterday's 9s are gone from the bad row
    assert np.shares_memory(third[0], first[0]) and not np.shares_memory(second[0], first[0])
    assert third[0][:, 0, 0, 0].tolist() == [1, 0] and not third[1][1].any()
    pool, buf = batches.BufferPool("float32"), {}
    batches.store_rows(rows, (np.ones((2, 1)), np.ones((2, 1))), buf, lambda k: (0, 2), pool)
    assert buf[0].arrays()["valid"].tolist() == [True, False] and buf[0].arrays()["reason"].tolist() == ["", "empty"]

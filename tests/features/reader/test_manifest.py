"""Manifest: fingerprint stability and sensitivity, shard arithmetic, shard parsing."""

import os

import numpy as np
import pytest

from features.reader.manifest import Manifest, parse_shard, shard_bounds


def _files(tmp_path, n=3):
    for i in range(n):
        (tmp_path / f"{i}.png").write_bytes(b"x" * (i + 1))
    return Manifest("folder", str(tmp_path), [f"{i}.png" for i in range(n)],
                    labels=np.arange(n) % 2, class_names=["a", "b"])


def test_basic_properties(tmp_path):
    m = _files(tmp_path)
    assert len(m) == 3 and m.task == "classification"
    assert m.source(1) == os.path.join(str(tmp_path), "1.png")
    assert m.labels.dtype == np.int64
    r = Manifest("kaggle_keypoints", str(tmp_path), ["t.csv#row=0"], targets=[[1.0, np.nan]],
                 target_names=["a_x", "a_y"], inline=np.zeros((1, 4, 4)))
    assert r.task == "regression" and r.source(0).shape == (4, 4) and r.targets.dtype == np.float32


def test_fingerprint_stable_and_sensitive(tmp_path):
    m = _files(tmp_path)
    fp = m.fingerprint()
    again = Manifest("folder", str(tmp_path), list(m.paths), labels=m.labels.copy(), class_names=["a", "b"])
    assert fp == m.fingerprint() == again.fingerprint()
    assert len(fp) == 64 and int(fp, 16) >= 0
    # mtime change only
    st = os.stat(tmp_path / "1.png")
    os.utime(tmp_path / "1.png", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    fp2 = m.fingerprint()
    assert fp2 != fp
    # size change, mtime restored
    st = os.stat(tmp_path / "2.png")
    (tmp_path / "2.png").write_bytes(b"yy")
    os.utime(tmp_path / "2.png", ns=(st.st_atime_ns, st.st_mtime_ns))
    fp3 = m.fingerprint()
    assert fp3 != fp2
    # a label change
    m.labels[0] = 1
    fp4 = m.fingerprint()
    assert fp4 != fp3
    # a deleted file counts as -1
    os.unlink(tmp_path / "0.png")
    assert m.fingerprint() != fp4
    # class names matter too
    m.class_names = ["a", "c"]
    assert m.fingerprint() != fp4


def test_fingerprint_inline_and_targets(tmp_path):
    def make(px=0, t=1.0):
        inline = np.zeros((2, 4, 4), np.uint8)
        inline[1, 2, 2] = px
        return Manifest("kaggle_keypoints", str(tmp_path), ["k.csv#row=0", "k.csv#row=1"],
                        targets=[[t, np.nan], [2.0, 3.0]], target_names=["a_x", "a_y"], inline=inline)
    base = make().fingerprint()
    assert base == make().fingerprint()
    assert make(px=1).fingerprint() != base
    assert make(t=1.5).fingerprint() != base
    neg_nan = make()
    neg_nan.targets[0, 1] = -np.float32(np.nan)  # another NaN bit pattern, same meaning
    assert neg_nan.fingerprint() == base


@pytest.mark.parametrize("n", [0, 1, 2, 7, 10, 101])
@pytest.mark.parametrize("count", [1, 2, 3, 4, 16])
def test_shards_partition(n, count):
    ranges = [shard_bounds(n, i, count) for i in range(count)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    for (a0, a1), (b0, b1) in zip(ranges, ranges[1:]):
        assert a1 == b0 and a0 <= a1
    sizes = [b - a for a, b in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_shard_range_method_and_errors(tmp_path):
    m = _files(tmp_path, 5)
    assert m.shard_range(0, 2) == (0, 2) and m.shard_range(1, 2) == (2, 5)
    for index, count in [(2, 2), (-1, 2), (0, 0), (0, -3), (True, 2), (0.5, 2)]:
        with pytest.raises(ValueError, match="shard"):
            m.shard_range(index, count)


def test_parse_shard():
    assert parse_shard("0/4") == (0, 4)
    assert parse_shard(" 3/4 ") == (3, 4)
    for bad in ["4/4", "-1/4", "1", "a/b", "1/0", "1/2/3", ""]:
        with pytest.raises(ValueError, match="I/N|0 <= I|N must"):
            parse_shard(bad)


def test_inconsistent_lengths_rejected(tmp_path):
    with pytest.raises(ValueError, match="labels"):
        Manifest("csv", str(tmp_path), ["a", "b"], labels=[0], class_names=["x"])
    with pytest.raises(ValueError, match="kind"):
        Manifest("no kind", str(tmp_path), [])

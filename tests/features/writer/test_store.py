"""The partial store: rows into the target, then a marker; resume, space checks and the end session."""

import collections
import os

import h5py
import numpy as np
import pytest

from features import faults
from features.writer import assemble, partial
from features.writer.finished import StoreError, partial_dir

SHAPE = (2, 2, 8)


def _store(out, n=20, chunk_rows=8, flip=True, settings=None):
    views = ["features"] + (["features_flipped"] if flip else [])
    return partial.PartialStore(str(out), settings or {"seed": 1}, n_rows=n, chunk_rows=chunk_rows,
                              feature_shape=SHAPE, store_dtype="float16", views=views)


def _chunk(ps, k, seed=0):
    a, b = ps.chunk_range(k)
    rng = np.random.default_rng(seed + k)
    arrays = {v: rng.standard_normal((b - a, *SHAPE)).astype(np.float16) for v in ps.target.views}
    arrays.update(valid=np.ones(b - a, bool), reason=np.array([""] * (b - a)),
                  image_size=np.full((b - a, 2), 7, np.int32))
    return arrays


def test_chunks_go_into_the_target_and_markers_hold_only_row_data(tmp_path):
    out = tmp_path / "o.h5"
    ps = _store(out).open()
    written = {k: _chunk(ps, k) for k in (2, 0, 1)}  # any order
    for k, arrays in written.items():
        ps.write_chunk(k, arrays)
    assert ps.done_chunks() == {0, 1, 2}
    assert set(ps.read_chunk(0)) == {"valid", "reason", "image_size"}
    paths = np.array([f"p{i}" for i in range(20)], dtype=object)
    assemble.finalize(ps, ps.markers(), {"paths": paths}, {"task": "classify"})
    assert not os.path.exists(partial_dir(str(out)))
    with h5py.File(out, "r") as f:
        for v in ("features", "features_flipped"):
            want = np.concatenate([written[k][v] for k in range(3)])
            np.testing.assert_array_equal(f[v][()], want)
        assert f.attrs["complete"] and f.attrs["task"] == "classify"
        assert f["valid"][()].all() and f["image_size"][0].tolist() == [7, 7]
        assert f["paths"].asstr()[3] == "p3"


def test_resume_keeps_committed_rows_after_a_killed_end_session(tmp_path):
    out = tmp_path / "o.h5"
    ps = _store(out, flip=False).open()
    chunks = {k: _chunk(ps, k) for k in range(ps.n_chunks)}
    for k in (0, 1):
        ps.write_chunk(k, chunks[k])
    ps.close()
    # A killed end session: HDF5 wrote some metadata into the target, then nothing more.
    with h5py.File(ps.target.path, "r+") as f:
        f.create_dataset("valid", data=np.ones(20, bool))
    again = _store(out, flip=False).open()
    assert again.done_chunks() == {0, 1}
    again.write_chunk(2, chunks[2])
    assemble.finalize(again, again.markers(), {}, {})
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["features"][()], np.concatenate([chunks[k]["features"] for k in range(3)]))


def test_markers_without_a_target_are_recomputed_not_trusted(tmp_path, caplog):
    out = tmp_path / "o.h5"
    ps = _store(out).open()
    ps.write_chunk(0, _chunk(ps, 0))
    ps.close()
    os.remove(ps.target.path)  # e.g. a partial dir of an older bneck, whose chunk files held the rows
    again = _store(out).open()
    assert again.done_chunks() == set()
    assert "1 chunk markers but no target.h5 with its snapshot; recomputing them" in caplog.text
    again.close()


def test_too_little_disk_is_refused_before_computing(tmp_path, monkeypatch):
    out = tmp_path / "o.h5"
    Stat = collections.namedtuple("Stat", "f_bavail f_frsize")
    monkeypatch.setattr(partial.os, "statvfs", lambda path: Stat(10, 4096))
    with pytest.raises(StoreError) as exc:
        _store(out).open()
    msg = str(exc.value)
    assert str(out) in msg and "No space left on device" in msg and "Nothing was computed" in msg
    # The lock was released: once there is room, the same output opens.
    monkeypatch.undo()
    _store(out).open().close()


def test_space_check_counts_only_rows_still_to_compute(tmp_path, monkeypatch):
    out = tmp_path / "o.h5"
    ps = _store(out, n=4000, chunk_rows=1000).open()
    for k in range(3):
        ps.write_chunk(k, _chunk(ps, k))
    ps.close()
    Stat = collections.namedtuple("Stat", "f_bavail f_frsize")
    row = int(np.prod(SHAPE)) * 2 * 2
    # Room for the last chunk's rows (plus row data) but not for all 4000 rows.
    monkeypatch.setattr(partial.os, "statvfs", lambda path: Stat((1000 * row + 4000 * 256) // 4096 + 200, 4096))
    _store(out, n=4000, chunk_rows=1000).open().close()
    monkeypatch.setattr(partial.os, "statvfs", lambda path: Stat(10, 4096))
    with pytest.raises(StoreError, match="All 3 finished chunks are kept"):
        _store(out, n=4000, chunk_rows=1000).open()


def test_space_already_reserved_by_a_non_sparse_file_system_is_not_asked_for_twice(tmp_path, monkeypatch):
    out = tmp_path / "o.h5"
    _store(out, n=4000, chunk_rows=1000).open().close()
    target = partial_dir(str(out)) + "/target.h5"
    with open(target, "r+b") as fh:  # what FAT or HFS+ do at creation: every byte gets its blocks
        os.posix_fallocate(fh.fileno(), 0, os.path.getsize(target))
    Stat = collections.namedtuple("Stat", "f_bavail f_frsize")
    # Room for the row data only: the feature bytes are already on the disk.
    monkeypatch.setattr(partial.os, "statvfs", lambda path: Stat(1_400_000 // 4096, 4096))
    _store(out, n=4000, chunk_rows=1000).open().close()


def test_a_failed_open_releases_the_lock(tmp_path, monkeypatch):
    out = tmp_path / "o.h5"

    with faults.raising_at("atomic_write", OSError(28, "No space left on device")), pytest.raises(OSError):
        _store(out).open()
    # The same process (a notebook, a Ray actor) retries once space is free: no stale lock refuses it.
    _store(out).open().close()


def test_overwrite_killed_part_way_never_resumes_the_old_rows(tmp_path, monkeypatch):
    out = tmp_path / "o.h5"
    ps = _store(out, settings={"seed": 0}).open()
    for k in (0, 1):
        ps.write_chunk(k, _chunk(ps, k))
    ps.close()
    real_remove, removed = os.remove, []

    def killed_after_two(path):
        if len(removed) == 2:
            raise KeyboardInterrupt  # stands in for SIGKILL part-way through the deletion
        removed.append(os.path.basename(path))
        real_remove(path)
    monkeypatch.setattr(partial.os, "remove", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        _store(out, settings={"seed": 1}).open(overwrite=True)
    monkeypatch.undo()
    assert "settings.json" not in removed  # it goes last, so it still names what is left
    # Both markers went first: no valid row is left, so the new settings start afresh, even without
    # --overwrite, and nothing of the old run is resumed.
    again = _store(out, settings={"seed": 1}).open()
    assert again.done_chunks() == set()
    again.close()
    ps = _store(out, settings={"seed": 1}).open()
    ps.write_chunk(0, _chunk(ps, 0))
    ps.close()
    with pytest.raises(StoreError, match=r"other settings or another source: seed: 1 -> 2\. Rerun"):
        _store(out, settings={"seed": 2}).open()  # a valid row is kept: refused until --overwrite


def test_valid_rows_beyond_the_new_runs_chunks_are_kept(tmp_path):
    # The old run had 4 chunks; its first holds no valid row, its last does. A corrected command over a
    # smaller source (1 chunk) must not judge the old run by that first chunk alone and delete it.
    out = tmp_path / "o.h5"
    ps = _store(out, n=32, settings={"seed": 0}).open()
    for k in range(ps.n_chunks):
        arrays = _chunk(ps, k)
        arrays["valid"][:] = k == 3
        ps.write_chunk(k, arrays)
    ps.close()
    with pytest.raises(StoreError, match="other settings or another source"):
        _store(out, n=8, settings={"seed": 1}).open()


def test_rows_without_settings_are_discarded(tmp_path, caplog):
    out = tmp_path / "o.h5"
    ps = _store(out, settings={"seed": 0}).open()
    ps.write_chunk(0, _chunk(ps, 0))
    ps.close()
    os.remove(os.path.join(ps.dir, "settings.json"))  # e.g. an older bneck's kill mid --overwrite
    with caplog.at_level("WARNING", logger="bneck"):
        again = _store(out, settings={"seed": 1}).open()
    assert again.done_chunks() == set() and "no settings.json" in caplog.text


def test_a_target_without_its_snapshot_recomputes(tmp_path, caplog):
    out = tmp_path / "o.h5"
    ps = _store(out).open()
    ps.write_chunk(0, _chunk(ps, 0))
    ps.close()
    os.remove(ps.target.snapshot_path)  # by hand: nothing vouches for the target's layout any more
    with caplog.at_level("WARNING", logger="bneck"):
        again = _store(out).open()
    assert again.done_chunks() == set() and "recomputing" in caplog.text
    again.write_chunk(0, _chunk(again, 0))
    assert again.done_chunks() == {0}


def test_a_target_that_cannot_be_read_now_keeps_every_chunk(tmp_path):
    out = tmp_path / "o.h5"
    ps = _store(out).open()
    for k in (0, 1):
        ps.write_chunk(k, _chunk(ps, k))
    ps.close()
    # Reading the restored target's layout back fails as the system fails: EIO, a lock, EMFILE, not damage.
    with faults.raising_at("target_restored", OSError(5, "Input/output error")), \
            pytest.raises(StoreError, match="Nothing was discarded: all 2 finished chunks are kept"):
        _store(out).open()
    again = _store(out).open()
    assert again.done_chunks() == {0, 1}


def test_a_damaged_snapshot_recomputes_instead_of_failing_forever(tmp_path, caplog):
    out = tmp_path / "o.h5"
    ps = _store(out).open()
    ps.write_chunk(0, _chunk(ps, 0))
    ps.close()
    with open(ps.target.snapshot_path, "wb") as f:
        f.write(b"not a zip")
    with caplog.at_level("WARNING", logger="bneck"):
        again = _store(out).open()
    assert again.done_chunks() == set() and "damaged" in caplog.text

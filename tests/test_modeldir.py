"""Tests for pipeline.modeldir: atomic save, overwrite, checksums, head loaders."""

import hashlib
import json
import re

import joblib
import numpy as np
import pytest

from pipeline import heads, modeldir
from pipeline.heads import Head, LogRegHead, loader_for
from pipeline.modeldir import ModelDirError, load_model_dir, save_model_dir, sha256_file, verify_model_dir


class PlainHead:
    """A head without save(): persisted with joblib."""

    def __init__(self, w):
        self.w = w


class FakeKerasHead(Head):
    """A registered head that writes its own files, as the dense head writes head.keras + head.json."""

    name = "fake"
    head_loader = "fake"
    saved_files = ("head.npy", "sub/cfg.txt")
    fail = False

    def __init__(self, w):
        self.w = w

    def save(self, dirpath):
        np.save(f"{dirpath}/head.npy", self.w)
        (dirpath / "sub").mkdir()
        (dirpath / "sub" / "cfg.txt").write_text("units=4")
        if self.fail:
            raise RuntimeError("disk full")

    @classmethod
    def load(cls, dirpath):
        return cls(np.load(f"{dirpath}/head.npy"))


@pytest.fixture
def fake_registered(monkeypatch):
    monkeypatch.setitem(heads.HEADS, "fake", FakeKerasHead)


def _listing(d):
    return sorted(p.name for p in d.iterdir())


META = {"head": "logreg", "params": {"C": np.float64(0.5)}, "class_names": ["a", "b"],
        "metrics": {"acc": np.float32(0.75)}, "provenance": {"input_size": np.array([32, 32])}}


def test_sha256_file(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"abc" * 1000)
    assert sha256_file(p) == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_joblib_round_trip(tmp_path):
    src = tmp_path / "notes.txt"
    src.write_text("hello")
    out = tmp_path / "models" / "m1"
    doc = save_model_dir(out, PlainHead([1, 2]), META,
                         extra_files={"report/cm.csv": b"1,2\n", "notes.txt": str(src)})
    assert doc["format"] == "bneck-model" and doc["format_version"] == 1
    assert doc["head_loader"] == "joblib" and doc["params"] == {"C": 0.5}
    assert doc["provenance"]["input_size"] == [32, 32]
    assert set(doc["files"]) == {"head.joblib", "report/cm.csv", "notes.txt"}
    assert doc["files"]["report/cm.csv"] == hashlib.sha256(b"1,2\n").hexdigest()
    assert json.loads((out / "model.json").read_text()) == doc
    head, meta = load_model_dir(out)
    assert isinstance(head, PlainHead) and head.w == [1, 2] and meta == doc
    assert _listing(out.parent) == ["m1"]  # no temp leftovers


def test_a_registered_head_saves_and_loads_itself(tmp_path, fake_registered):
    """Adding a head is a class plus a registry entry: modeldir asks the class, it names no head."""
    out = tmp_path / "m"
    doc = save_model_dir(out, FakeKerasHead(np.arange(3.0)), {"head": "fake"})
    assert doc["head_loader"] == "fake"
    assert set(doc["files"]) == {"head.npy", "sub/cfg.txt"}
    head, meta = load_model_dir(out)
    assert isinstance(head, FakeKerasHead) and meta["head"] == "fake"
    np.testing.assert_array_equal(head.w, np.arange(3.0))
    # A file the head needs but model.json does not list was never checked: refused, not read.
    doc["files"].pop("head.npy")
    (out / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelDirError, match="head.npy is not listed"):
        load_model_dir(out)


def test_model_dirs_written_before_the_registry_still_load(tmp_path, rng):
    """The v1 layout: a joblib head is head.joblib, a pickle of the estimator itself; dense dirs say "keras"."""
    X, y = rng.normal(size=(40, 5)), np.arange(40) % 2
    fitted = LogRegHead().fit(X, y)
    old = tmp_path / "old"
    old.mkdir()
    joblib.dump(fitted, old / "head.joblib")  # what save_model_dir wrote before heads saved themselves
    (old / "model.json").write_text(json.dumps({
        "format": "bneck-model", "format_version": 1, "head": "logreg", "head_loader": "joblib",
        "files": {"head.joblib": sha256_file(old / "head.joblib")}}))
    head, _ = load_model_dir(old)
    np.testing.assert_array_equal(head.predict(X), fitted.predict(X))
    new = save_model_dir(tmp_path / "new", fitted, {"head": "logreg"})
    assert new["head_loader"] == "joblib" and set(new["files"]) == {"head.joblib"}
    assert isinstance(joblib.load(tmp_path / "new" / "head.joblib"), LogRegHead)
    # Dense directories were "keras" (head.keras + head.json) and still go to the dense head's loader,
    # whatever their head name; unknown loaders have none.
    assert loader_for("dense", "keras") is heads.DenseHead and loader_for(None, "keras") is heads.DenseHead
    assert heads.DenseHead.saved_files == ("head.keras", "head.json")
    assert loader_for("logreg", "joblib") is LogRegHead and loader_for(None, "torch") is None


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(FakeKerasHead, "fail", True)
    out = tmp_path / "m"
    with pytest.raises(RuntimeError, match="disk full"):
        save_model_dir(out, FakeKerasHead(np.zeros(2)), {})
    assert not out.exists() and _listing(tmp_path) == []
    # Same with an existing model and overwrite=True: the old model is untouched.
    save_model_dir(out, PlainHead(1), {"v": 1})
    with pytest.raises(RuntimeError):
        save_model_dir(out, FakeKerasHead(np.zeros(2)), {"v": 2}, overwrite=True)
    assert _listing(tmp_path) == ["m"] and load_model_dir(out)[1]["v"] == 1


def test_unserialisable_meta_leaves_nothing(tmp_path):
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        save_model_dir(tmp_path / "m", PlainHead(1), {"bad": object()})
    assert _listing(tmp_path) == []


def test_overwrite_semantics(tmp_path):
    out = tmp_path / "m"
    save_model_dir(out, PlainHead(1), {"v": 1}, extra_files={"old.txt": b"old"})
    with pytest.raises(ModelDirError, match="already exists"):
        save_model_dir(out, PlainHead(2), {"v": 2})
    assert load_model_dir(out)[0].w == 1
    save_model_dir(out, PlainHead(2), {"v": 2}, overwrite=True)
    head, meta = load_model_dir(out)
    assert head.w == 2 and meta["v"] == 2 and not (out / "old.txt").exists()
    assert _listing(tmp_path) == ["m"]
    # overwrite never deletes a directory that is not a model directory
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(ModelDirError, match="not a bneck model directory"):
        save_model_dir(precious, PlainHead(3), {}, overwrite=True)
    assert _listing(precious) == ["cat.jpg"]
    (tmp_path / "empty").mkdir()
    save_model_dir(tmp_path / "empty", PlainHead(4), {}, overwrite=True)
    assert load_model_dir(tmp_path / "empty")[0].w == 4


def test_bad_extra_file_names(tmp_path):
    for name in ("../escape.txt", "/abs.txt", "model.json"):
        with pytest.raises(ModelDirError):
            save_model_dir(tmp_path / "m", PlainHead(1), {}, extra_files={name: b"x"})
    assert _listing(tmp_path) == []


def test_tampering_detected(tmp_path):
    out = tmp_path / "m"
    save_model_dir(out, PlainHead(1), {}, extra_files={"a/b.txt": b"data"})
    (out / "a" / "b.txt").write_bytes(b"evil")
    with pytest.raises(ModelDirError, match=r"'a/b\.txt' does not match its sha256"):
        load_model_dir(out)
    (out / "a" / "b.txt").unlink()
    with pytest.raises(ModelDirError, match=r"'a/b\.txt' .* is missing"):
        load_model_dir(out)


def test_bad_model_json(tmp_path):
    out = tmp_path / "m"
    with pytest.raises(ModelDirError, match="no model.json"):
        load_model_dir(out)
    doc = save_model_dir(out, PlainHead(1), {})
    for broken, message in [("{not json", "unreadable"),
                            (json.dumps(dict(doc, format="x")), "not a bneck model"),
                            (json.dumps(dict(doc, format_version=9)), "format_version 9"),
                            (json.dumps(dict(doc, head_loader="torch")), "unknown head_loader"),
                            (json.dumps(dict(doc, files={"../x": "0"})), "invalid file name")]:
        (out / "model.json").write_text(broken)
        with pytest.raises(ModelDirError, match=message):
            load_model_dir(out)


class _Killed(BaseException):
    """Stands in for SIGKILL at a fault point: nothing after it runs, no cleanup of the swap."""


def _kill_at(monkeypatch, point):
    def fault_point(name):
        if name == point:
            raise _Killed(name)

    monkeypatch.setattr(modeldir, "fault_point", fault_point)


def test_overwrite_killed_between_renames_is_cleaned_up_by_the_next_save(tmp_path, monkeypatch):
    out = tmp_path / "m"
    save_model_dir(out, PlainHead(1), {"v": 1})
    with monkeypatch.context() as mp:
        _kill_at(mp, "model_moved_aside")
        with pytest.raises(_Killed):
            save_model_dir(out, PlainHead(2), {"v": 2}, overwrite=True)
    (old,) = [n for n in _listing(tmp_path) if n.endswith(".old")]
    assert not out.exists() and re.fullmatch(r"\.m\.[0-9a-f]{8}\.old", old)
    assert verify_model_dir(tmp_path / old)["v"] == 1  # the previous model, intact
    # Look-alikes that are not leftovers of "m": another model's, wrong length/case, other suffixes.
    decoys = [".m.b.12345678.old", ".mm.12345678.old", ".m.1234567.old", ".m.ABCDEF12.old",
              ".m.12345678.old.keep", "m.12345678.old", ".m.12345678.partial.old"]
    for name in decoys:
        (tmp_path / name).mkdir()
    # A failed save must not delete it: until a new model is in place it is the only copy.
    monkeypatch.setattr(FakeKerasHead, "fail", True)
    with pytest.raises(RuntimeError):
        save_model_dir(out, FakeKerasHead(np.zeros(2)), {"v": 3})
    assert old in _listing(tmp_path)
    save_model_dir(out, PlainHead(4), {"v": 4})
    assert _listing(tmp_path) == sorted(["m", *decoys])
    assert load_model_dir(out)[1]["v"] == 4


def test_leftovers_are_removed_by_an_overwrite_too(tmp_path):
    out = tmp_path / "m"
    save_model_dir(out, PlainHead(1), {})
    (tmp_path / ".m.0123abcd.old").mkdir()
    (tmp_path / ".m.0123abcd.old" / "model.json").write_text("{}")
    save_model_dir(out, PlainHead(2), {}, overwrite=True)
    assert _listing(tmp_path) == ["m"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_parent_dir_fsynced_after_the_final_rename(tmp_path, monkeypatch, overwrite):
    out = tmp_path / "m"
    if overwrite:
        save_model_dir(out, PlainHead(1), {})
    calls = []
    monkeypatch.setattr(modeldir, "_fsync_dir", lambda d: calls.append((d, load_model_dir(out)[0].w)))
    save_model_dir(out, PlainHead(2), {}, overwrite=overwrite)
    assert calls == [(tmp_path, 2)]  # once, with the new model already in place


def test_directory_fsync_failure_is_ignored(tmp_path, monkeypatch):
    def refuse(fd):
        raise OSError(22, "Invalid argument")  # what some network filesystems answer

    monkeypatch.setattr(modeldir.os, "fsync", refuse)
    modeldir._fsync_dir(tmp_path)
    modeldir._fsync_dir(tmp_path / "missing")  # cannot even be opened (as on Windows)

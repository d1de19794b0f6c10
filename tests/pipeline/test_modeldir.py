"""Tests for pipeline.modeldir: atomic save, overwrite, checksums, head loaders."""

import errno
import hashlib
import json
import os
import re

import joblib
import numpy as np
import pytest

from features import faults
from pipeline import heads, modeldir
from pipeline.heads import Head, LogRegHead, loader_for
from pipeline.modeldir import ModelDirError, load_model_dir, save_model_dir, sha256_file, verify_model_dir


class PlainHead:
    """A head without save(): persisted with joblib, so read back only with trust_pickle=True."""

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
    assert doc["format"] == "bneck-model" and doc["format_version"] == 1  # v1 readers read a pickle dir
    assert doc["head_loader"] == "joblib" and doc["params"] == {"C": 0.5}
    assert doc["provenance"]["input_size"] == [32, 32]
    assert set(doc["files"]) == {"head.joblib", "report/cm.csv", "notes.txt"}
    assert doc["files"]["report/cm.csv"] == hashlib.sha256(b"1,2\n").hexdigest()
    assert json.loads((out / "model.json").read_text()) == doc
    head, meta = load_model_dir(out, trust_pickle=True)
    assert isinstance(head, PlainHead) and head.w == [1, 2] and meta == doc
    assert _listing(out.parent) == ["m1"]  # no temp leftovers


def test_a_registered_head_saves_and_loads_itself(tmp_path, fake_registered):
    """Adding a head is a class plus a registry entry: modeldir asks the class, it names no head."""
    out = tmp_path / "m"
    doc = save_model_dir(out, FakeKerasHead(np.arange(3.0)), {"head": "fake"})
    assert doc["head_loader"] == "fake"
    assert set(doc["files"]) == {"head.npy", "sub/cfg.txt"}
    head, meta = load_model_dir(out, trust_pickle=True)
    assert isinstance(head, FakeKerasHead) and meta["head"] == "fake"
    np.testing.assert_array_equal(head.w, np.arange(3.0))
    # A file the head needs but model.json does not list was never checked: refused, not read.
    doc["files"].pop("head.npy")
    (out / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelDirError, match="head.npy is not listed"):
        load_model_dir(out, trust_pickle=True)


def _v1_logreg_dir(d, fitted, extra=None):
    """A directory as bneck wrote it before heads saved themselves: head.joblib, a pickle of the estimator."""
    d.mkdir()
    joblib.dump(fitted, d / "head.joblib")
    files = {"head.joblib": sha256_file(d / "head.joblib")}
    for name, data in (extra or {}).items():
        (d / name).write_bytes(data)
        files[name] = sha256_file(d / name)
    (d / "model.json").write_text(json.dumps({
        "format": "bneck-model", "format_version": 1, "head": "logreg", "head_loader": "joblib",
        "task": "classification", "class_names": ["a", "b"], "files": files}))
    return d


def test_model_dirs_written_before_the_registry_load_with_trust_pickle(tmp_path, rng):
    """The v1 layout: a joblib head is head.joblib, a pickle of the estimator itself; dense dirs say "keras"."""
    X, y = rng.normal(size=(40, 5)), np.arange(40) % 2
    fitted = LogRegHead().fit(X, y)
    old = _v1_logreg_dir(tmp_path / "old", fitted)
    with pytest.raises(ModelDirError, match=r"refusing to load head\.joblib: it is a pickle.*runs whatever code.*"
                                            r"--trust-pickle.*bneck upgrade-model"):
        load_model_dir(old)
    head, _ = load_model_dir(old, trust_pickle=True)
    np.testing.assert_array_equal(head.predict(X), fitted.predict(X))
    # Saved again, a bneck head is no pickle: plain arrays, format 2, loaded without any trust.
    new = save_model_dir(tmp_path / "new", fitted, {"head": "logreg"})
    assert new["head_loader"] == "arrays" and new["format_version"] == 2
    assert set(new["files"]) == {"head.npz", "head.json"}
    np.testing.assert_array_equal(load_model_dir(tmp_path / "new")[0].predict_proba(X), fitted.predict_proba(X))
    # Dense directories were "keras" (head.keras + head.json) and still go to the dense head's loader,
    # whatever their head name; unknown loaders have none, nor has a skops file of no registered head.
    assert loader_for("dense", "keras") is heads.DenseHead and loader_for(None, "keras") is heads.DenseHead
    assert heads.DenseHead.saved_files == ("head.keras", "head.json")
    assert loader_for("logreg", "joblib") is heads.PickledHead and loader_for(None, "torch") is None
    assert loader_for("logreg", "skops") is LogRegHead and loader_for("mine", "skops") is None
    assert loader_for("logreg", "arrays") is LogRegHead and loader_for("svm", "arrays") is heads.SVMHead


def test_a_pickle_is_never_opened_without_trust(tmp_path, rng):
    """Even with model.json rewritten to match it, a pickle that would run code is refused unread."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    d = _v1_logreg_dir(tmp_path / "evil", LogRegHead().fit(rng.normal(size=(20, 3)), np.arange(20) % 2))
    joblib.dump(Evil(), d / "head.joblib")
    doc = json.loads((d / "model.json").read_text())
    doc["files"]["head.joblib"] = sha256_file(d / "head.joblib")
    (d / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelDirError, match="it is a pickle"):
        load_model_dir(d)
    assert not marker.exists()


def test_upgrade_rewrites_a_pickle_dir_safely(tmp_path, rng):
    X, y = rng.normal(size=(40, 5)), np.arange(40) % 2
    fitted = LogRegHead().fit(X, y)
    old = _v1_logreg_dir(tmp_path / "old", fitted, extra={"history.csv": b"epoch\n", "grid_results.csv": b"C\n"})
    with pytest.raises(ModelDirError, match="it is a pickle"):  # upgrading unpickles: the same opt-in
        modeldir.upgrade_model_dir(old)
    assert (old / "head.joblib").exists()
    report = modeldir.upgrade_model_dir(old, trust_pickle=True)
    assert report["upgraded"] and report["new_head_loader"] == "arrays" and report["format_version"] == 2
    doc = json.loads((old / "model.json").read_text())
    assert set(doc["files"]) == {"head.npz", "head.json", "history.csv", "grid_results.csv"}
    assert not (old / "head.joblib").exists()
    assert doc["upgraded_from"] == {"head_loader": "joblib", "format_version": 1} and doc["class_names"] == ["a", "b"]
    head, _ = load_model_dir(old)  # no trust needed any more
    np.testing.assert_array_equal(head.predict_proba(X), fitted.predict_proba(X))
    assert modeldir.upgrade_model_dir(old)["upgraded"] is False  # nothing left to do
    # The caller's own estimator has no safe format: refused, the directory left as it was.
    mine = tmp_path / "mine"
    save_model_dir(mine, PlainHead(1), {})
    with pytest.raises(ModelDirError, match="not a bneck head"):
        modeldir.upgrade_model_dir(mine, trust_pickle=True)
    assert (mine / "head.joblib").exists()


def _rewrite_skops(d, obj):
    import skops.io as sio

    sio.dump(obj, d / "head.skops")
    doc = json.loads((d / "model.json").read_text())
    doc["files"]["head.skops"] = sha256_file(d / "head.skops")
    (d / "model.json").write_text(json.dumps(doc))


class _Marker:
    """Would create a file when unpickled (skops stores it as an ObjectNode of an untrusted type)."""

    def __init__(self, path):
        self.path = path

    def __setstate__(self, state):
        open(state["path"], "w").close()


def test_a_skops_head_with_an_untrusted_type_is_refused_naming_it(tmp_path, rng):
    import os

    # An rbf SVM is saved with skops (a linear head is plain arrays: see the next test).
    fitted = heads.SVMHead(kernel="rbf").fit(rng.normal(size=(20, 3)), np.arange(20) % 2)
    d = tmp_path / "m"
    assert save_model_dir(d, fitted, {"head": "svm"})["head_loader"] == "skops"
    marker = tmp_path / "ran"
    evil = heads.SVMHead(kernel="rbf").fit(rng.normal(size=(20, 3)), np.arange(20) % 2)
    evil.pipeline_ = {"call": os.system, "obj": _Marker(str(marker))}
    _rewrite_skops(d, evil)
    with pytest.raises(ModelDirError, match=r"refusing to load type\(s\) .*posix\.system"
                                            r"|refusing to load type\(s\) .*_Marker"):
        load_model_dir(d)
    assert not marker.exists()
    # A trusted scikit-learn estimator that is not this head's own (the file says svm, holds a forest).
    from sklearn.ensemble import RandomForestClassifier

    _rewrite_skops(d, RandomForestClassifier(n_estimators=2).fit(rng.normal(size=(20, 3)), np.arange(20) % 2))
    with pytest.raises(ModelDirError, match="RandomForestClassifier"):
        load_model_dir(d)
    # What is not a skops file at all (a pickle renamed head.skops) is refused, not unpickled.
    joblib.dump(fitted, d / "head.skops")
    _doc = json.loads((d / "model.json").read_text())
    _doc["files"]["head.skops"] = sha256_file(d / "head.skops")
    (d / "model.json").write_text(json.dumps(_doc))
    with pytest.raises(ModelDirError, match="not a skops file"):
        load_model_dir(d)


def test_a_linear_head_is_plain_arrays_and_a_pickle_hidden_in_them_is_refused(tmp_path, rng):
    X, y = rng.normal(size=(30, 4)).astype(np.float32), np.arange(30) % 3
    fitted = LogRegHead(C=0.3).fit(X, y)
    d = tmp_path / "m"
    save_model_dir(d, fitted, {"head": "logreg"})
    head, _ = load_model_dir(d)
    assert isinstance(head, LogRegHead) and head.C == 0.3
    np.testing.assert_array_equal(head.predict_proba(X), fitted.predict_proba(X))
    scorer, _ = load_model_dir(d, scoring=True)  # numpy only: what evaluate scores with
    np.testing.assert_array_equal(scorer.predict(X), fitted.predict(X))
    np.testing.assert_allclose(scorer.predict_proba(X), fitted.predict_proba(X), rtol=1e-5, atol=1e-6)
    marker = tmp_path / "ran"
    with np.load(d / "head.npz") as z:
        arrays = dict(z)
    np.savez(d / "head.npz", **{**arrays, "classes": np.array([_Marker(str(marker))], dtype=object)})
    doc = json.loads((d / "model.json").read_text())
    doc["files"]["head.npz"] = sha256_file(d / "head.npz")
    (d / "model.json").write_text(json.dumps(doc))
    for scoring in (False, True):
        with pytest.raises(ModelDirError, match="refusing to load it: Object arrays cannot be loaded"):
            load_model_dir(d, scoring=scoring)
    assert not marker.exists()


def test_saving_a_head_with_an_untrusted_part_fails_at_save(tmp_path, rng):
    """A head that could not be loaded back safely is refused when written, not on the machine it is sent to."""
    from sklearn.ensemble import RandomForestRegressor

    Y = rng.normal(size=(30, 2))
    head = heads.SpecialistsHead(base=RandomForestRegressor(n_estimators=2)).fit(rng.normal(size=(30, 3)), Y)
    with pytest.raises(heads.UnsafeHeadFile, match="RandomForestRegressor"):
        save_model_dir(tmp_path / "m", head, {"head": "specialists"})
    assert _listing(tmp_path) == []


def test_links_out_of_the_directory_and_huge_or_deep_model_json_are_refused(tmp_path, rng):
    fitted = heads.SVMHead(kernel="rbf").fit(rng.normal(size=(20, 3)), np.arange(20) % 2)
    d = tmp_path / "m"
    save_model_dir(d, fitted, {"head": "svm"})
    outside = tmp_path / "outside.skops"
    (d / "head.skops").rename(outside)
    (d / "head.skops").symlink_to(outside)  # same bytes, same sha256: only the link gives it away
    with pytest.raises(ModelDirError, match="is a link to .*outside the model directory"):
        load_model_dir(d)
    (d / "head.skops").unlink()
    outside.rename(d / "head.skops")
    doc = (d / "model.json").read_text()
    (d / "model.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelDirError, match="unreadable"):
        load_model_dir(d)
    (d / "model.json").write_text(doc[:-2] + ', "pad": "' + "x" * (17 * 2**20) + '"}')
    with pytest.raises(ModelDirError, match="too large"):
        load_model_dir(d)


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
    assert _listing(tmp_path) == ["m"] and load_model_dir(out, trust_pickle=True)[1]["v"] == 1


def test_unserialisable_meta_leaves_nothing(tmp_path):
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        save_model_dir(tmp_path / "m", PlainHead(1), {"bad": object()})
    assert _listing(tmp_path) == []


def test_overwrite_semantics(tmp_path):
    out = tmp_path / "m"
    save_model_dir(out, PlainHead(1), {"v": 1}, extra_files={"old.txt": b"old"})
    with pytest.raises(ModelDirError, match="already exists"):
        save_model_dir(out, PlainHead(2), {"v": 2})
    assert load_model_dir(out, trust_pickle=True)[0].w == 1
    save_model_dir(out, PlainHead(2), {"v": 2}, overwrite=True)
    head, meta = load_model_dir(out, trust_pickle=True)
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
    assert load_model_dir(tmp_path / "empty", trust_pickle=True)[0].w == 4


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
        load_model_dir(out, trust_pickle=True)
    (out / "a" / "b.txt").unlink()
    with pytest.raises(ModelDirError, match=r"'a/b\.txt' .* is missing"):
        load_model_dir(out, trust_pickle=True)


def test_bad_model_json(tmp_path):
    out = tmp_path / "m"
    with pytest.raises(ModelDirError, match="no model.json"):
        load_model_dir(out, trust_pickle=True)
    doc = save_model_dir(out, PlainHead(1), {})
    for broken, message in [("{not json", "unreadable"),
                            (json.dumps(dict(doc, format="x")), "not a bneck model"),
                            (json.dumps(dict(doc, format_version=9)), "format_version 9"),
                            (json.dumps(dict(doc, head_loader="torch")), "unknown head_loader"),
                            (json.dumps(dict(doc, files={"../x": "0"})), "invalid file name")]:
        (out / "model.json").write_text(broken)
        with pytest.raises(ModelDirError, match=message):
            load_model_dir(out, trust_pickle=True)


class _Killed(BaseException):
    """Stands in for SIGKILL at a fault point: nothing after it runs, no cleanup of the swap."""


def test_overwrite_killed_between_renames_is_cleaned_up_by_the_next_save(tmp_path, monkeypatch):
    out = tmp_path / "m"
    save_model_dir(out, PlainHead(1), {"v": 1})
    with faults.raising_at("model_moved_aside", _Killed()), pytest.raises(_Killed):
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
    assert load_model_dir(out, trust_pickle=True)[1]["v"] == 4


def test_leftovers_are_removed_by_an_overwrite_too(tmp_path):
    out = tmp_path / "m"
    save_model_dir(out, PlainHead(1), {})
    (tmp_path / ".m.0123abcd.old").mkdir()
    (tmp_path / ".m.0123abcd.old" / "model.json").write_text("{}")
    save_model_dir(out, PlainHead(2), {}, overwrite=True)
    assert _listing(tmp_path) == ["m"]


def _parent_syncs(monkeypatch, parent, out, *, refuse=False):
    """Spy on the system's fsync: what ``out`` holds each time ``parent`` is synced (or refuse those syncs)."""
    real_fsync, seen = os.fsync, []

    def fsync(fd):
        if os.path.samestat(os.fstat(fd), os.stat(parent)):
            seen.append(load_model_dir(out, trust_pickle=True)[0].w)
            if refuse:
                raise OSError(errno.EIO, "Input/output error")  # a network file system, FUSE
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


@pytest.mark.parametrize("overwrite", [False, True])
def test_parent_dir_fsynced_after_the_final_rename(tmp_path, monkeypatch, overwrite):
    out = tmp_path / "m"
    if overwrite:
        save_model_dir(out, PlainHead(1), {})
    seen = _parent_syncs(monkeypatch, tmp_path, out)
    save_model_dir(out, PlainHead(2), {}, overwrite=overwrite)
    assert seen == [2]  # once, with the new model already in place


@pytest.mark.parametrize("overwrite", [False, True])
def test_directory_fsync_failure_is_ignored(tmp_path, monkeypatch, overwrite):
    out = tmp_path / "m"
    if overwrite:
        save_model_dir(out, PlainHead(1), {})
    seen = _parent_syncs(monkeypatch, tmp_path, out, refuse=True)
    save_model_dir(out, PlainHead(2), {}, overwrite=overwrite)  # the model is in place: the save does not fail
    assert seen == [2] and _listing(tmp_path) == ["m"]

"""Stage two under faults: killed training, tampered or hostile model dirs, foreign HDF5 inputs.

* ``bneck train`` SIGKILLed while fitting, or right before its model dir is renamed into place:
  nothing is ever at the output path but a complete model; the same command rerun succeeds
  and leaves no temp dir behind.
* A model dir whose files do not match model.json's sha256 is refused before anything in it
  is loaded; a malicious pickle in head.joblib never runs, even with model.json rewritten to match
  (pickles load only with --trust-pickle).
* A head.keras holding a Lambda layer is refused by Keras safe_mode even when model.json was
  rewritten to match it (the checksums are integrity, safe_mode is the security).
* HDF5 files that are not complete bneck feature files are refused by train and evaluate with
  a message naming the file (CLI exit 1).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import pytest

from tests.feature_files import write_feature_file
from tests.reliability.helpers import REPO, bneck, bneck_cmd, child_env

TRAIN = ["--head", "dense", "--units", "8", "--batch-size", "16", "--val-split", "0.25"]
#: Training kill points (for README/summary.py).
TRAIN_KILLS = [("during fit", "SIGKILL ~1 s after training started (epochs 100000)"),
               ("model_tmp_written:1", "model dir complete under its temp name, before the rename")]
#: Model-dir attacks and corruptions that must be refused.
TAMPERING = ["model.json sha256 edited", "head.keras bytes changed", "listed file deleted",
             "'..' file name in model.json", "format_version from the future",
             "malicious head.joblib pickle, model.json rewritten to match (never unpickled)",
             "Lambda layer in head.keras (safe_mode)"]
#: Foreign or unfinished HDF5 inputs for train/evaluate.
FOREIGN_H5 = ["plain HDF5 without bneck attrs", "producer but no format_version", "complete=False (partial)",
              "format_version from the future", "not HDF5 at all", "missing labels dataset"]


@pytest.fixture(scope="module")
def feats(tmp_path_factory):
    path = tmp_path_factory.mktemp("s2") / "feats.h5"
    write_feature_file(path, n=64, shape=(2, 2, 4), n_classes=2, store_dtype="float32")
    return path


def _hidden_tmp(out) -> list[str]:
    parent, name = os.path.dirname(str(out)), os.path.basename(str(out))
    return sorted(n for n in os.listdir(parent) if n.startswith(f".{name}.") and n.endswith(".partial"))


def _assert_absent_or_complete(out):
    if os.path.exists(out):
        from pipeline.modeldir import verify_model_dir

        verify_model_dir(out)


def _kill_during_fit(feats, out):
    proc = subprocess.Popen(bneck_cmd("train", feats, "-o", out, *TRAIN, "--epochs", "100000", "--patience",
                                      "100000"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=child_env())
    started = threading.Event()

    def watch():
        for line in proc.stderr:
            if "training dense head" in line:
                started.set()

    threading.Thread(target=watch, daemon=True).start()
    assert started.wait(180), "bneck train never reported that training started"
    time.sleep(1.0)  # well inside model.fit
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode


def _scenario(feats, base, how):
    os.makedirs(base, exist_ok=True)
    out = os.path.join(base, "model")
    rec = {"how": how}
    if how == "during fit":
        rec["kill_rc"] = _kill_during_fit(feats, out)
    else:
        r = bneck("train", feats, "-o", out, *TRAIN, "--epochs", "2", env={"BNECK_TEST_KILL_AT": how})
        rec["kill_rc"], rec["kill_err"] = r.returncode, r.stderr
    rec["exists_after_kill"] = os.path.exists(out)
    _assert_absent_or_complete(out)
    rec["tmp_after_kill"] = _hidden_tmp(out)
    r = bneck("train", feats, "-o", out, *TRAIN, "--epochs", "2", "--json")
    rec["rerun_rc"], rec["rerun_err"], rec["rerun_out"] = r.returncode, r.stderr, r.stdout
    rec["tmp_after_rerun"] = _hidden_tmp(out)
    rec["out"] = out
    return rec


@pytest.mark.slow  # kills bneck train processes at several points and reruns each
def test_train_killed_leaves_nothing_half_written(feats, tmp_path):
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda h: _scenario(feats, tmp_path / h.split(":")[0].replace(" ", "_"), h),
                             [h for h, _ in TRAIN_KILLS]))
    from pipeline.modeldir import load_model_dir

    for rec in runs:
        how = rec["how"]
        assert rec["kill_rc"] == -signal.SIGKILL, (how, rec.get("kill_err"))
        assert not rec["exists_after_kill"], f"{how}: something is at the output path after the kill"
        if how.startswith("model_tmp_written"):
            assert len(rec["tmp_after_kill"]) == 1  # the complete, unpublished copy
        assert rec["rerun_rc"] == 0, (how, rec["rerun_err"])
        assert json.loads(rec["rerun_out"].strip().splitlines()[-1])["head"] == "dense"
        assert rec["tmp_after_rerun"] == [], f"{how}: the killed save's temp dir was left behind"
        head, meta = load_model_dir(rec["out"])
        assert meta["head"] == "dense" and head.predict(np.zeros((2, 2, 2, 4), np.float32)).shape == (2,)


@pytest.mark.slow
def test_overwrite_killed_between_renames(feats, tmp_path):
    """--overwrite swaps directories in two renames; killed between them, the path is absent
    (never half-written) and the previous model is intact under a hidden .old name, which the
    next successful save removes."""
    out = tmp_path / "model"
    assert bneck("train", feats, "-o", out, *TRAIN, "--epochs", "1").returncode == 0
    r = bneck("train", feats, "-o", out, *TRAIN, "--epochs", "1", "--overwrite",
              env={"BNECK_TEST_KILL_AT": "model_moved_aside:1"})
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not out.exists()
    old = [n for n in os.listdir(tmp_path) if n.startswith(".model.") and n.endswith(".old")]
    from pipeline.modeldir import verify_model_dir

    assert len(old) == 1 and verify_model_dir(tmp_path / old[0])
    assert bneck("train", feats, "-o", out, *TRAIN, "--epochs", "1", "--overwrite").returncode == 0
    verify_model_dir(out)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".old")]  # the rerun removed the leftover


# ----------------------------------------------------------------------------- tampering

@pytest.fixture(scope="module")
def dense_model(feats, tmp_path_factory):
    from pipeline.train import train

    out = tmp_path_factory.mktemp("dense") / "model"
    train(feats, out, head="dense", params={"epochs": 1, "units": 4, "batch_size": 16})
    return out


@pytest.fixture(scope="module")
def logreg_model(feats, tmp_path_factory):
    from pipeline.train import train

    out = tmp_path_factory.mktemp("logreg") / "model"
    train(feats, out, head="logreg", pooling="avg")
    return out


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _edit_json(model, fn):
    mj = os.path.join(model, "model.json")
    with open(mj) as f:
        meta = json.load(f)
    fn(meta)
    with open(mj, "w") as f:
        json.dump(meta, f)


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_tampered_model_dirs_are_refused(dense_model, logreg_model, tmp_path):
    from pipeline.modeldir import ModelDirError, load_model_dir

    m = _copy(dense_model, tmp_path / "sha")
    _edit_json(m, lambda meta: meta["files"].__setitem__("head.keras", "0" * 64))
    with pytest.raises(ModelDirError, match="head.keras.*does not match its sha256"):
        load_model_dir(m)

    m = _copy(dense_model, tmp_path / "bytes")
    with open(m / "head.json", "a") as f:
        f.write(" ")
    with pytest.raises(ModelDirError, match="head.json.*does not match"):
        load_model_dir(m)

    m = _copy(dense_model, tmp_path / "deleted")
    os.remove(m / "head.keras")
    with pytest.raises(ModelDirError, match="head.keras.*missing"):
        load_model_dir(m)

    m = _copy(dense_model, tmp_path / "traversal")
    _edit_json(m, lambda meta: meta["files"].__setitem__("../../etc/passwd", "0" * 64))
    with pytest.raises(ModelDirError, match="invalid file name"):
        load_model_dir(m)

    m = _copy(dense_model, tmp_path / "future")
    _edit_json(m, lambda meta: meta.__setitem__("format_version", 99))
    with pytest.raises(ModelDirError, match="format_version 99"):
        load_model_dir(m)

    # A pickle that would create a file when loaded; the checksum stops it being loaded at all.
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    m = _copy(logreg_model, tmp_path / "evil_pickle")
    with open(m / "head.joblib", "wb") as f:
        pickle.dump(Evil(), f)
    # Even with model.json rewritten to name it, sha256 and all (integrity is not trust), it is refused unread.
    _edit_json(m, lambda meta: (meta.update(head_loader="joblib", format_version=1),
                                meta["files"].__setitem__("head.joblib", _sha(m / "head.joblib"))))
    with pytest.raises(ModelDirError, match="refusing to load head.joblib: it is a pickle"):
        load_model_dir(m)
    assert not marker.exists()


def test_lambda_layer_refused_by_safe_mode(dense_model, feats, tmp_path, caplog):
    """An attacker who rewrites model.json to match still cannot get a Lambda layer loaded."""
    import keras

    from pipeline.cli.main import main
    from pipeline.modeldir import load_model_dir

    m = _copy(dense_model, tmp_path / "lambda")
    marker = tmp_path / "lambda_ran"
    inp = keras.Input((2, 2, 4))
    x = keras.layers.Flatten()(inp)
    # Code that would run at load time: create a marker file (a stand-in for anything worse).
    payload = eval(f"lambda t: __import__('pathlib').Path({str(marker)!r}).touch() or t")  # noqa: S307
    x = keras.layers.Lambda(payload)(x)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    marker.unlink()  # building the model above ran the lambda once, here, in the test
    keras.Model(inp, out).save(m / "head.keras")
    _edit_json(m, lambda meta: meta["files"].__setitem__("head.keras", _sha(m / "head.keras")))
    with pytest.raises(ValueError, match="Lambda.*arbitrary code execution"):
        load_model_dir(m)
    assert not marker.exists()
    caplog.set_level(logging.ERROR, logger="bneck")
    assert main(["evaluate", str(m), str(feats)]) == 1
    assert "Lambda" in caplog.text or "safe_mode" in caplog.text
    assert not marker.exists()


# ----------------------------------------------------------------------------- foreign HDF5

def _foreign_files(tmp_path):
    files = {}
    p = tmp_path / "plain.h5"
    with h5py.File(p, "w") as f:
        f["features"] = np.zeros((4, 2, 2, 4), np.float32)
        f["labels"] = np.zeros(4, np.int64)
    files["plain HDF5 without bneck attrs"] = (p, "not a bneck feature file")
    p = tmp_path / "noversion.h5"
    write_feature_file(p, n=8, format_version=None)
    files["producer but no format_version"] = (p, "not a bneck feature file")
    p = tmp_path / "partial.h5"
    write_feature_file(p, n=8, complete=False)
    files["complete=False (partial)"] = (p, "incomplete feature file")
    p = tmp_path / "future.h5"
    write_feature_file(p, n=8, format_version=99)
    files["format_version from the future"] = (p, "newer than this bneck supports")
    p = tmp_path / "text.h5"
    p.write_text("path,label\na.png,cat\n")
    files["not HDF5 at all"] = (p, "not an HDF5 feature file")
    p = tmp_path / "nolabels.h5"
    write_feature_file(p, n=8)
    with h5py.File(p, "a") as f:
        del f["labels"]
    files["missing labels dataset"] = (p, "missing the 'labels' dataset")
    assert list(files) == FOREIGN_H5
    return files


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_foreign_hdf5_refused_by_train_and_evaluate(command, logreg_model, tmp_path, caplog):
    from pipeline.cli.main import main

    caplog.set_level(logging.ERROR, logger="bneck")
    for kind, (path, needle) in _foreign_files(tmp_path).items():
        caplog.clear()
        out = tmp_path / f"m_{path.stem}"
        argv = ["train", str(path), "-o", str(out), "--head", "logreg"] if command == "train" else \
            ["evaluate", str(logreg_model), str(path)]
        assert main(argv) == 1, kind
        msg = caplog.text
        assert needle in msg and str(path) in msg, (kind, msg)
        assert not out.exists()


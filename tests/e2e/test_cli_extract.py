"""`bneck extract` / `info` / `backbones` run as a user runs them: a subprocess, real files, exit codes."""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from tests.imagefolders import make_class_folder

COMMON = ["--backbone", "mobilenet", "--input-size", "32", "--weights", "none", "--seed", "3",
          "--precision", "fp32", "--store-dtype", "float32", "--batch-size", "4", "--chunk-rows", "4",
          "--no-progress", "--max-bad-fraction", "0.5"]


def bneck(*args, env=None, **kw):
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, env=e, **kw)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e") / "data"
    make_class_folder(root, classes=("a", "b", "c"), per_class=8, bad=[("b", "broken.jpg", b"\xff\xd8\xff\xe0junk")])
    return root


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    r = bneck("extract", str(data), "-o", str(out), *COMMON)
    assert r.returncode == 0, r.stderr
    return out


def _same_file(a, b):
    with h5py.File(a) as fa, h5py.File(b) as fb:
        assert set(fa) == set(fb)
        for name in fa:
            np.testing.assert_array_equal(fa[name][()], fb[name][()])


def test_extract_info_and_idempotent_rerun(data, reference, tmp_path):
    r = bneck("info", str(reference), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["rows"] == 25 and info["bad"] == 1 and info["bad_reasons"] == {"truncated": 1}
    assert info["classes"] == {"a": 8, "b": 8, "c": 8}
    assert info["datasets"]["features"]["shape"] == [25, 1, 1, 1024]
    again = bneck("extract", str(data), "-o", str(reference), *COMMON, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["skipped_existing"] is True


def _wait_for_chunk(proc, partial, timeout=60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if os.path.isdir(partial) and any(n.startswith("chunk-") and n.endswith(".npz") for n in os.listdir(partial)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"finished before it could be killed: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("no chunk appeared")


def _start(data, out):
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", BNECK_TEST_BATCH_DELAY="0.3")
    return subprocess.Popen([sys.executable, "-m", "pipeline", "extract", str(data), "-o", str(out), *COMMON],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)


@pytest.mark.slow  # kill and resume: two extracts, one slowed down
def test_sigkill_then_rerun_equals_uninterrupted(data, reference, tmp_path):
    out = tmp_path / "killed.h5"
    proc = _start(data, out)
    _wait_for_chunk(proc, f"{out}.partial")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    r = bneck("extract", str(data), "-o", str(out), *COMMON, "--json")
    assert r.returncode == 0, r.stderr
    assert 0 < json.loads(r.stdout)["computed"] < 25  # resumed, not redone
    _same_file(reference, out)


@pytest.mark.slow  # kill and resume: two extracts, one slowed down
def test_sigterm_commits_and_exits_nonzero(data, reference, tmp_path):
    out = tmp_path / "term.h5"
    proc = _start(data, out)
    _wait_for_chunk(proc, f"{out}.partial")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "rerun the same command to resume" in err
    assert not out.exists()
    r = bneck("extract", str(data), "-o", str(out), *COMMON)
    assert r.returncode == 0, r.stderr
    _same_file(reference, out)


@pytest.mark.slow  # seconds of TensorFlow/subprocess work; the slow stage runs it (issue 18: default suite <= 4 min)
def test_too_many_bad_images_exit_code(data, tmp_path):
    r = bneck("extract", str(data), "-o", str(tmp_path / "x.h5"), *COMMON[:-1], "0.01")
    assert r.returncode == 3 and "--max-bad-fraction" in r.stderr
    assert "broken.jpg (truncated)" in r.stderr  # the final file does not exist: the message names them


def test_clear_errors_exit_1(tmp_path):
    r = bneck("extract", str(tmp_path / "missing_dir"), "-o", str(tmp_path / "x.h5"), "--weights", "none")
    assert r.returncode == 1 and "missing_dir" in r.stderr and "Traceback" not in r.stderr
    # A wrong name on the command line is a usage error (exit 2), caught before the data is read.
    r = bneck("extract", str(tmp_path), "-o", str(tmp_path / "x.h5"), "--backbone", "alexnet")
    assert r.returncode == 2 and "choose one of" in r.stderr


def test_backbones_json():
    r = bneck("backbones", "--json")
    assert r.returncode == 0
    assert "vgg16" in {b["name"] for b in json.loads(r.stdout)}


def test_every_flag_has_help():
    from pipeline.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        for action in p._actions:
            assert action.help, f"bneck {name} {action.option_strings or action.dest} has no --help text"


def test_a_batch_size_below_one_is_a_usage_error(tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "pipeline", "extract", str(tmp_path), "-o", str(tmp_path / "o.h5"),
                        "--batch-size", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and "--batch-size: must be at least 1" in r.stderr


def test_json_stdout_stays_json_when_keras_prints_while_downloading(data, tmp_path, monkeypatch, capsys):
    """Keras prints "Downloading data from ..." to stdout; with --json only the JSON object may be there."""
    import keras

    from pipeline.cli.main import main

    module = keras.applications.mobilenet
    real = module.MobileNet

    def offline_mobilenet(*args, weights=None, **kw):
        if weights == "imagenet":  # what Keras does on a machine without network access
            print("Downloading data from https://storage.googleapis.com/.../mobilenet_1_0_224_tf_no_top.h5")
            raise OSError("URL fetch failure: network is unreachable")
        return real(*args, weights=weights, **kw)

    monkeypatch.setattr(module, "MobileNet", offline_mobilenet)
    argv = ["extract", str(data), "-o", str(tmp_path / "f.h5"), *COMMON, "--json"]
    argv[argv.index("--weights") + 1] = "auto"  # imagenet if it can be had, else random (loudly)
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["rows"] == 25  # the whole of stdout is one JSON object
    assert "Downloading data from" in err


def test_info_names_the_file_it_cannot_read(tmp_path):
    (tmp_path / "notes.h5").write_text("not HDF5 at all")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    for name, says in [("notes.h5", "cannot be read as HDF5"), ("other.h5", "not a bneck feature file"),
                       ("gone.h5", "no such file")]:
        r = bneck("info", str(tmp_path / name))
        assert r.returncode == 1 and f"{tmp_path / name}: {says}" in r.stderr and "Traceback" not in r.stderr

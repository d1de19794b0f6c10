"""`bneck extract --precision int8` as a user runs it: shards share one calibration, merge, train, predict."""

import json

import h5py
import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")
pytestmark = pytest.mark.slow  # six CLI runs, each converting and compiling VGG16: about a minute

from tests.e2e.test_cli_extract import bneck  # noqa: E402
from tests.imagefolders import make_class_folder  # noqa: E402

INT8 = ["--backbone", "vgg16", "--input-size", "32", "--weights", "none", "--seed", "3", "--runtime", "openvino",
        "--precision", "int8", "--calibration-images", "6", "--batch-size", "4", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    make_class_folder(root / "data", classes=("a", "b"), per_class=6)
    env = {"HOME": str(root / "home")}  # the OpenVINO model cache of this test only

    def cli(*args):
        return bneck(*map(str, args), env=env)

    return root, cli


def test_shards_share_one_calibration_and_match_an_unsharded_run(run):
    root, cli = run
    r = cli("extract", root / "data", "-o", root / "all.h5", *INT8, "--json")
    assert r.returncode == 0, r.stderr
    assert "int8: calibrating on 6 images" in r.stderr
    from features.mapper.device import cpu_has_int8_dot

    # Where int8 cannot be faster (no VNNI/AMX), the user is told so, and the run still completes.
    assert ("no int8 dot-product instructions" in r.stderr) == (not cpu_has_int8_dot())
    assert json.loads(r.stdout)["rows"] == 12  # NNCF's progress bar stays off stdout
    for i in range(2):
        r = cli("extract", root / "data", "-o", root / "s.h5", *INT8, "--shard", f"{i}/2")
        assert r.returncode == 0, r.stderr
        assert "calibrating" not in r.stderr  # the quantized model of the first run is reused
    files = sorted(str(p) for p in root.glob("s.shard-*.h5"))
    r = cli("merge", *files, "-o", root / "merged.h5")
    assert r.returncode == 0, r.stderr
    with h5py.File(root / "all.h5") as a, h5py.File(root / "merged.h5") as m:
        assert a.attrs["precision"] == "int8" == m.attrs["precision"]
        assert a.attrs["calibration"] == m.attrs["calibration"] and "6 of 12 rows" in a.attrs["calibration"]
        np.testing.assert_array_equal(a["features"][()], m["features"][()])
        assert np.abs(a["features"][()]).sum() > 0
    r = cli("info", root / "all.h5")
    assert "int8 calibration: 6 of 12 rows" in r.stdout


def test_a_test_set_calibrated_on_the_training_set_reuses_its_model(run, tmp_path):
    root, cli = run
    make_class_folder(tmp_path / "test", classes=("a", "b"), per_class=2, seed=9)
    r = cli("extract", tmp_path / "test", "-o", tmp_path / "test.h5", *INT8, "--calibrate-on", root / "data")
    assert r.returncode == 0, r.stderr
    assert "calibrating" not in r.stderr  # the training set's int8 model, from the cache
    with h5py.File(root / "all.h5") as a, h5py.File(tmp_path / "test.h5") as t:
        assert t.attrs["calibration"] == a.attrs["calibration"]
    bf16 = ["bf16" if a == "int8" else a for a in INT8]
    r = cli("extract", tmp_path / "test", "-o", tmp_path / "bf16.h5", *bf16, "--calibrate-on", root / "data")
    assert r.returncode != 0 and "--calibrate-on applies to --precision int8 only" in r.stderr


def test_other_calibration_size_is_another_run(run):
    root, cli = run
    r = cli("extract", root / "data", "-o", root / "all.h5", *INT8, "--calibration-images", "4")
    assert r.returncode != 0 and "calibration" in r.stderr and "--overwrite" in r.stderr


def test_train_and_predict_on_int8_features(run):
    root, cli = run
    if not (root / "all.h5").exists():
        pytest.skip("needs the extraction of the first test")
    r = cli("train", root / "all.h5", "-o", root / "svm", "--head", "svm", "--pooling", "avg", "--json")
    assert r.returncode == 0, r.stderr
    r = cli("predict", root / "svm", root / "data" / "a", "--json")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) == 6


def test_int8_refuses_the_tensorflow_runtime(run):
    root, cli = run
    args = [a if a != "openvino" else "tensorflow" for a in INT8]
    r = cli("extract", root / "data", "-o", root / "tf.h5", *args)
    assert r.returncode != 0 and "needs --runtime openvino" in r.stderr and "Traceback" not in r.stderr
    assert not (root / "tf.h5").exists()

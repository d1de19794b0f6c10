"""`bneck train/evaluate/predict/export` as a user runs them, and predict == evaluate == export on the same images."""

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from tests.imagefolders import make_class_folder

# Every test here starts bneck processes (TensorFlow: seconds each) on the module's extracted and
# trained fixture; the default suite keeps the in-process CLI tests (tests/test_cli*.py).
pytestmark = pytest.mark.slow

EXTRACT = ["--backbone", "mobilenet", "--input-size", "32", "--layer", "conv_pw_1_relu", "--weights", "none",
           "--seed", "5", "--precision", "fp32", "--store-dtype", "float32", "--batch-size", "8", "--no-progress"]


def bneck(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    r = subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True, env=env)
    return r


def ok(*args):
    r = bneck(*args)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage2")
    make_class_folder(root / "train", classes=("a", "b", "c"), per_class=8, seed=1)
    make_class_folder(root / "test", classes=("a", "b", "c"), per_class=3, seed=2)
    ok("extract", root / "train", "-o", root / "train.h5", *EXTRACT)
    ok("extract", root / "test", "-o", root / "test.h5", *EXTRACT)
    # The logreg model later tests predict/export/evaluate with: trained here, not by an earlier test, so that
    # each test also runs alone and under `-m slow` (sklearn heads train without TensorFlow: about a second).
    ok("train", root / "train.h5", "-o", root / "logreg", "--head", "logreg", "--pooling", "avg")
    return root


@pytest.mark.slow  # each bneck process starts in seconds; the module's fixture extracts and trains
def test_train_evaluate_json_headline(work):
    out = json.loads(ok("train", work / "train.h5", "-o", work / "svm", "--head", "svm", "--pooling", "avg",
                        "--grid", "C=0.1,1", "--jobs", "2", "--json"))
    assert out["head"] == "svm" and "accuracy" in out
    res = json.loads(ok("evaluate", work / "svm", work / "test.h5", "--json"))
    assert list(res)[0] == "accuracy" and res["n"] == 9 and len(res["confusion_matrix"]) == 3
    text = ok("evaluate", work / "svm", work / "test.h5")
    assert "confusion matrix" in text


def test_train_svm_tol_flag_reaches_the_model(work):
    ok("train", work / "train.h5", "-o", work / "svm-tol", "--head", "svm", "--pooling", "avg", "--tol", "0.001")
    meta = json.loads((work / "svm-tol" / "model.json").read_text())
    assert meta["params"]["tol"] == 0.001


def _cached_scores(h5, model_dir):
    from pipeline.evaluate import head_scores
    from pipeline.modeldir import load_model_dir

    head, meta = load_model_dir(model_dir)
    with h5py.File(h5) as f:
        x = f["features"][()]
        paths = [p.decode() for p in f["paths"][()]]
    if meta["pooling"] == "avg":
        x = x.mean(axis=(1, 2))
    return dict(zip(paths, head_scores(head, x, "classification")))


@pytest.mark.slow  # each bneck process starts in seconds; the module's fixture extracts and trains
@pytest.mark.parametrize("head,extra", [("logreg", ["--pooling", "avg"]),
                                        pytest.param("dense", ["--epochs", "3"], marks=pytest.mark.slow)])
def test_predict_matches_evaluate_on_cached_features(work, head, extra):
    ok("train", work / "train.h5", "-o", work / head, "--head", head, *extra, "--overwrite")
    lines = ok("predict", work / head, work / "test", "--json", "--top-k", "3").strip().splitlines()
    assert len(lines) == 9
    cached = _cached_scores(work / "test.h5", work / head)
    for line in lines:
        r = json.loads(line)
        rel = os.path.relpath(r["path"], work / "test")
        want = cached[rel]
        names = ["a", "b", "c"]
        assert r["label"] == names[int(np.argmax(want))]
        for name, score in r["scores"].items():
            assert score == pytest.approx(float(want[names.index(name)]), abs=1e-4)


@pytest.mark.slow  # each bneck process starts in seconds; the module's fixture extracts and trains
def test_tta_flip_and_bad_file_exit_code(work, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    r = bneck("predict", work / "logreg", tmp_path / "typo.jpg", work / "test" / "a", bad, "--tta-flip", "--json",
              "--top-k", "2")
    lines = [json.loads(x) for x in r.stdout.strip().splitlines()]
    assert r.returncode == 1 and len(lines) == 5, r.stderr
    assert lines[0]["error"] == "missing" and lines[-1]["error"] == "not_image"  # one typo hides nothing else
    assert all(len(x["scores"]) == 2 for x in lines[1:4])


@pytest.mark.slow  # two predict runs, each starting TensorFlow (~6 s)
def test_non_utf8_file_names_are_escaped_in_text_and_json_output(work, tmp_path):
    src = next((work / "test" / "a").iterdir())
    try:
        name = os.path.join(os.fsencode(tmp_path), b"caf\xe9.png")  # Latin-1 bytes: not UTF-8
        with open(name, "wb") as f:
            f.write(src.read_bytes())
    except OSError:
        pytest.skip("this filesystem refuses non-UTF-8 file names")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONIOENCODING="utf-8", LC_ALL="C.UTF-8")
    for extra in ([], ["--json"]):
        r = subprocess.run([sys.executable, "-m", "pipeline", "predict", str(work / "logreg"), str(tmp_path), *extra],
                           capture_output=True, env=env)
        assert r.returncode == 0, r.stderr.decode(errors="replace")
        out = r.stdout.decode("utf-8")  # strict: the output is valid UTF-8
        shown = json.loads(out)["path"] if extra else out.split("\t")[0]
        assert shown.endswith("caf\\xe9.png"), out


@pytest.mark.slow  # five bneck runs, three exports starting TensorFlow
def test_existing_outputs_are_refused_before_any_work(work, tmp_path):
    ok("train", work / "train.h5", "-o", tmp_path / "m", "--head", "logreg", "--pooling", "avg")
    r = bneck("train", work / "train.h5", "-o", tmp_path / "m", "--head", "logreg", "--pooling", "avg")
    assert r.returncode == 1 and "already exists (use --overwrite" in r.stderr
    assert "loading" not in r.stderr  # refused before the features were read
    ok("export", tmp_path / "m", "-o", tmp_path / "m.keras")
    r = bneck("export", tmp_path / "m", "-o", tmp_path / "m.keras")
    assert r.returncode == 1 and "already exists (use --overwrite" in r.stderr
    ok("export", tmp_path / "m", "-o", tmp_path / "m.keras", "--overwrite")


@pytest.mark.slow  # three bneck runs
def test_bad_grid_values_and_representative_paths_are_one_line_errors(work, tmp_path):
    r = bneck("train", work / "train.h5", "-o", tmp_path / "g", "--head", "svm", "--pooling", "avg",
              "--grid", "C=a,b")
    # Words for a number are a malformed command line (exit 2, before the features are read); a number the
    # estimator refuses only the fit can judge (exit 1).
    assert r.returncode == 2 and "grid parameter 'C' takes numbers" in r.stderr and "Traceback" not in r.stderr
    r = bneck("train", work / "train.h5", "-o", tmp_path / "g", "--head", "svm", "--pooling", "avg",
              "--grid", "C=1,-1")
    assert r.returncode == 1 and "'C' parameter" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") < 6 and not (tmp_path / "g").exists()
    r = bneck("export", work / "logreg", "-o", tmp_path / "m.keras", "--representative", tmp_path / "nowhere")
    assert r.returncode == 1 and "nowhere: no such file" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow  # export and predict, each starting TensorFlow
def test_export_keras_matches_predict(work, tmp_path):
    import keras

    from features.images import load_rgb

    report = json.loads(ok("export", work / "logreg", "-o", tmp_path / "m.keras", "--json"))
    assert report["max_abs_diff"] <= 1e-4
    model = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    files = sorted((work / "test" / "b").iterdir())
    x = np.stack([load_rgb(str(p), (32, 32)) for p in files]).astype("float32")
    scores = np.asarray(model(x))
    lines = [json.loads(s) for s in ok("predict", work / "logreg", *files, "--json").splitlines()]
    for row, r in zip(scores, lines):
        assert ["a", "b", "c"][int(np.argmax(row))] == r["label"]
        assert max(r["scores"].values()) == pytest.approx(float(row.max()), abs=1e-4)


@pytest.mark.slow  # a third extract, then evaluate and train
def test_incompatible_features_refused_by_cli(work, tmp_path):
    make_class_folder(tmp_path / "d", classes=("a", "b", "c"), per_class=2)
    ok("extract", tmp_path / "d", "-o", tmp_path / "other.h5", *EXTRACT[:-3], "--input-size", "48",
       "--batch-size", "8", "--no-progress")
    r = bneck("evaluate", work / "logreg", tmp_path / "other.h5")
    assert r.returncode == 1 and "input_size" in r.stderr
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["features"] = np.zeros((2, 4))
    r = bneck("train", foreign, "-o", tmp_path / "m")
    assert r.returncode == 1 and "foreign.h5" in r.stderr


@pytest.mark.slow  # its own extract, train and predict
def test_predict_keypoints_in_the_photos_own_pixels(tmp_path):
    """A keypoint model trained on 96x96 faces, asked about the same face as a 192x192 photo."""
    from PIL import Image

    from pipeline.tools.demo import make_demo

    paths = make_demo(tmp_path / "demo", n_faces=16)
    ok("extract", paths["keypoints_training"], "-o", tmp_path / "k.h5", *EXTRACT, "--pooling", "avg")
    ok("train", tmp_path / "k.h5", "-o", tmp_path / "m", "--head", "specialists")
    with open(paths["keypoints_validation"]) as f:
        f.readline()
        pixels = np.array(f.readline().rsplit(",", 1)[1].split(), np.uint8).reshape(96, 96)
    Image.fromarray(pixels).save(tmp_path / "small.png")
    Image.fromarray(pixels).resize((192, 192), Image.NEAREST).save(tmp_path / "big.png")
    small, big = (json.loads(line) for line in ok("predict", tmp_path / "m", tmp_path / "small.png",
                                                   tmp_path / "big.png", "--json").splitlines())
    assert small["image_size"] == [96, 96] and big["image_size"] == [192, 192]
    s = np.array(list(small["targets"].values()))
    b = np.array(list(big["targets"].values()))
    assert len(s) == 30 and s.min() > 5  # face coordinates, all away from the corner
    # Twice the photo, twice the coordinates (pixel centres), up to how the two resizes to 32x32 differ.
    np.testing.assert_allclose(b, (s + 0.5) * 2 - 0.5, atol=2.0)

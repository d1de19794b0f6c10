"""A model directory is portable: trained in one tree, moved with its weights file to another tree with other
absolute paths, it predicts the same there. Backbone weights are found by their sha256, not their old path."""

import json
import os
import shutil

import pytest

from features import backbones, weights
from pipeline.cli.main import main
from tests.imagefolders import make_class_folder

EXTRACT = ["--backbone", "mobilenet", "--input-size", "32", "--precision", "fp32", "--store-dtype", "float32",
           "--batch-size", "4", "--runtime", "tensorflow", "--no-progress"]


def _predict_json(capsys, model, images, *extra):
    capsys.readouterr()
    assert main(["-q", "predict", str(model), str(images), "--json", *extra]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    a = tmp_path_factory.mktemp("tree_a")
    src, _ = weights.build_backbone(backbones.get("mobilenet"), input_size=(32, 32), weights="none", seed=21)
    src.save_weights(str(a / "mine.weights.h5"))
    make_class_folder(a / "data", classes=("x", "y"), per_class=5)
    assert main(["-q", "extract", str(a / "data"), "-o", str(a / "f.h5"), "--weights", str(a / "mine.weights.h5"),
                 *EXTRACT]) == 0
    assert main(["-q", "train", str(a / "f.h5"), "-o", str(a / "model"), "--head", "logreg", "--pooling", "avg"]) == 0
    return a


def test_moved_model_and_weights_predict_the_same(trained, tmp_path, capsys):
    before = _predict_json(capsys, trained / "model", trained / "data")
    b = tmp_path / "elsewhere" / "deeper"
    b.mkdir(parents=True)
    shutil.copytree(trained / "model", b / "model")
    shutil.copy(trained / "mine.weights.h5", b / "renamed.weights.h5")  # another name: found by content
    shutil.copytree(trained / "data", b / "data")
    moved = trained.parent / (trained.name + "_gone")
    os.rename(trained, moved)  # the recorded absolute paths no longer exist
    try:
        after = _predict_json(capsys, b / "model", b / "data")  # weights beside the model
    finally:
        os.rename(moved, trained)
    assert [r["scores"] for r in after] == [r["scores"] for r in before]
    assert [os.path.basename(r["path"]) for r in after] == [os.path.basename(r["path"]) for r in before]


def test_weights_path_env_and_a_clear_error_when_missing(trained, tmp_path, capsys, caplog, monkeypatch):
    shutil.copytree(trained / "model", tmp_path / "model")
    moved = trained.parent / (trained.name + "_gone2")
    os.rename(trained, moved)
    try:
        capsys.readouterr()
        assert main(["predict", str(tmp_path / "model"), str(moved / "data"), "--json"]) == 1
        err = caplog.text
        sha = json.loads((tmp_path / "model" / "model.json").read_text())["features"]["weights_sha256"]
        assert sha in err and str(tmp_path / "model") in err and "BNECK_WEIGHTS_PATH" in err
        store = tmp_path / "store"
        store.mkdir()
        shutil.copy(moved / "mine.weights.h5", store / "w.weights.h5")
        monkeypatch.setenv("BNECK_WEIGHTS_PATH", str(store))
        assert len(_predict_json(capsys, tmp_path / "model", moved / "data")) == 10
    finally:
        os.rename(moved, trained)


@pytest.mark.slow  # ~2 s; the moved model's own test stays in the default suite
def test_export_dir_with_bundled_weights_is_self_contained(trained, tmp_path, capsys):
    """`bneck export --format dir --bundle-weights`: one folder to send; it predicts the same with nothing else."""
    before = _predict_json(capsys, trained / "model", trained / "data")
    copy = tmp_path / "to_send"
    assert main(["-q", "export", str(trained / "model"), "-o", str(copy), "--format", "dir", "--bundle-weights",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["weights"] == "mine.weights.h5" and "mine.weights.h5" in report["files"]
    doc = json.loads((copy / "model.json").read_text())
    assert "mine.weights.h5" in doc["files"] and doc["head_loader"] == "arrays"
    shutil.copytree(trained / "data", tmp_path / "data")
    moved = trained.parent / (trained.name + "_gone3")
    os.rename(trained, moved)  # neither the old tree nor its weights file exist any more
    try:
        after = _predict_json(capsys, copy, tmp_path / "data")
    finally:
        os.rename(moved, trained)
    assert [r["scores"] for r in after] == [r["scores"] for r in before]

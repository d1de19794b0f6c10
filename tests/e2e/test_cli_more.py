"""The classic-workflow commands through the CLI: finetune, evaluate-images, classify, backbones, filters, frames."""

import argparse
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from pipeline.cli.main import build_parser, main
from tests.e2e.test_cli_extract import bneck
from tests.imagefolders import make_class_folder

MINE = ("finetune", "evaluate-images", "classify", "visualize-filters", "frames", "backbones")


def test_every_flag_has_help():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name in MINE:
        for action in sub.choices[name]._actions:
            assert action.help and action.help.strip(), f"bneck {name} {action.option_strings or action.dest}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from pipeline.train import train
    from tests.stage2_fixtures import extract_fast

    root = tmp_path_factory.mktemp("more")
    make_class_folder(root / "data", classes=("a", "b"), per_class=6)
    feats = extract_fast(root / "data", root / "f.h5", input_size="32", layer="conv_pw_2_relu")
    train(feats, root / "m", head="dense", params={"epochs": 1, "units": 8})
    return root


@pytest.mark.slow  # seconds of TensorFlow/subprocess work; the slow stage runs it (issue 18: default suite <= 4 min)
def test_finetune_then_evaluate_images(trained, capsys):
    out = trained / "ft"
    r = bneck("finetune", str(trained / "m"), str(trained / "data"), "-o", str(out), "--unfreeze", "conv_pw_2",
              "--epochs", "1", "--batch-size", "4", "--no-augment", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["best_epoch"] == 1 and summary["trainable_backbone_layers"] == 1 and 0 <= summary["accuracy"] <= 1
    assert "epoch 1/1" in r.stderr
    assert main(["evaluate-images", str(out), str(trained / "data"), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["n"] == 12 and ev["head"] == "finetuned"
    assert main(["evaluate-images", str(trained / "m"), str(trained / "data")]) == 0  # a stage-two model too
    assert "accuracy" in capsys.readouterr().out
    # Nothing to unfreeze chosen: a usage error.
    with pytest.raises(SystemExit) as e:
        main(["finetune", str(trained / "m"), str(trained / "data"), "-o", str(trained / "x")])
    assert e.value.code == 2 and "--unfreeze" in capsys.readouterr().err


def test_evaluate_images_names_bad_images_and_exits_3_past_the_threshold(trained, tmp_path, capsys, caplog):
    data = tmp_path / "data"
    shutil.copytree(trained / "data", data)
    (data / "b" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0junk")  # 1 of 13 images
    assert main(["evaluate-images", str(trained / "m"), str(data), "--json", "--max-bad-fraction", "0.1"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["n"] == 12 and ev["n_bad_skipped"] == 1
    assert ev["bad_images"] == [{"path": os.path.join("b", "zz_broken.jpg"), "reason": "truncated"}]
    assert "zz_broken.jpg (truncated)" in caplog.text
    caplog.clear()
    assert main(["evaluate-images", str(trained / "m"), str(data), "--json"]) == 3  # 7.7% > the default 5%
    assert capsys.readouterr().out == "" and "more than --max-bad-fraction 0.05" in caplog.text


def test_classify_offline_is_a_clear_error(monkeypatch, tmp_path, caplog):
    from features import backbones

    def refuse(*a, **k):
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(backbones.BackboneSpec, "build_full", refuse)
    monkeypatch.setattr(backbones.BackboneSpec, "decode_predictions", refuse)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    with caplog.at_level("ERROR", logger="bneck"):
        assert main(["classify", str(tmp_path / "a.png"), "--backbone", "vgg16"]) == 1
    assert "vgg16_weights_tf_dim_ordering_tf_kernels.h5" in caplog.text and "imagenet_class_index.json" in caplog.text


def test_backbones_summary_and_plot(monkeypatch, tmp_path, capsys, caplog):
    assert main(["backbones", "--summary", "vgg16", "--input-size", "32"]) == 0
    text = capsys.readouterr().out
    assert "block5_pool **" in text and "total params 14,714,688" in text
    assert main(["backbones", "--summary", "mobilenet", "--input-size", "32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_params"] == 3_228_864
    if shutil.which("dot"):
        pytest.importorskip("pydot")
        assert main(["backbones", "--plot", "mobilenet", "--input-size", "32", "-o", str(tmp_path / "m.png")]) == 0
        assert Image.open(tmp_path / "m.png").size[1] > 100
    monkeypatch.setattr("pipeline.tools.filters.shutil.which", lambda name: None)
    with caplog.at_level("ERROR", logger="bneck"):
        assert main(["backbones", "--plot", "mobilenet", "-o", str(tmp_path / "x.png")]) == 1
    assert "graphviz" in caplog.text.lower() and not os.path.exists(tmp_path / "x.png")
    capsys.readouterr()
    assert main(["backbones", "-o", str(tmp_path / "y.png")]) == 2  # -o alone would be silently ignored
    assert "-o/--output is the image file of --plot NAME" in capsys.readouterr().err


def test_visualize_filters(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["visualize-filters", "--backbone", "mobilenet", "--layer", "conv_pw_1", "--filters", "0-3",
                 "-o", str(out), "--weights", "none", "--steps", "4", "--size", "32", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["grid_size"] == [68, 68] and all(e > s for s, e in zip(r["start"], r["end"]))
    assert Image.open(out).size == (68, 68)


def test_frames(tmp_path, capsys):
    iio = pytest.importorskip("imageio.v3")
    pytest.importorskip("imageio_ffmpeg")
    (tmp_path / "v").mkdir()
    iio.imwrite(tmp_path / "v" / "wave.mp4", np.full((6, 32, 32, 3), 120, np.uint8), fps=5)
    assert main(["frames", str(tmp_path / "v"), "-o", str(tmp_path / "ds"), "--every", "2", "--no-progress",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == 3
    assert sorted(os.listdir(tmp_path / "ds" / "wave"))[1:] == ["wave_000000.jpg", "wave_000002.jpg", "wave_000004.jpg"]

"""`bneck frames` -> `extract` -> `info` -> `train` on tiny videos the test writes: the split goes by video.

Frames of one video are near-identical, so validation frames must come from videos no training frame came
from (issue 19); with one video per class that is impossible, and train says so instead of pretending.
"""

import json
import os

import h5py
import numpy as np
import pytest

from features import faults
from features.writer.finished import partial_dir
from pipeline.cli.main import main

# Two to three extracts and trains of a TensorFlow backbone (~10 s each here); the default suite has
# tests/pipeline/data/test_splits.py (the splits, train's model.json) and tests/features/test_merge.py
# (extract and merge of groups).
pytestmark = pytest.mark.slow

FAST = ["--backbone", "mobilenet", "--input-size", "32", "--weights", "none", "--seed", "2", "--precision", "fp32",
        "--store-dtype", "float32", "--batch-size", "4", "--chunk-rows", "4", "--no-progress", "--json"]


def _videos(root, *, nested=True):
    """Two classes, three 6-frame videos each (their own colour), as VIDEO_DIR/<class>/<video>.mp4 or flat."""
    iio = pytest.importorskip("imageio.v3")
    pytest.importorskip("imageio_ffmpeg")
    rng = np.random.default_rng(0)
    for c, base in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        for k in range(3 if nested else 1):
            folder = root / c if nested else root
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.clip(np.array(base) + rng.integers(-25, 25, 3), 0, 255).astype(np.uint8)
            clip = np.zeros((6, 32, 32, 3), np.uint8) + colour
            iio.imwrite(folder / (f"{c}_v{k}.mp4" if nested else f"{c}.mp4"), clip, fps=5)
    return root


def _run(capsys, *argv):
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out


def test_frames_extract_info_train_split_by_video(tmp_path, capsys):
    videos = _videos(tmp_path / "videos")
    _run(capsys, "frames", videos, "-o", tmp_path / "frames", "--every", "2", "--no-progress")
    out = tmp_path / "frames.h5"
    # Killed mid-run and resumed: the groups are the manifest's, written in the end session.
    with faults.raising_at("batch", KeyboardInterrupt(), nth=2):
        assert main(["extract", str(tmp_path / "frames"), "-o", str(out), *FAST]) != 0  # Ctrl-C: chunks kept
    assert os.path.isdir(partial_dir(str(out))) and not out.exists()
    _run(capsys, "extract", tmp_path / "frames", "-o", out, *FAST)
    with h5py.File(out) as f:
        groups = f["groups"].asstr()[()].tolist()
        paths = f["paths"].asstr()[()].tolist()
        assert f["groups"].attrs["group_by"] == "video" and len(groups) == 18
    assert all(g.startswith(p.split("_", 1)[0]) for p, g in zip(paths, groups))  # blue/blue_v0_000002.jpg
    info = json.loads(_run(capsys, "info", out, "--json").out)
    assert info["groups"] == {"by": "video", "count": 6, "rows_min": 3, "rows_max": 3}
    assert "groups: 6 by video" in _run(capsys, "info", out).out

    # logreg: its default C search runs CV folds over the training frames, grouped by video too.
    r = _run(capsys, "train", out, "-o", tmp_path / "m", "--head", "logreg", "--pooling", "avg", "--val-split", "0.34")
    assert "held-out rows (whole videos)" in r.out
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    split = meta["training"]["split"]
    assert split["grouped"] and split["by"] == "video" and split["n_groups"] == 6 and split["n_val_groups"] == 2
    assert split["classes_not_validated"] == [] and split["warning"] is None
    assert meta["training"]["n_val_rows"] == 6 and meta["training"]["n_train_rows"] == 12  # two whole videos
    assert meta["training"]["grid"]["cv_folds"] == {"grouped": True, "by": "video", "n_folds": 3, "warning": None}


def test_one_video_per_class_warns_that_validation_is_optimistic(tmp_path, capsys, caplog):
    videos = _videos(tmp_path / "videos", nested=False)
    _run(capsys, "frames", videos, "-o", tmp_path / "frames", "--every", "2", "--no-progress")
    out = tmp_path / "frames.h5"
    _run(capsys, "extract", tmp_path / "frames", "-o", out, *FAST)
    r = _run(capsys, "train", out, "-o", tmp_path / "m", "--head", "logreg", "--pooling", "avg", "--C", "1")
    assert "optimistic" in caplog.text and "held-out rows (optimistic: near-duplicates" in r.out
    split = json.loads((tmp_path / "m" / "model.json").read_text())["training"]["split"]
    assert split["grouped"] is False and split["by"] == "video" and "optimistic" in split["warning"]

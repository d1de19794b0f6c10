"""features.engines.gpus: one worker process per GPU id, shards from one queue, then the merge.

No GPU here: the workers get CUDA_VISIBLE_DEVICES of ids that do not exist and run on the CPU,
which exercises everything but the device itself (process per id, queue, resume, merge, errors).
"""

import os

import h5py
import pytest

from features.config import ExtractConfig
from features.engines import gpus as G
from features.runner import extract
from tests.feature_files import assert_rows_close
from tests.imagefolders import make_class_folder

KW = dict(backbone="mobilenet", input_size="32", weights="none", seed=5, batch_size=4, progress=False,
          precision="fp32", store_dtype="float32", max_bad_fraction=0.5, runtime="tensorflow")


def test_parse_gpus():
    assert G.parse_gpus("all", ["0", "1", "2"]) == ["0", "1", "2"]
    assert G.parse_gpus("2", ["0", "1", "2"]) == ["0", "1"]
    assert G.parse_gpus("1,3", []) == ["1", "3"]
    with pytest.raises(ValueError, match="no GPU is visible"):
        G.parse_gpus("all", [])
    with pytest.raises(ValueError, match="3 GPU"):
        G.parse_gpus("4", ["0", "1", "2"])
    for bad in ("", "0,0", "a,b", "x"):
        with pytest.raises(ValueError, match="--gpus"):
            G.parse_gpus(bad, ["0"])


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 5")
    assert G.visible_gpus() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert G.visible_gpus() == []


def test_refuses_shard_and_empty_gpu_list(tmp_path):
    cfg = ExtractConfig(data=str(tmp_path), output=str(tmp_path / "o.h5"), shard="0/2", **KW)
    with pytest.raises(ValueError, match="--shard"):
        G.extract_gpus(cfg, ["0"])
    with pytest.raises(ValueError, match="at least one"):
        G.extract_gpus(cfg, [])


@pytest.mark.slow
def test_two_workers_equal_one_run_and_a_rerun_is_a_no_op(tmp_path):
    make_class_folder(tmp_path / "data", classes=("a", "b"), per_class=9,
                      bad=[("b", "broken.jpg", b"\xff\xd8\xff\xe0junk")])
    single = extract(ExtractConfig(data=str(tmp_path / "data"), output=str(tmp_path / "one.h5"), **KW))
    cfg = ExtractConfig(data=str(tmp_path / "data"), output=str(tmp_path / "two.h5"), **KW)
    summary = G.extract_gpus(cfg, ["0", "1"], shards_per_gpu=2)
    assert summary.rows == single.rows == 19 and summary.computed == 19 and summary.bad == 1
    assert not os.path.exists(G.work_dir(cfg.output))  # shard files merged and removed
    with h5py.File(single.output) as a, h5py.File(cfg.output) as b:
        assert set(a) == set(b)
        for name in ("paths", "labels", "valid", "reason", "image_size"):
            assert (a[name][()] == b[name][()]).all(), name
        for name in ("features", "features_flipped"):
            assert_rows_close(b[name][()], a[name][()])
        assert b.attrs["complete"]
    again = G.extract_gpus(cfg, ["0", "1"])
    assert again.skipped_existing and again.computed == 0

"""pipeline.cli.main.main as a batch job sees it: exit codes and the one-line message that goes with each."""

import os

import h5py
import numpy as np
import pytest

from features import faults
from pipeline.cli.errors import EXIT_INTERRUPTED
from pipeline.cli.main import main
from tests.imagefolders import make_class_folder

EXTRACT = ["--backbone", "mobilenet", "--input-size", "32", "--layer", "conv_pw_1_relu", "--weights", "none",
           "--precision", "fp32", "--store-dtype", "float32", "--batch-size", "4", "--chunk-rows", "4",
           "--no-progress"]


def test_ctrl_c_exits_130_keeps_finished_chunks_and_the_rerun_resumes(tmp_path, monkeypatch, caplog):
    make_class_folder(tmp_path / "d", per_class=6)  # 12 images: 3 chunks of 4
    out = tmp_path / "f.h5"
    with faults.raising_at("batch", KeyboardInterrupt(), nth=3):
        assert main(["extract", str(tmp_path / "d"), "-o", str(out), *EXTRACT]) == EXIT_INTERRUPTED == 130
    assert "interrupted; finished chunks are kept, rerun the same command to resume" in caplog.text
    assert not out.exists() and any(n.startswith("chunk-") for n in os.listdir(f"{out}.partial"))
    assert main(["extract", str(tmp_path / "d"), "-o", str(out), *EXTRACT, "--json"]) == 0
    with h5py.File(out) as f:
        assert f["valid"][()].all() and np.isfinite(f["features"][()]).all() and len(f["paths"]) == 12


def test_ctrl_c_elsewhere_says_nothing_was_written(tmp_path, monkeypatch, caplog):
    from pipeline import train

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train", interrupted)
    (tmp_path / "f.h5").write_bytes(b"")
    assert main(["train", str(tmp_path / "f.h5"), "-o", str(tmp_path / "m")]) == 130
    assert "interrupted; nothing was written" in caplog.text and not (tmp_path / "m").exists()


@pytest.mark.parametrize("argv", [["extract", "x", "-o", "y", "--batch-size", "0"],
                                  ["predict", "m", "x", "--top-k", "0"]])
def test_bad_numbers_are_usage_errors_before_any_work(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "must be at least 1, got 0" in capsys.readouterr().err


def test_batch_size_auto_is_32_on_a_cpu_and_the_summary_says_so(tmp_path, capsys):
    import json

    make_class_folder(tmp_path / "d", per_class=3)
    argv = [a for a in EXTRACT if a not in ("--batch-size", "4", "--chunk-rows")]
    assert main(["extract", str(tmp_path / "d"), "-o", str(tmp_path / "f.h5"), *argv, "--batch-size", "auto",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["compute_batch"] == 32 and summary["rows"] == 6

"""`bneck extract --shard I/3` x3, `bneck merge`, then stage two on the merged file: as a user runs it."""

import json
import os

import h5py
import numpy as np
import pytest

from tests.e2e.test_cli_extract import COMMON, bneck
from tests.imagefolders import make_class_folder

# Three shard extracts, each a bneck process starting TensorFlow, before the first test; tests/features/test_merge.py
# runs the same merges in-process in the default suite.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_merge")
    make_class_folder(root / "data", classes=("a", "b"), per_class=9)
    for i in range(3):
        r = bneck("extract", str(root / "data"), "-o", str(root / "f.h5"), *COMMON, "--shard", f"{i}/3")
        assert r.returncode == 0, r.stderr
    files = sorted(str(p) for p in root.glob("f.shard-*-of-00003.h5"))
    assert len(files) == 3
    return root, files


def test_merge_then_info_train_evaluate(shards):
    root, files = shards
    r = bneck("merge", *files, "-o", str(root / "f.h5"), "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["rows"] == 18 and summary["virtual"] is True
    r = bneck("info", str(root / "f.h5"), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["rows"] == 18 and info["valid"] == 18 and info["classes"] == {"a": 9, "b": 9}
    assert info["attrs"]["shard"] == "0/1" and info["attrs"]["row_stop"] == 18
    # The unsharded command now finds its output complete: a merged run never recomputes.
    r = bneck("extract", str(root / "data"), "-o", str(root / "f.h5"), *COMMON, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["skipped_existing"] is True, r.stderr
    model = root / "model"
    r = bneck("train", str(root / "f.h5"), "-o", str(model), "--head", "logreg", "--pooling", "avg", "--json")
    assert r.returncode == 0, r.stderr
    r = bneck("evaluate", str(model), str(root / "f.h5"), "--json")
    assert r.returncode == 0, r.stderr
    assert 0 <= json.loads(r.stdout)["accuracy"] <= 1


def test_copy_merge_of_a_directory_is_self_contained(shards, tmp_path):
    root, files = shards
    out = tmp_path / "copy.h5"
    r = bneck("merge", os.path.dirname(files[0]), "-o", str(out), "--copy", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "3 shards, 18 rows" in r.stdout and "self-contained" in r.stdout
    with h5py.File(out) as f:
        assert not any(f[n].is_virtual for n in f)
        rows = f["features"][()]
    parts = []
    for p in files:
        with h5py.File(p) as f:
            parts.append(f["features"][()])
    np.testing.assert_array_equal(np.concatenate(parts), rows)


def test_refusals_exit_1_without_traceback(shards, tmp_path):
    root, files = shards
    out = tmp_path / "x.h5"
    r = bneck("merge", files[0], files[2], "-o", str(out))
    assert r.returncode == 1 and "shards [1] of 3 are missing" in r.stderr and "Traceback" not in r.stderr
    r = bneck("merge", *files, str(tmp_path / "gone.h5"), "-o", str(out))
    assert r.returncode == 1 and "gone.h5: no such shard file" in r.stderr
    assert not out.exists()
    r = bneck("merge", "-o", str(out))
    assert r.returncode == 2

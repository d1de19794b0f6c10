"""`--engine ray`: shards on Ray actors, merged; must equal the local engine byte for byte.

Ray is the optional ``[ray]`` extra: without it these tests are skipped, not failed.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

ray = pytest.importorskip("ray")

from features.config import ExtractConfig, TooManyBadImages  # noqa: E402
from features.engines.ray import extract_ray, work_dir  # noqa: E402
from features.runner import extract  # noqa: E402
from tests.feature_files import assert_rows_close  # noqa: E402
from tests.imagefolders import make_class_folder  # noqa: E402

# Minutes of subprocess runs: CI's slow stage runs these (./run_all.sh test-slow); the default suite stays short.
pytestmark = pytest.mark.slow

KW = dict(backbone="mobilenet", input_size="32", weights="none", seed=11, batch_size=4, progress=False,
          precision="fp32", store_dtype="float32", max_bad_fraction=0.5)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 << 20, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """16 rows (one broken file) and the local engine's output for them."""
    root = tmp_path_factory.mktemp("ray")
    make_class_folder(root / "data", classes=("a", "b", "c"), per_class=5, bad=[("c", "x.jpg", b"\xff\xd8\xffjunk")])
    extract(ExtractConfig(data=str(root / "data"), output=str(root / "local.h5"), **KW))
    return root, str(root / "data"), str(root / "local.h5")


def _assert_equal_files(local, other):
    with h5py.File(local) as a, h5py.File(other) as b:
        assert set(a) == set(b)
        for name in a:
            x, y = a[name][()], b[name][()]
            assert x.dtype == y.dtype and x.shape == y.shape, name
            if x.dtype.kind == "f":  # actors run other thread counts: equal up to float rounding
                assert_rows_close(y, x)
            else:
                assert (x.tobytes() == y.tobytes()) if x.dtype.kind != "O" else list(x) == list(y), name
        assert not any(b[n].is_virtual for n in b)  # self-contained
        assert set(b.attrs) - set(a.attrs) <= {"merged_from", "virtual"}
        for k in a.attrs:
            if k != "created" and not k.startswith("run_"):  # how each shard ran is the shard's, not the merge's
                np.testing.assert_array_equal(a.attrs[k], b.attrs[k], err_msg=k)
        assert not [k for k in b.attrs if k.startswith("run_")]


def test_ray_equals_local_and_reruns_as_complete(local_ray, run, tmp_path):
    _, data, local = run
    out = str(tmp_path / "ray.h5")
    s = extract_ray(ExtractConfig(data=data, output=out, **KW), num_workers=2)
    assert (s.rows, s.computed, s.bad) == (16, 16, 1) and s.bad_reasons
    _assert_equal_files(local, out)
    assert not os.path.exists(work_dir(out))  # shard files merged and removed
    again = extract_ray(ExtractConfig(data=data, output=out, **KW), num_workers=2)
    assert again.skipped_existing and again.rows == 16
    # ...and the local engine agrees it is the same run.
    assert extract(ExtractConfig(data=data, output=out, **KW)).skipped_existing


def test_rerun_resumes_the_planned_shards(local_ray, run, tmp_path):
    """An interrupted run left shard 0 of 2 finished: the rerun keeps the plan and computes shard 1 only."""
    _, data, local = run
    out = str(tmp_path / "resumed.h5")
    work = work_dir(out)
    os.makedirs(work)
    with open(os.path.join(work, "plan.json"), "w") as f:
        json.dump({"n_shards": 2, "n_rows": 16}, f)
    extract(ExtractConfig(data=data, output=os.path.join(work, "resumed.h5"), shard="0/2", **KW))
    s = extract_ray(ExtractConfig(data=data, output=out, **KW), num_workers=2)
    assert s.computed == 8 and s.rows == 16
    _assert_equal_files(local, out)


def test_too_many_bad_images_keeps_the_shards(local_ray, run, tmp_path):
    _, data, local = run
    out = str(tmp_path / "bad.h5")
    with pytest.raises(TooManyBadImages, match="1 of 16 images"):
        extract_ray(ExtractConfig(data=data, output=out, **{**KW, "max_bad_fraction": 0.01}), num_workers=2)
    assert not os.path.exists(out) and os.path.isdir(work_dir(out))
    s = extract_ray(ExtractConfig(data=data, output=out, **KW), num_workers=2)
    assert s.computed == 0 and s.bad == 1  # nothing recomputed
    _assert_equal_files(local, out)


def test_clear_errors(local_ray, run, tmp_path):
    _, data, _ = run
    with pytest.raises(ValueError, match="without --shard"):
        extract_ray(ExtractConfig(data=data, output=str(tmp_path / "x.h5"), shard="0/2", **KW))
    with pytest.raises(ValueError, match="has 0 GPUs"):
        extract_ray(ExtractConfig(data=data, output=str(tmp_path / "x.h5"), **KW), num_gpus_per_worker=1)
    with pytest.raises(Exception, match="no_such_dir"):
        extract_ray(ExtractConfig(data=str(tmp_path / "no_such_dir"), output=str(tmp_path / "x.h5"), **KW))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.cluster
def test_cli_against_a_running_cluster(run, tmp_path):
    """`ray start --head` in the background, then `bneck extract --engine ray --ray-address HOST:PORT`."""
    _, data, local = run
    port = _free_port()
    # Ray >= 2.59 starts clusters with token auth; a driver joining one by address must opt in too.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", RAY_ADDRESS="", RAY_AUTH_MODE="token")
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", "--disable-usage-stats",
                             f"--temp-dir={tmp_path / 'ray'}", "--object-store-memory=100000000"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        out = tmp_path / "cluster.h5"
        cmd = [sys.executable, "-m", "pipeline", "extract", data, "-o", str(out), "--engine", "ray",
               "--ray-address", f"127.0.0.1:{port}", "--num-workers", "2", "--backbone", "mobilenet",
               "--input-size", "32", "--weights", "none", "--seed", "11", "--precision", "fp32", "--store-dtype",
               "float32", "--batch-size", "4", "--no-progress", "--max-bad-fraction", "0.5", "--json"]
        t0 = time.time()
        while True:  # the head takes a few seconds to accept drivers
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
            if r.returncode == 0 or time.time() - t0 > 60 or head.poll() is not None:
                break
            time.sleep(2)
        assert r.returncode == 0, r.stderr[-3000:]
        assert json.loads(r.stdout.splitlines()[-1])["computed"] == 16
        _assert_equal_files(local, str(out))
    finally:
        head.terminate()  # --block: stopping this process stops the head it started
        head.wait(timeout=60)
    shutil.rmtree(tmp_path / "ray", ignore_errors=True)

"""The shipped examples really run: the Slurm scripts (under a fake, synchronous `sbatch`) and the Makefile."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import pytest

from tests.e2e.test_cli_extract import COMMON, _wait_for_chunk
from tests.imagefolders import make_class_folder

# Minutes of subprocess runs: CI's slow stage runs these (./run_all.sh test-slow); the default suite stays short.
pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BNECK = shutil.which("bneck", path=os.path.dirname(sys.executable)) or "bneck"

# A stand-in for Slurm's sbatch: runs the job at once, each array index in turn, with the SLURM_*
# variables a real task sees; refuses to start a job whose afterok dependency failed.
FAKE_SBATCH = textwrap.dedent("""\
    #!%(python)s
    import os, subprocess, sys
    state = os.environ["FAKE_SLURM_STATE"]
    args, opts = sys.argv[1:], {}
    while args and args[0].startswith("-"):
        key, _, value = args.pop(0).partition("=")
        opts[key] = value
    script, script_args = args[0], args[1:]
    counter = os.path.join(state, "next_id")
    job = int(open(counter).read()) if os.path.exists(counter) else 1000
    open(counter, "w").write(str(job + 1))
    log = open(os.path.join(state, "log"), "a")
    deps = [d for d in opts.get("--dependency", "").replace("afterok:", "").split(":") if d]
    ok = all(open(os.path.join(state, f"{d}.rc")).read() == "0" for d in deps)
    rc = 0
    if not ok:
        log.write(f"{job} never-started dependency {deps} failed\\n")
        rc = "dependency-failed"
    else:
        spec = opts.get("--array", "").split("%%")[0]
        tasks = list(range(int(spec.split("-")[0]), int(spec.split("-")[1]) + 1)) if spec else [None]
        for t in tasks:
            env = dict(os.environ, SLURM_JOB_ID=str(job))
            if t is not None:
                env.update(SLURM_ARRAY_JOB_ID=str(job), SLURM_ARRAY_TASK_ID=str(t))
            name = f"{job}_{t}" if t is not None else str(job)
            with open(os.path.join(state, f"job-{name}.out"), "w") as out:
                r = subprocess.run(["bash", script, *script_args], cwd=opts.get("--chdir") or None, env=env,
                                   stdout=out, stderr=subprocess.STDOUT).returncode
            log.write(f"{name} {os.path.basename(script)} rc={r}\\n")
            rc = rc or r
    open(os.path.join(state, f"{job}.rc"), "w").write(str(rc))
    print(job if "--parsable" in opts else f"Submitted batch job {job}")
""")


@pytest.fixture
def slurm(tmp_path):
    """PATH with fake sbatch/scontrol; returns (env, state dir)."""
    bindir, state = tmp_path / "fakebin", tmp_path / "slurm"
    bindir.mkdir()
    state.mkdir()
    (bindir / "sbatch").write_text(FAKE_SBATCH % {"python": sys.executable})
    (bindir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {state}/scontrol\n')
    for f in bindir.iterdir():
        f.chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", FAKE_SLURM_STATE=str(state), BNECK=BNECK,
               TF_CPP_MIN_LOG_LEVEL="3")
    return env, state


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples_data")
    make_class_folder(root / "train", classes=("a", "b"), per_class=6)
    make_class_folder(root / "test", classes=("a", "b"), per_class=3, seed=1)
    return root


def _log(state):
    return (state / "log").read_text().split("\n")[:-1]


def test_slurm_submit_runs_the_array_then_the_merge(slurm, data, tmp_path):
    env, state = slurm
    out = tmp_path / "job" / "train.h5"
    r = subprocess.run(["bash", str(EXAMPLES / "slurm" / "submit.sh"), str(data / "train"), str(out), "2", *COMMON],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "submitted extraction array 1000 (2 shards) and merge job 1001" in r.stdout
    assert _log(state) == ["1000_0 extract_array.sbatch rc=0", "1000_1 extract_array.sbatch rc=0",
                           "1001 merge.sbatch rc=0"]
    assert "shard 1/2" in (state / "job-1000_1.out").read_text()
    merged_log = (state / "job-1001.out").read_text()
    assert "merged 2 shards, 12 rows" in merged_log and "12 rows, 12 valid" in merged_log
    with h5py.File(out) as f:
        assert f.attrs["complete"] and f.attrs["shard"] == "0/1" and f["features"].shape[0] == 12
    # A requeued task finds its shard complete and exits 0 without recomputing.
    task = subprocess.run(["bash", str(EXAMPLES / "slurm" / "extract_array.sbatch"), str(data / "train"), str(out),
                           "2", *COMMON], capture_output=True, text=True, env=dict(env, SLURM_ARRAY_TASK_ID="1"))
    assert task.returncode == 0 and "already complete" in task.stdout, task.stderr


def test_slurm_merge_waits_for_a_successful_array(slurm, tmp_path):
    env, state = slurm
    out = tmp_path / "x.h5"
    r = subprocess.run(["bash", str(EXAMPLES / "slurm" / "submit.sh"), str(tmp_path / "no_such_data"), str(out),
                        "1", *COMMON], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr  # submission works; the jobs fail
    assert _log(state) == ["1000_0 extract_array.sbatch rc=1", "1001 never-started dependency ['1000'] failed"]
    assert "no_such_data" in (state / "job-1000_0.out").read_text() and not out.exists()


def test_slurm_task_forwards_sigterm_and_requeues(slurm, data, tmp_path):
    env, state = slurm
    out = tmp_path / "t.h5"
    env = dict(env, SLURM_ARRAY_TASK_ID="0", SLURM_JOB_ID="77", BNECK_TEST_BATCH_DELAY="0.3")
    proc = subprocess.Popen(["bash", str(EXAMPLES / "slurm" / "extract_array.sbatch"), str(data / "train"), str(out),
                             "1", *COMMON], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _wait_for_chunk(proc, f"{tmp_path}/t.shard-00000-of-00001.h5.partial")
    proc.send_signal(signal.SIGTERM)  # what --signal=B:TERM@N does: only the batch shell is signalled
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "asking bneck to commit" in stdout and "rerun the same command to resume" in stderr
    assert (state / "scontrol").read_text().split() == ["requeue", "77_0"]
    r = subprocess.run(["bash", str(EXAMPLES / "slurm" / "extract_array.sbatch"), str(data / "train"), str(out),
                        "1", *COMMON, "--json"], capture_output=True, text=True,
                       env=dict(env, BNECK_TEST_BATCH_DELAY="0"))
    assert r.returncode == 0, r.stderr
    assert 0 < json.loads(r.stdout.splitlines()[-1])["computed"] < 12  # resumed, not redone


def _make(workdir, *args, **kw):
    flags = " ".join(COMMON[COMMON.index("--input-size"):])
    cmd = ["make", "-C", str(workdir), f"BNECK={BNECK}", "BACKBONE=mobilenet", "WEIGHTS=none",
           f"EXTRACT_FLAGS={flags}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), **kw)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_makefile_builds_once_then_does_nothing_and_fails_loudly(data, tmp_path):
    work = tmp_path / "mk"
    work.mkdir()
    shutil.copy(EXAMPLES / "Makefile", work)
    r = _make(work, f"DATA={data}")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((work / "reports" / "svm.json").read_text())
    assert report["n"] == 6 and 0 <= report["accuracy"] <= 1
    assert (work / "models" / "svm" / "model.json").is_file()
    again = _make(work, f"DATA={data}")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout and BNECK not in again.stdout
    assert _make(work, f"DATA={data}", "-q").returncode == 0  # -q: exit 0 = everything up to date
    assert _make(work, f"DATA={data}", "-n").stdout.count(BNECK) == 0

    # Faults: a corrupt feature file fails the evaluation, and no half-written report is left.
    time.sleep(0.01)
    (work / "features" / "test.h5").write_bytes(b"garbage, not HDF5")
    r = _make(work, f"DATA={data}")
    assert r.returncode != 0 and "evaluate" in r.stdout
    assert not (work / "reports" / "svm.json").exists()
    # ... and missing data stops make before any bneck command.
    r = _make(work, "clean")
    assert r.returncode == 0 and not (work / "features").exists()
    r = _make(work, f"DATA={tmp_path / 'missing'}")
    assert r.returncode != 0 and BNECK not in r.stdout

"""Shared helpers of the reliability suite: run the CLI as a user does, and check output files.

Every check here reads files the way a later stage would (h5py, every dataset in full), so a
"passes" means a user could actually have used what was on disk at that moment.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time

import h5py
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Tiny, exact settings: random seeded mobilenet at 32x32, fp32 compute and storage. The
#: runtime is pinned to TensorFlow (``auto`` may pick OpenVINO): what is under test is the
#: store, and byte-for-byte comparisons need a runtime known to be deterministic (child_env).
FAST = ["--backbone", "mobilenet", "--input-size", "32", "--weights", "none", "--seed", "3",
        "--precision", "fp32", "--store-dtype", "float32", "--runtime", "tensorflow", "--no-progress"]
#: For the shared 25-image dataset (one undecodable; conftest.py): batch 4 inside chunks of 8,
#: so 7 batches and 4 chunks (8, 8, 8, 1 rows), and a kill can land between two batches of a chunk.
ARGS = FAST + ["--batch-size", "4", "--chunk-rows", "8", "--max-bad-fraction", "0.5", "--json"]
N_ROWS, CHUNK_ROWS, N_CHUNKS = 25, 8, 4


def child_env(**extra) -> dict:
    """The test process's environment without any inherited fault hook, plus ``extra``.

    One TensorFlow intra-op thread per child: with several threads, TF/oneDNN kernels may
    split reductions differently when the CPU is contended, and two *uninterrupted* runs then
    differ in the last bits (seen in this suite: ~1e-6 relative, every row). Single-threaded,
    every process computes bit-identical fp32 features, so any byte difference a test finds
    comes from the store, which is what these tests are about. It also lets two children
    share the two cores without oversubscribing them.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("BNECK_TEST_")}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", TF_NUM_INTRAOP_THREADS="1",
               PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def bneck_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "pipeline", *map(str, args)]


def bneck(*args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``bneck ARGS`` to completion in a fresh process (cwd = the repo)."""
    return subprocess.run(bneck_cmd(*args), capture_output=True, text=True, cwd=REPO,
                          env=child_env(**(env or {})), timeout=timeout)


def start(*args, env: dict | None = None) -> subprocess.Popen:
    """Start ``bneck ARGS`` without waiting (stdout/stderr captured)."""
    return subprocess.Popen(bneck_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env=child_env(**(env or {})))


_TRAMPOLINE = """
import os, resource, subprocess, sys
rc = subprocess.run(sys.argv[2:]).returncode
with open(sys.argv[1], "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(rc if rc >= 0 else 128 - rc)
"""


def run_with_rusage(cmd: list[str], env: dict, timeout: float = 300):
    """Run ``cmd``; return (returncode, stdout, stderr, peak RSS of that process in MiB).

    Linux carries a process's peak RSS across fork and exec, so a child of this (large,
    TensorFlow-loaded) test process would report our peak, not its own. A small Python
    trampoline starts ``cmd`` instead and reports its child's peak (RUSAGE_CHILDREN).
    """
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        r = subprocess.run([sys.executable, "-c", _TRAMPOLINE, rss.name, *map(str, cmd)], capture_output=True,
                           text=True, cwd=REPO, env=env, timeout=timeout)
        peak_kib = int(rss.read() or 0)
    return r.returncode, r.stdout, r.stderr, peak_kib / 1024


def json_line(stdout: str) -> dict:
    """The last JSON object printed on stdout (``--json``)."""
    lines = [ln for ln in stdout.strip().splitlines() if ln.startswith("{")]
    assert lines, f"no JSON summary on stdout: {stdout!r}"
    return json.loads(lines[-1])


def read_everything(path) -> dict:
    """Open ``path`` as a complete bneck feature file and read every dataset in full.

    Returns ``{name: numpy array}`` (strings decoded). Raises if the file cannot be opened, a
    dataset cannot be read completely, or the file is not marked complete.
    """
    out = {}
    with h5py.File(path, "r") as f:
        assert f.attrs.get("producer") == "bneck" and bool(f.attrs.get("complete")), \
            f"{path} is at the final path but not a complete bneck file: {dict(f.attrs)}"
        for name, ds in f.items():
            arr = ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]
            assert len(arr) == f["features"].shape[0], f"{path}:{name} has {len(arr)} rows"
            out[name] = arr
    from pipeline.data.featurefile import FeatureFile

    with FeatureFile(path) as ff:  # what stage two does first
        assert ff.n_rows == len(out["features"])
    return out


def assert_final_path_ok(path) -> bool:
    """The invariant under any kill: the final path is absent or a complete, fully readable file."""
    if not os.path.lexists(path):
        return False
    read_everything(path)
    return True


def assert_same_file(ref, other) -> None:
    """Every dataset of ``other`` equals ``ref`` byte for byte (same names, dtypes, shapes)."""
    with h5py.File(ref, "r") as fa, h5py.File(other, "r") as fb:
        assert set(fa) == set(fb), (sorted(fa), sorted(fb))
        for name in fa:
            a, b = fa[name], fb[name]
            assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, b.dtype, a.shape, b.shape)
            if h5py.check_string_dtype(a.dtype):
                assert list(a.asstr()[()]) == list(b.asstr()[()]), name
            else:
                assert a[()].tobytes() == b[()].tobytes(), f"dataset {name!r} differs"
            assert dict(a.attrs).keys() == dict(b.attrs).keys()
        skip = {"created"}
        ka = {k: fa.attrs[k] for k in fa.attrs if k not in skip}
        kb = {k: fb.attrs[k] for k in fb.attrs if k not in skip}
        assert ka.keys() == kb.keys()
        for k in ka:
            assert np.array_equal(np.asarray(ka[k]), np.asarray(kb[k])), k


def leftovers(out) -> list[str]:
    """Anything a finished run should not have left next to ``out``."""
    out = str(out)
    folder, name = os.path.split(out)
    # Temp names: features.fsutil.temp_beside's hidden ".NAME.tmp-*", and older bneck's "NAME.tmp-*".
    patterns = [glob.escape(out) + ".tmp-*", os.path.join(glob.escape(folder), glob.escape(f".{name}.tmp-") + "*"),
                glob.escape(out) + ".partial*"]
    return sorted(p for pattern in patterns for p in glob.glob(pattern))


def committed_chunks(out) -> list[str]:
    d = str(out) + ".partial"
    if not os.path.isdir(d):
        return []
    return sorted(n for n in os.listdir(d) if n.startswith("chunk-") and n.endswith(".npz"))


def wait_for(predicate, proc=None, timeout: float = 120, what: str = "condition"):
    """Poll ``predicate`` until true; fail early if ``proc`` exits first."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}: {proc.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")

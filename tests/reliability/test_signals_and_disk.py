"""SIGTERM, a full disk, a second writer, and a rerun with other settings.

* SIGTERM: the run finishes the chunk in progress, commits it, exits 143, and resumes.
* Disk full: a real size-limited tmpfs when this machine lets us mount one (root): too small
  at the start (refused before computing) and filled up mid-run; plus an in-process simulation
  (writing rows or a marker raising ENOSPC) that always runs: clear message naming the output
  and "No space left", exit 1, no final file, committed chunks kept and reused.
* Second writer: refused with a lock message while the first runs (also with --overwrite),
  and the first still finishes byte-identical to an uninterrupted run.
* Mismatched rerun: a partial run made with settings A is never resumed with settings B.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from features.config import TooManyBadImages
from features.writer.finished import StoreError
from tests.feature_files import assert_rows_close
from tests.reliability.helpers import (
    ARGS,
    CHUNK_ROWS,
    N_CHUNKS,
    N_ROWS,
    assert_final_path_ok,
    assert_same_file,
    bneck,
    committed_chunks,
    json_line,
    leftovers,
    read_everything,
    start,
    wait_for,
)

# Minutes of subprocess runs: CI's slow stage runs these (./run_all.sh test-slow); the default suite stays short.
pytestmark = pytest.mark.slow

#: (hook, where the SIGTERM lands) for the SIGTERM tests; the e2e suite covers an external one.
TERM_POINTS = [
    ("batch:1:TERM", "after the first batch: its chunk (8 rows) is only half computed"),
    ("decode:2:TERM", "from a decode worker, while the main thread is blocked waiting for decodes"),
]
#: Settings whose change must stop a partial run from being resumed (checked in-process).
MISMATCHES = ["backbone", "seed", "input_size", "source_fingerprint (a source image rewritten)",
              "source_fingerprint (an image added)"]


# ----------------------------------------------------------------------------- SIGTERM

def _term_scenario(data, out, hook):
    r = bneck("extract", data, "-o", out, *ARGS, env={"BNECK_TEST_KILL_AT": hook})
    rec = {"rc": r.returncode, "stderr": r.stderr, "chunks": committed_chunks(out),
           "final_after_term": assert_final_path_ok(out)}
    again = bneck("extract", data, "-o", out, *ARGS)
    rec.update(rerun_rc=again.returncode, rerun_stderr=again.stderr,
               summary=json_line(again.stdout) if again.returncode == 0 else None)
    return rec


@pytest.fixture(scope="module")
def term_runs(data, tmp_path_factory):
    base = tmp_path_factory.mktemp("term")
    with ThreadPoolExecutor(2) as pool:
        futures = {h: pool.submit(_term_scenario, data, base / f"{h.split(':')[0]}.h5", h) for h, _ in TERM_POINTS}
        return {h: (base / f"{h.split(':')[0]}.h5", f.result()) for h, f in futures.items()}


@pytest.mark.parametrize("hook", [h for h, _ in TERM_POINTS])
def test_sigterm_flushes_current_chunk_and_resumes(term_runs, reference, hook):
    out, rec = term_runs[hook]
    assert rec["rc"] == 143, rec["stderr"]
    assert "rerun the same command to resume" in rec["stderr"] and "Traceback" not in rec["stderr"]
    # The chunk being computed when the signal came was finished and committed; nothing after it.
    assert rec["chunks"] == ["chunk-0000000.npz"]
    assert not rec["final_after_term"]
    assert rec["rerun_rc"] == 0, rec["rerun_stderr"]
    assert rec["summary"]["computed"] == N_ROWS - CHUNK_ROWS
    assert_same_file(reference, out)
    assert leftovers(out) == []


# ----------------------------------------------------------------------------- disk full

class _Tmpfs:
    def __init__(self, path):
        self.path = str(path)
        os.makedirs(self.path, exist_ok=True)

    def mount(self, size: int):
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", self.path],
                           capture_output=True, text=True)
        return r

    def resize(self, size: int):
        r = subprocess.run(["mount", "-o", f"remount,size={size}", self.path], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr

    def used(self) -> int:
        st = os.statvfs(self.path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def umount(self):
        subprocess.run(["umount", self.path], capture_output=True)


@pytest.fixture
def tmpfs(tmp_path):
    fs = _Tmpfs(tmp_path / "disk")
    try:
        r = fs.mount(100 * 1024)
    except FileNotFoundError:
        pytest.skip("no `mount` command on this machine, so no size-limited tmpfs can be made")
    if r.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({r.stderr.strip() or r.returncode}); "
                    "the in-process ENOSPC simulation still runs")
    yield fs
    fs.umount()


def _fill(path: str) -> None:
    """Write zeros to ``path`` until the disk is full (another job filling the disk)."""
    block = b"\0" * (64 << 10)
    with open(path, "wb") as f:
        try:
            while True:
                f.write(block)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    # (closing flushes nothing more: the failed block was never buffered in full)


def test_disk_full_real_tmpfs(data, reference, tmpfs):
    """100 KiB disk: refused before anything is computed. Room at the start, but the disk fills
    up mid-run: ENOSPC, the committed chunks kept. Room again: the rerun finishes from them."""
    out = os.path.join(tmpfs.path, "out.h5")
    r = bneck("extract", data, "-o", out, *ARGS)
    assert r.returncode == 1, r.stderr
    assert "No space left on device" in r.stderr and out in r.stderr, r.stderr
    assert "Nothing was computed" in r.stderr and "Traceback" not in r.stderr
    assert committed_chunks(out) == [] and not os.path.exists(out)

    tmpfs.resize(8 << 20)
    proc = start("extract", data, "-o", out, *ARGS, env={"BNECK_TEST_BATCH_DELAY": "0.5"})
    wait_for(lambda: len(committed_chunks(out)) >= 1, proc, what="the first committed chunk")
    filler = os.path.join(tmpfs.path, "filler")
    _fill(filler)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr
    assert "No space left on device" in stderr and out in stderr and "Traceback" not in stderr, stderr
    kept = committed_chunks(out)
    assert 1 <= len(kept) < N_CHUNKS, kept
    assert not os.path.exists(out) and not [p for p in os.listdir(out + ".partial") if ".tmp-" in p]

    os.remove(filler)  # "free some space"
    r = bneck("extract", data, "-o", out, *ARGS)
    assert r.returncode == 0, r.stderr
    assert json_line(r.stdout)["computed"] == N_ROWS - len(kept) * CHUNK_ROWS  # the kept chunks are reused
    assert_same_file(reference, out)
    assert leftovers(out) == []


def _cfg(data, out, **kw):
    from features.config import ExtractConfig

    base = dict(backbone="mobilenet", input_size="32", weights="none", seed=3, precision="fp32",
                store_dtype="float32", batch_size=4, chunk_rows=CHUNK_ROWS, max_bad_fraction=0.5, progress=False,
                runtime="tensorflow")
    base.update(kw)
    return ExtractConfig(data=str(data), output=str(out), **base)


@pytest.mark.parametrize("where", ["rows", "marker"])
def test_disk_full_simulated_in_process(data, reference, tmp_path, monkeypatch, where):
    """ENOSPC after one chunk (no mount needed), writing the second chunk's rows or its marker."""
    from features import runner
    from features.writer import partial, target

    out = tmp_path / "sim.h5"
    owner, name = (target.Target, "write_rows") if where == "rows" else (partial.np, "savez")
    real, calls = getattr(owner, name), []

    def failing(*args, **kwargs):
        if where == "marker" and "chunk-" not in getattr(args[0], "name", ""):
            return real(*args, **kwargs)  # the target's snapshot, written once at the start
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing)
    with pytest.raises(StoreError) as exc:
        runner.extract(_cfg(data, out))
    assert "No space left on device" in str(exc.value) and str(out) in str(exc.value)
    assert committed_chunks(out) == ["chunk-0000000.npz"] and not out.exists()
    assert not [p for p in os.listdir(f"{out}.partial") if ".tmp-" in p]  # the half marker was removed
    monkeypatch.setattr(owner, name, real)
    s = runner.extract(_cfg(data, out))
    assert s.computed == N_ROWS - CHUNK_ROWS and s.bad == 1
    got, want = read_everything(out), read_everything(reference)
    for name in want:  # in-process TF may use several threads: equal up to float rounding
        if want[name].dtype.kind == "f":
            assert_rows_close(got[name], want[name])
        else:
            assert np.array_equal(got[name], want[name]), name


# ----------------------------------------------------------------------------- second writer

def test_second_writer_refused_first_finishes(data, reference, tmp_path):
    out = tmp_path / "shared.h5"
    first = start("extract", data, "-o", out, *ARGS, env={"BNECK_TEST_BATCH_DELAY": "0.2"})
    try:
        # Once settings.json exists the first process holds the lock; freeze it there so the
        # test does not depend on how fast the second process starts.
        wait_for(lambda: os.path.exists(f"{out}.partial/settings.json"), first, what="the first writer's lock")
        first.send_signal(signal.SIGSTOP)
        before = sorted(os.listdir(f"{out}.partial"))
        with ThreadPoolExecutor(2) as pool:
            plain = pool.submit(bneck, "extract", data, "-o", out, *ARGS)
            overwrite = pool.submit(bneck, "extract", data, "-o", out, *ARGS, "--overwrite")
            results = {"plain": plain.result(), "--overwrite": overwrite.result()}
        for how, r in results.items():
            assert r.returncode == 1, (how, r.stderr)
            assert "another bneck process is writing" in r.stderr and str(out) in r.stderr, (how, r.stderr)
            assert "Traceback" not in r.stderr
        # The refused runs touched nothing of the first writer's (--overwrite used to delete it).
        assert sorted(os.listdir(f"{out}.partial")) == before
    finally:
        first.send_signal(signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert json_line(stdout)["computed"] == N_ROWS
    assert_same_file(reference, out)
    assert leftovers(out) == []


# ----------------------------------------------------------------------------- changed settings

@pytest.fixture
def partial_run(data, tmp_path):
    """A partial run with settings A: every chunk committed, then stopped by too many bad images."""
    import shutil

    from features import runner

    src = tmp_path / "data"
    shutil.copytree(data, src)
    out = tmp_path / "mix.h5"
    with pytest.raises(TooManyBadImages):
        runner.extract(_cfg(src, out, max_bad_fraction=0.0))
    assert len(committed_chunks(out)) == N_CHUNKS and not out.exists()
    return src, out


def test_rerun_with_other_settings_is_refused(partial_run):
    from features import runner

    src, out = partial_run
    cases = [("backbone", dict(backbone="mobilenetv2")), ("seed", dict(seed=4)),
             ("input size", dict(input_size="48"))]
    for key, change in cases:
        with pytest.raises(StoreError) as exc:
            runner.extract(_cfg(src, out, **change))
        msg = str(exc.value)
        assert f"{key}:" in msg and "partial run with other settings" in msg, msg
    # A source image rewritten (same name, new content and mtime), then one added.
    img = src / "a" / "img000.png"
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    # The refusal says in words what changed, not which digest differs.
    with pytest.raises(StoreError, match=r"source: 1 file changed \(first: a/img000\.png\)"):
        runner.extract(_cfg(src, out))
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))
    (src / "c" / "zz_new.png").write_bytes((src / "c" / "img000.png").read_bytes())
    with pytest.raises(StoreError, match=rf"source: {N_ROWS} rows -> {N_ROWS + 1} rows"):
        runner.extract(_cfg(src, out))
    (src / "c" / "zz_new.png").unlink()
    # Refusals left the partial run intact: the original settings resume it without computing.
    assert len(committed_chunks(out)) == N_CHUNKS
    s = runner.extract(_cfg(src, out))
    assert s.computed == 0 and s.rows == N_ROWS and not s.skipped_existing
    # And a complete file is not silently reused with other settings either.
    with pytest.raises(StoreError, match="seed"):
        runner.extract(_cfg(src, out, seed=4))


def test_rerun_with_other_settings_refused_by_cli(partial_run, caplog):
    import logging

    from pipeline.cli.main import main

    src, out = partial_run
    args = [a for a in ARGS if a != "--json"]
    args[args.index("--seed") + 1] = "4"
    caplog.set_level(logging.ERROR, logger="bneck")
    assert main(["extract", str(src), "-o", str(out), *args]) == 1
    assert "seed: 3 -> 4" in caplog.text and str(out) in caplog.text
    assert len(committed_chunks(out)) == N_CHUNKS

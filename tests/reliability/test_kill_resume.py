"""SIGKILL ``bneck extract`` at exact points; the rerun finishes and equals an uninterrupted run.

Each scenario: run ``python -m pipeline extract`` with ``BNECK_TEST_KILL_AT=POINT:N`` (the
process SIGKILLs itself the N-th time it reaches POINT, see ``features.writer.partial.fault_point``),
check the final path right after the kill (absent, or a complete file that reads in full),
then rerun the very same command: exit 0, every dataset byte-identical to an uninterrupted
run (fp32), nothing left beside the output, and only uncommitted chunks recomputed.

Scenarios run two at a time (each is a separate process pair) to keep the suite quick.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.reliability.helpers import (
    ARGS,
    CHUNK_ROWS,
    N_ROWS,
    assert_final_path_ok,
    assert_same_file,
    bneck,
    committed_chunks,
    json_line,
    leftovers,
    start,
)

# Minutes of subprocess runs: CI's slow stage runs these (./run_all.sh test-slow); the default suite stays short.
pytestmark = pytest.mark.slow

#: (kill point, what the point is). The default suite kills at each of these once.
KILL_POINTS = [
    ("start:1", "right after start: nothing built, nothing written"),
    ("model_built:1", "backbone built, no partial dir yet"),
    ("partial_opened:1", "lock taken and settings.json written, no chunk yet"),
    ("decode:3", "mid-batch: third image of the first batch decoded"),
    ("batch:1", "first batch computed, its chunk only half full"),
    ("chunk_tmp_written:1", "during a chunk flush: rows in the target, marker fsynced, not yet renamed"),
    ("chunk_committed:2", "right after the second chunk's rename"),
    ("finalize_rows:2", "end session half written: HDF5 metadata of the target mid-change"),
    ("finalize_tmp_written:1", "final file complete and fsynced in the partial dir, before the rename"),
    ("finalize_renamed:1", "final file renamed into place, partial dir not yet removed"),
]
#: More points, run under ``-m slow``.
SLOW_KILL_POINTS = [
    ("decode:1", "first image decoded"),
    ("decode:20", "a late decode, three chunks committed or in flight"),
    ("batch:3", "third batch: chunk 0 committed or queued, chunk 1 half full"),
    ("batch:7", "last (padded, one-row) batch computed"),
    ("chunk_tmp_written:4", "flush of the last, one-row chunk"),
    ("chunk_committed:1", "right after the first chunk's rename"),
    ("chunk_committed:4", "every chunk committed, finalize not started"),
    ("finalize_rows:1", "end session: valid, reason and image_size written"),
    ("finalize_rows:3", "end session: every row dataset written, attrs not yet"),
]

#: The slow chain test: each rerun is killed again, at the next of these points.
CHAIN_POINTS = ["partial_opened:1", "batch:2", "chunk_tmp_written:1", "chunk_committed:1", "decode:5",
                "finalize_rows:2", "finalize_tmp_written:1"]


def _expected_recomputed(point: str) -> int | None:
    """Rows the rerun must compute: exactly those of the chunks not committed at the kill
    (None where that depends on how far the writer thread had got)."""
    name, n = point.split(":")
    n = int(n)
    if name in ("start", "model_built", "partial_opened"):
        return N_ROWS
    if name in ("decode", "batch"):
        return N_ROWS if n <= (CHUNK_ROWS if name == "decode" else 1) else None
    if name == "chunk_tmp_written":
        return N_ROWS - (n - 1) * CHUNK_ROWS
    if name == "chunk_committed":
        return N_ROWS - min(n * CHUNK_ROWS, N_ROWS)
    return 0  # finalize_*: every chunk was committed


def _scenario(data, workdir, point: str) -> dict:
    """Kill at ``point``, inspect, rerun. Returns what happened (checked by the tests)."""
    os.makedirs(workdir, exist_ok=True)
    out = os.path.join(workdir, "out.h5")
    rec = {"point": point, "out": out}
    killed = bneck("extract", data, "-o", out, *ARGS, env={"BNECK_TEST_KILL_AT": point})
    rec["kill_rc"], rec["kill_stderr"] = killed.returncode, killed.stderr
    # Right after the kill: the final path is absent or a complete readable file.
    rec["final_exists_after_kill"] = assert_final_path_ok(out)
    rec["chunks_after_kill"] = committed_chunks(out)
    rec["leftovers_after_kill"] = leftovers(out)
    again = bneck("extract", data, "-o", out, *ARGS)
    rec["rerun_rc"], rec["rerun_stderr"] = again.returncode, again.stderr
    rec["summary"] = json_line(again.stdout) if again.returncode == 0 else None
    rec["leftovers_after_rerun"] = leftovers(out)
    return rec


def run_scenarios(data, base, points, workers=2) -> dict:
    with ThreadPoolExecutor(workers) as pool:
        futures = {p: pool.submit(_scenario, data, os.path.join(base, p.replace(":", "_")), p) for p in points}
        return {p: f.result() for p, f in futures.items()}


@pytest.fixture(scope="module")
def default_runs(data, reference, tmp_path_factory):
    return run_scenarios(data, tmp_path_factory.mktemp("kills"), [p for p, _ in KILL_POINTS])


def check_scenario(rec: dict, reference) -> None:
    point, out = rec["point"], rec["out"]
    assert rec["kill_rc"] == -signal.SIGKILL, f"{point}: not killed (rc {rec['kill_rc']}): {rec['kill_stderr']}"
    name = point.split(":")[0]
    if name == "finalize_renamed":
        assert rec["final_exists_after_kill"], "killed after the rename, so the final file must be there"
    else:
        assert not rec["final_exists_after_kill"], f"{point}: a final file exists before the rename"
    if name == "finalize_tmp_written":  # the complete file is still in the partial dir, finished by the rerun
        assert any(p.endswith(".partial") for p in rec["leftovers_after_kill"])
    assert rec["rerun_rc"] == 0, f"{point}: rerun failed: {rec['rerun_stderr']}"
    want = _expected_recomputed(point)
    if want is not None:
        assert rec["summary"]["computed"] == want, (point, rec["summary"], rec["chunks_after_kill"])
    assert rec["summary"]["rows"] == N_ROWS and rec["summary"]["bad"] == 1
    assert_same_file(reference, out)
    assert rec["leftovers_after_rerun"] == [], f"{point}: left behind {rec['leftovers_after_rerun']}"


@pytest.mark.parametrize("point", [p for p, _ in KILL_POINTS])
def test_sigkill_at_point_then_rerun_equals_uninterrupted(default_runs, reference, point):
    check_scenario(default_runs[point], reference)


@pytest.mark.slow
def test_sigkill_at_more_points(data, reference, tmp_path):
    runs = run_scenarios(data, tmp_path, [p for p, _ in SLOW_KILL_POINTS])
    for rec in runs.values():
        check_scenario(rec, reference)


@pytest.mark.slow
def test_kill_every_rerun_too(data, reference, tmp_path):
    """A chain: each rerun is itself killed at a later point; the last rerun finishes."""
    out = tmp_path / "chain.h5"
    for point in CHAIN_POINTS:
        r = bneck("extract", data, "-o", out, *ARGS, env={"BNECK_TEST_KILL_AT": point})
        assert r.returncode == -signal.SIGKILL, (point, r.stderr)
        assert not assert_final_path_ok(out)
    r = bneck("extract", data, "-o", out, *ARGS)
    assert r.returncode == 0, r.stderr
    assert json_line(r.stdout)["computed"] == 0
    assert_same_file(reference, out)
    assert leftovers(out) == []


class _Watcher(threading.Thread):
    """Polls the final path while runs are killed: every time it exists it must read in full."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path, self.stop, self.errors, self.seen = path, threading.Event(), [], 0

    def run(self):
        while not self.stop.is_set():
            try:
                self.seen += assert_final_path_ok(self.path)
            except Exception as exc:  # noqa: BLE001
                self.errors.append(repr(exc))
            time.sleep(0.01)


@pytest.mark.slow
def test_random_sigkills_until_done(data, reference, tmp_path):
    """SIGKILL at random moments, over and over, until a run completes on its own."""
    rng = random.Random(1234)
    out = tmp_path / "random.h5"
    watcher = _Watcher(out)
    watcher.start()
    kills = 0
    try:
        for attempt in range(60):
            # A delay per batch (7 batches) spreads the run out so kills land in every phase;
            # the kill window grows by a second per attempt, so some run finally gets through.
            proc = start("extract", data, "-o", out, *ARGS, env={"BNECK_TEST_BATCH_DELAY": "0.5"})
            deadline = time.time() + rng.uniform(0.3, 2.0 + attempt)
            while time.time() < deadline and proc.poll() is None:
                time.sleep(0.01)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.communicate()
                kills += 1
                assert_final_path_ok(out)  # right after each kill
                continue
            stdout, stderr = proc.communicate()
            assert proc.returncode == 0, stderr
            break
        else:
            pytest.fail("never completed in 60 attempts")
    finally:
        watcher.stop.set()
        watcher.join()
    assert watcher.errors == [], watcher.errors[:3]
    print(f"random SIGKILLs survived: {kills}")
    assert kills >= 3, f"only {kills} kills landed; the run is too quick for this test"
    assert_same_file(reference, out)
    assert leftovers(out) == []

"""Fault injection for the reliability tests: ``BNECK_TEST_KILL_AT`` and :func:`raising_at`, never used in normal runs.

Named points are the only test seams in the code: a test kills the process at a point (another
process, through the environment) or makes a point raise (this process, :func:`raising_at`),
instead of patching module globals.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading


def _parse_kill_at(text: str):
    if not text:
        return None
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3) or not parts[0] or int(parts[1]) < 1:
            raise ValueError
        sig = getattr(signal, "SIG" + parts[2].upper().removeprefix("SIG")) if len(parts) == 3 else signal.SIGKILL
    except (ValueError, AttributeError):
        raise ValueError(f"BNECK_TEST_KILL_AT must look like POINT:N or POINT:N:SIGNAL, got {text!r}") from None
    return parts[0], int(parts[1]), sig


# Fault-injection hook for the reliability tests (tests/reliability/), like BNECK_TEST_BATCH_DELAY
# in features/runner.py; never set in normal use. BNECK_TEST_KILL_AT="POINT:N[:SIGNAL]" sends
# SIGKILL (or SIGNAL, e.g. TERM) to this process the N-th time the named point is reached.
# Points: start, model_built (runner.extract); partial_opened, chunk_tmp_written (rows written
# and synced, temp marker fsynced, before its rename: fsutil.atomic_path's point), chunk_committed
# in features.writer.partial; target_restored (a resumed target's snapshot written back, before its
# layout is read) in features.writer.target; finalize_rows (the N-th row dataset written in the end
# session, before it closes), finalize_tmp_written (final file complete and synced, before its
# rename), finalize_renamed (after the rename, before the partial dir is removed) in
# features.writer.assemble; atomic_write (features.fsutil, before the temp file is written);
# decode (an image decoded, in a worker thread) and batch (a batch computed, before its chunk is
# queued) in runner._run_chunks; model_tmp_written, model_moved_aside (between the two renames of
# fsutil.replace_dir's swap) in pipeline.modeldir; view_read (a lazy view about to read rows from
# its file) in pipeline.data.views.
# Unset, fault_point() is one comparison.
_KILL_AT = _parse_kill_at(os.environ.get("BNECK_TEST_KILL_AT", ""))
_KILL_SEEN: dict[str, int] = {}
_KILL_LOCK = threading.Lock()


# In-process faults, armed by raising_at(): point name -> [exception, hits left before it raises].
_RAISE: dict[str, list] = {}


@contextlib.contextmanager
def raising_at(name: str, exc: BaseException, *, nth: int = 1):
    """Within the block, the ``nth`` time point ``name`` is reached it raises ``exc`` (then disarms)."""
    if nth < 1:
        raise ValueError("nth counts from 1")
    _RAISE[name] = [exc, nth]
    try:
        yield
    finally:
        _RAISE.pop(name, None)


def fault_point(name: str) -> None:
    """Testing hook: act on BNECK_TEST_KILL_AT or :func:`raising_at` when ``name`` is reached (no-op when unset)."""
    if _RAISE and name in _RAISE:
        with _KILL_LOCK:
            armed = _RAISE.get(name)
            if armed is not None:
                armed[1] -= 1
                fire = armed[1] == 0
                if fire:
                    del _RAISE[name]
        if armed is not None and fire:
            raise armed[0]
    if _KILL_AT is None or _KILL_AT[0] != name:
        return
    with _KILL_LOCK:
        _KILL_SEEN[name] = n = _KILL_SEEN.get(name, 0) + 1
    if n == _KILL_AT[1]:
        os.kill(os.getpid(), _KILL_AT[2])


# BNECK_TEST_OOM_ABOVE=N: the TensorFlow extractor raises the device's out-of-memory error for any
# compute batch above N rows, so the batch back-off is tested on a CPU exactly as a GPU triggers it.
_OOM_ABOVE = int(os.environ.get("BNECK_TEST_OOM_ABOVE", "0") or 0)


def oom_above() -> float:
    """The largest compute batch that 'fits' under BNECK_TEST_OOM_ABOVE (unset: no limit)."""
    return _OOM_ABOVE if _OOM_ABOVE > 0 else float("inf")

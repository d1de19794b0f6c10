"""The runner's background pieces: the chunk-writer thread and SIGTERM handling.

The writer thread commits finished chunks so disk I/O overlaps the next batches' compute; a
SIGTERM (a scheduler's preemption notice) is only acted on at a chunk boundary, so no computed
row is lost.
"""

from __future__ import annotations

import queue
import signal
import threading

from features.writer.finished import StoreError


class Terminated(RuntimeError):
    """SIGTERM/SIGINT arrived: finished chunks were committed, the run can be resumed."""




class ChunkWriter:
    """A thread that commits chunks so HDF5/npz writes overlap the next batches' compute."""

    def __init__(self, pstore):
        self.pstore, self.bytes_written, self.error = pstore, 0, None
        self.q: queue.Queue = queue.Queue(maxsize=2)
        self.t = threading.Thread(target=self._loop, name="writer", daemon=True)
        self.t.start()

    def _loop(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            k, arrays, written = item
            try:
                if self.error is None:
                    self.bytes_written += self.pstore.write_chunk(k, arrays)
                    if written is not None:
                        written()
            except BaseException as exc:  # disk full, permissions: surface in the main thread
                self.error = exc

    def put(self, k, arrays, written=None):
        """Queue chunk ``k`` for commit; ``written()`` is called once it is on disk (buffer reuse)."""
        self.q.put((k, arrays, written))

    def raise_if_failed(self):
        if self.error is not None:
            raise StoreError(f"writing {self.pstore.dir} failed: {self.error}") from self.error

    def close(self, wait=True):
        self.q.put(None)
        if wait:
            self.t.join()
        self.raise_if_failed()


def install_signal_handlers():
    """Turn SIGTERM into a flag the loop checks at chunk boundaries; undo with :func:`restore_signal_handlers`."""
    flag = {"sig": None, "previous": {}}
    if threading.current_thread() is not threading.main_thread():
        return flag

    def handler(signum, _frame):
        flag["sig"] = signum

    for s in (signal.SIGTERM,):
        flag["previous"][s] = signal.signal(s, handler)
    return flag


def restore_signal_handlers(flag) -> None:
    """Put back the handlers :func:`install_signal_handlers` replaced (a library caller keeps its own)."""
    for s, previous in flag["previous"].items():
        signal.signal(s, previous if previous is not None else signal.SIG_DFL)
    flag["previous"] = {}


def check_signal(flag):
    if flag["sig"] is not None:
        raise Terminated(f"received signal {flag['sig']}: committed finished chunks; rerun the same command to resume")

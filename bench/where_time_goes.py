"""Where stage one's time goes: CPU seconds per thread role and per phase of one `bneck extract` run.

Runs the stage-one runner in this process on a generated JPEG folder and samples every
thread's CPU time (``/proc/self/task/*/stat``, Linux only) 20 times a second. Python threads
are told apart by name (the main thread, ``decode_*``, ``writer``); every other thread belongs
to the inference runtime (OpenVINO's streams, TensorFlow's pools). Phases: ``startup``
(manifest, weights, model conversion and compilation), ``loop`` (decode -> model -> rows
written in place into the preallocated output, one marker per chunk) and ``assemble`` (the end
session: row data and attributes, then the rename).

Read it next to `bench/extract.py`: the model-only ceiling C and decode rate D predict the
loop's CPU; anything above ``model + decode`` is the pipeline's own overhead.

    python bench/where_time_goes.py --backbone mobilenet --n 2000
"""

from __future__ import annotations

import collections
import os
import sys
import tempfile
import threading
import time

from features.config import ExtractConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")


def _thread_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of every live thread of this process, by native thread id."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended between listdir and open
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / HZ
    return out


class Sampler:
    """Keeps the last CPU time seen for every thread (also for threads that have ended) and its role."""

    def __init__(self, period: float = 0.05):
        self.cpu: dict[int, float] = {}
        self.role: dict[int, str] = {}
        self._stop = threading.Event()
        self._period = period
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)

    def _roles(self) -> None:
        main = threading.main_thread().native_id
        for t in threading.enumerate():
            name = t.name
            role = ("main" if t.native_id == main else "decode" if name.startswith("decode")
                    else "writer" if name == "writer" else "bench" if name == "bench-sampler" else "other_python")
            self.role[t.native_id] = role

    def sample(self) -> dict[str, float]:
        """Update and return CPU seconds by role so far."""
        self._roles()
        self.cpu.update(_thread_cpu())
        by_role = collections.Counter()
        for tid, seconds in self.cpu.items():
            by_role[self.role.get(tid, "runtime")] += seconds
        return dict(by_role)

    def _loop(self):
        while not self._stop.wait(self._period):
            self.sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _delta(after: dict, before: dict) -> dict:
    return {k: round(after.get(k, 0.0) - before.get(k, 0.0), 3) for k in sorted(set(after) | set(before))
            if k != "bench" and abs(after.get(k, 0.0) - before.get(k, 0.0)) >= 0.005}


def main(argv=None) -> dict:
    p = common.parser(__doc__)
    p.add_argument("--backbone", default="mobilenet", help="registry name (default mobilenet)")
    common.add_fixture_args(p, n=2000)
    p.add_argument("--runtime", default="auto", help="auto, tensorflow or openvino (default auto)")
    p.add_argument("--precision", default="auto", help="auto, bf16 or fp32 (default auto)")
    p.add_argument("--pooling", default="none", help="none, avg or max (default none: whole maps are stored)")
    common.add_output_args(p)
    args = p.parse_args(argv)
    if not os.path.isdir("/proc/self/task"):
        raise SystemExit("where_time_goes.py reads per-thread CPU times from /proc (Linux only)")

    import logging

    from features import runner

    logging.getLogger("bneck").setLevel(logging.ERROR)  # the --weights none warning
    directory, paths = common.jpeg_folder(args.n, 4, size=(256, 256), root=args.fixture_root)
    common.warm_page_cache(paths)
    marks, walls, slept = {}, {}, []
    real_run, real_finish = runner._run_chunks, runner._finish

    def timed(name, fn):
        def wrapper(*a, **k):
            marks[f"{name}_start"], t = sampler.sample(), time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                walls[name] = time.perf_counter() - t
                time.sleep(2 * sampler._period)  # the sampler has seen the pool's last CPU times
                slept.append(2 * sampler._period)
                marks[f"{name}_end"] = sampler.sample()
        return wrapper

    runner._run_chunks, runner._finish = timed("loop", real_run), timed("assemble", real_finish)
    with tempfile.TemporaryDirectory() as tmp, Sampler() as sampler:
        cfg = ExtractConfig(data=directory, output=os.path.join(tmp, "f.h5"), backbone=args.backbone,
                                   weights="none", batch_size=args.batch,
                                   pooling=args.pooling,
                                   precision=args.precision, progress=False, overwrite=True,
                                   **({} if args.runtime == "auto" else {"runtime": args.runtime}))
        start, t0 = sampler.sample(), time.perf_counter()
        summary = runner.extract(cfg)
        total = time.perf_counter() - t0 - sum(slept)
        end = sampler.sample()
    runner._run_chunks, runner._finish = real_run, real_finish

    loop = _delta(marks["loop_end"], marks["loop_start"])
    loop_wall = walls["loop"]
    cores = os.cpu_count() or 1
    result = {
        "bench": "where_time_goes", "backbone": args.backbone, "n": args.n, "batch": args.batch,
        "pooling": args.pooling, "images_per_s_loop": round(args.n / loop_wall, 1),
        "images_per_s_after_startup": round(args.n / (total - summary.startup_seconds), 1),
        "wall_seconds": {"startup": round(summary.startup_seconds, 2), "loop": round(loop_wall, 2),
                         "assemble": round(walls["assemble"], 2), "total": round(total, 2)},
        "cpu_seconds": {"startup": _delta(marks["loop_start"], start), "loop": loop,
                        "assemble": _delta(marks["assemble_end"], marks["assemble_start"]),
                        "total": _delta(end, start)},
        "loop_ms_per_image": {k: round(1000 * v / args.n, 3) for k, v in loop.items()},
        "loop_cpu_utilisation": round(sum(loop.values()) / (loop_wall * cores), 3),
        "cores": cores,
    }
    common.log(f"   loop {result['images_per_s_loop']} img/s, CPU ms per image {result['loop_ms_per_image']}, "
               f"utilisation {result['loop_cpu_utilisation']}")
    return common.emit(result)


if __name__ == "__main__":
    main()

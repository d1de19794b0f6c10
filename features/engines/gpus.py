"""``bneck extract --gpus all|N|I,J``: one worker process per local GPU, then the merge.

One TensorFlow process drives one GPU best: a second GPU in the same process needs a
distribution strategy and splits every batch, while independent processes each keep their own
decode threads, batches in flight and device. So each worker is a fresh interpreter (``spawn``)
whose ``CUDA_VISIBLE_DEVICES`` names its one GPU before TensorFlow is imported; workers take
shards from one queue (a slow GPU takes fewer), run the local runner on each, and the finished
shard files are merged into the output (:mod:`features.engines.shards`). Resume, chunk commits,
locking and the output's bytes are the local runner's: a rerun skips finished shards.

Signals: Ctrl-C reaches the whole process group; a SIGTERM sent to this process alone is passed on
to the workers, which commit their finished chunks, and the run exits 143 like a local one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import signal
import subprocess
import time

from features.config import ExtractConfig, ExtractSummary, shard_output
from features.mapper.device import AUTO_BATCH
from features.engines.shards import merge_shards, plan_shards, reuse_model, shard_config, start_work
from features.writer.commit import Terminated

log = logging.getLogger("bneck")

SHARDS_PER_GPU = 4


def work_dir(output: str) -> str:
    """Where the shard files of ``output`` live until they are merged."""
    return output + ".gpus"


def visible_gpus() -> list[str]:
    """The GPU ids this machine offers: ``$CUDA_VISIBLE_DEVICES`` when set, else ``nvidia-smi -L``'s, else none.

    Asked without importing TensorFlow, so the parent process never claims a GPU its workers need.
    """
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(line for line in out.splitlines() if line.startswith("GPU "))]


def parse_gpus(spec: str, available: list[str] | None = None) -> list[str]:
    """``all`` (every visible GPU), ``N`` (the first N) or ``I,J,...`` (those ids) -> a list of GPU ids."""
    spec = str(spec).strip()
    if not spec:
        raise ValueError("--gpus needs all, a count or a list of GPU ids")
    if "," in spec or not spec.isdigit() and spec != "all":
        ids = [g.strip() for g in spec.split(",")]
        if not all(g.isdigit() for g in ids) or len(set(ids)) != len(ids):
            raise ValueError(f"--gpus {spec}: expected all, a count, or distinct GPU ids such as 0,1")
        return ids
    available = visible_gpus() if available is None else available
    if spec == "all":
        if not available:
            raise ValueError("--gpus all: no GPU is visible here (CUDA_VISIBLE_DEVICES / nvidia-smi -L list none); "
                             "run without --gpus to use this machine's CPU")
        return list(available)
    n = int(spec)
    if n < 1 or n > len(available):
        raise ValueError(f"--gpus {n}: {len(available)} GPU(s) visible here ({', '.join(available) or 'none'})")
    return list(available[:n])


def extract_gpus(cfg: ExtractConfig, gpus: list[str], *, shards_per_gpu: int = SHARDS_PER_GPU) -> ExtractSummary:
    """Run ``cfg`` with one worker process per GPU id in ``gpus``; the output equals the local runner's."""
    import multiprocessing

    from tqdm.auto import tqdm

    from features.runner import extract

    if not gpus:
        raise ValueError("extract_gpus needs at least one GPU id")
    if cfg.shard:
        raise ValueError("--gpus splits the run into shards itself; it cannot be combined with --shard")
    t0 = time.time()
    if os.path.exists(cfg.output) and not cfg.overwrite:
        return extract(dataclasses.replace(cfg, progress=False))  # "already complete", or a clear error
    work = work_dir(cfg.output)
    if cfg.batch_size == "auto":  # every worker drives a GPU
        cfg = dataclasses.replace(cfg, batch_size=AUTO_BATCH["gpu"])
    n = start_work(cfg, work)
    n_shards = plan_shards(work, n, len(gpus) * shards_per_gpu, cfg.batch_size)
    shard_cfg = shard_config(cfg, work, max(1, (os.cpu_count() or 1) // len(gpus)))  # each GPU's share of cores
    shards = [f"{i}/{n_shards}" for i in range(n_shards)]
    log.info("gpus: %d rows in %d shards on GPU(s) %s -> %s", n, n_shards, ",".join(gpus), work)
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: CUDA_VISIBLE_DEVICES before TensorFlow
    tasks, results = ctx.Queue(), ctx.Queue()
    for s in shards:
        tasks.put(s)
    for _ in gpus:
        tasks.put(None)
    procs = [ctx.Process(target=_worker, args=(g, dataclasses.asdict(shard_cfg), tasks, results),
                         name=f"bneck-gpu{g}") for g in gpus]
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: [p.terminate() for p in procs if p.is_alive()])
    computed = written = done = 0
    failure = None
    bar = tqdm(total=n, unit="img", desc=f"extract {os.path.basename(cfg.output)} [{len(gpus)} GPU]",
               disable=not cfg.progress, dynamic_ncols=True)
    try:
        for p in procs:
            p.start()
        while done < n_shards and failure is None:
            try:
                msg = results.get(timeout=1.0)
            except queue.Empty:
                if not any(p.is_alive() for p in procs):
                    failure = ("RuntimeError", "every GPU worker exited before the shards were done")
                continue
            if "error" in msg:
                failure = (msg["kind"], f"shard {msg['shard']} on GPU {msg['gpu']}: {msg['error']}")
                continue
            done += 1
            computed, written = computed + msg["computed"], written + msg["bytes_written"]
            bar.update(msg["rows"])
    finally:
        bar.close()
        if failure is not None or done < n_shards:
            for p in procs:
                if p.is_alive():
                    p.terminate()  # the runner's SIGTERM handler commits finished chunks
        for p in procs:
            p.join()
        signal.signal(signal.SIGTERM, previous)
    if failure is not None:
        kind, text = failure
        if kind in ("Terminated", "KeyboardInterrupt") or any(p.exitcode == 143 for p in procs):
            raise Terminated(f"{text}; finished shards and chunks are kept in {work}: rerun the same command")
        raise RuntimeError(text)
    files = [shard_output(shard_cfg.output, s) for s in shards]
    return merge_shards(cfg, files, work, n, computed=computed, written=written, t0=t0)


def _worker(gpu: str, cfg_dict: dict, tasks, results) -> None:
    """One GPU's process: take shards until the queue says stop; report each summary or the first error."""
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from features.runner import extract

    cache: dict = {}
    while True:
        shard = tasks.get()
        if shard is None:
            return
        try:
            with reuse_model(cache):
                summary = extract(ExtractConfig(**{**cfg_dict, "shard": shard}))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides the exit code
            results.put({"shard": shard, "gpu": gpu, "kind": type(exc).__name__, "error": str(exc)})
            return
        results.put({"shard": shard, "gpu": gpu, **summary.as_dict()})

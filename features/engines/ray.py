"""``bneck extract --engine ray``: the shards of one extraction run by a pool of Ray actors.

Design: the manifest is split into N shards (``shards_per_worker`` per actor, fixed in
``OUT.h5.ray/plan.json`` so a rerun resumes with the same split whatever the cluster size). One
actor per GPU (or CPU actors when there is none) loads the backbone once and runs
:func:`features.runner.extract` on each shard it is handed: the local runner's decode threads,
chunk commits, locking and atomic shard files, unchanged. Shards go to whichever actor is free, so
slow nodes do not hold the run back. The finished shard files are then merged with
:func:`features.merge.merge` (``copy=True``) into the requested output and the work directory is
removed. The result equals the local engine's, row order and bytes included.

Resuming: finished shard files are skipped, interrupted shards resume from their committed
chunks; an output that is already complete is recognised as such without starting Ray.

Every node must see ``DATA`` and the output directory at the same paths (a shared filesystem)
and have bneck installed. With a Ray Client address (``ray://host:10001``) the coordinating code
runs as a task on the cluster, so the machine you type on needs no access to the files.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time

from features.config import ExtractConfig, ExtractSummary, shard_output
from features.mapper.device import AUTO_BATCH
from features.reader.fs import absolute
from features.engines.shards import merge_shards, plan_shards, reuse_model, shard_config, start_work
from features.runner import extract

log = logging.getLogger("bneck")

SHARDS_PER_WORKER = 4
_LOCAL_OBJECT_STORE = 256 << 20  # only summaries cross the object store; rows go to disk


def work_dir(output: str) -> str:
    """Where the shard files of ``output`` live until they are merged."""
    return output + ".ray"


def extract_ray(cfg: ExtractConfig, *, address: str | None = None, num_workers: int | None = None,
                num_gpus_per_worker: float | None = None, shards_per_worker: int = SHARDS_PER_WORKER,
                stats: dict | None = None) -> ExtractSummary:
    """Run ``cfg`` on Ray and return the summary; the output equals :func:`features.runner.extract`'s.

    ``address``: None starts (or reuses) a local Ray instance; "auto", "HOST:PORT" or
    "ray://HOST:10001" join a running cluster. ``num_workers``: actors (default: one per GPU, else
    one per 8 CPUs of the cluster). ``num_gpus_per_worker``: GPUs per actor (default: 1 when the
    cluster has GPUs, else 0; fractions share a GPU). ``stats``, if given, is filled with phase
    timings (Ray start, actors ready, per-shard seconds, merge) for benchmarks.
    """
    try:
        import ray
    except ImportError:
        raise RuntimeError("--engine ray needs Ray, an optional extra: pip install 'bneck[ray]'") from None
    if cfg.shard:
        raise ValueError("--engine ray makes its own shards; run without --shard")
    cfg = _absolute(cfg)
    started, stats = False, stats if stats is not None else {}
    t0 = time.time()
    if not ray.is_initialized():
        if address:
            try:
                ray.init(address=address)
            except ConnectionError as exc:
                raise RuntimeError(
                    f"cannot join the Ray cluster at {address}: {exc}. Ray >= 2.59 clusters check a token: "
                    "export RAY_AUTH_MODE=token here too (the token is read from ~/.ray/auth_token or "
                    "$RAY_AUTH_TOKEN)") from None
        else:
            ray.init(include_dashboard=False, object_store_memory=_LOCAL_OBJECT_STORE)
        started = True
    stats["ray_init_s"] = round(time.time() - t0, 3)
    try:
        args = (cfg, num_workers, num_gpus_per_worker, shards_per_worker)
        from ray.util.client import ray as client

        if client.is_connected():  # Ray Client: the files live on the cluster, not here
            summary, remote_stats = ray.get(ray.remote(num_cpus=0)(_drive_remote).remote(*args))
            stats.update(remote_stats)
            return ExtractSummary(**summary)
        return _drive(*args, stats=stats)
    finally:
        if started:
            ray.shutdown()


def _drive_remote(*args) -> tuple[dict, dict]:
    stats: dict = {}
    return dataclasses.asdict(_drive(*args, stats=stats)), stats


def _drive(cfg: ExtractConfig, num_workers, num_gpus_per_worker, shards_per_worker, *,
           stats: dict) -> ExtractSummary:
    import ray
    from ray.util import ActorPool
    from tqdm.auto import tqdm

    t0 = time.time()
    if os.path.exists(cfg.output) and not cfg.overwrite:
        # The local engine's check: "already complete", or a clear error; it never recomputes here.
        return extract(dataclasses.replace(cfg, progress=False))
    work = work_dir(cfg.output)
    n = start_work(cfg, work)
    workers, cpus, gpus = _plan_workers(num_workers, num_gpus_per_worker)
    if cfg.batch_size == "auto":  # the actors' devices decide, not the driver's
        cfg = dataclasses.replace(cfg, batch_size=AUTO_BATCH["gpu" if gpus else "cpu"])
    n_shards = plan_shards(work, n, workers * shards_per_worker, cfg.batch_size)
    shard_cfg = shard_config(cfg, work, cpus)
    shards = [f"{i}/{n_shards}" for i in range(n_shards)]
    workers = min(workers, n_shards)
    log.info("ray: %d rows in %d shards on %d actors (%s CPU, %s GPU each) -> %s", n, n_shards, workers, cpus,
             gpus, work)
    actor_cls = ray.remote(_ShardWorker).options(num_cpus=cpus, num_gpus=gpus, max_restarts=2, max_task_retries=2)
    actors = [actor_cls.remote(cpus) for _ in range(workers)]
    stats.update(workers=workers, n_shards=n_shards, cpus_per_worker=cpus, gpus_per_worker=gpus, shards=[])
    computed = written = 0
    bar = tqdm(total=n, unit="img", desc=f"extract {os.path.basename(cfg.output)} [ray x{workers}]",
               disable=not cfg.progress, dynamic_ncols=True)
    try:
        ray.get([a.ready.remote() for a in actors])  # Ray workers started, TensorFlow imported
        stats["actors_ready_s"] = round(time.time() - t0, 3)
        pool = ActorPool(actors)
        cfg_dict = dataclasses.asdict(shard_cfg)
        for s in pool.map_unordered(lambda a, shard: a.run.remote(cfg_dict, shard), shards):
            computed, written = computed + s["computed"], written + s["bytes_written"]
            stats["shards"].append({k: s[k] for k in ("output", "rows", "computed", "seconds", "pid")})
            bar.update(s["rows"])
        stats["shards_done_s"] = round(time.time() - t0, 3)
    except ray.exceptions.RayTaskError as exc:  # re-raise the worker's own error (StoreError, ...)
        cause = getattr(exc, "cause", None)
        raise (cause if isinstance(cause, BaseException) else RuntimeError(str(exc))) from None
    finally:
        bar.close()
        for a in actors:
            ray.kill(a)
    files = [shard_output(shard_cfg.output, s) for s in shards]
    t_merge = time.time()
    summary = merge_shards(cfg, files, work, n, computed=computed, written=written, t0=t0)
    stats["merge_s"] = round(time.time() - t_merge, 3)
    return summary


def _absolute(cfg: ExtractConfig) -> ExtractConfig:
    """Absolute paths: actors do not share the caller's working directory."""
    source = dict(cfg.source)
    for key in ("categories", "image_root"):
        if source.get(key):
            source[key] = absolute(source[key])
    return dataclasses.replace(cfg, data=absolute(cfg.data), output=os.path.abspath(cfg.output),
                               source=source)


def _plan_workers(num_workers, gpus_per_worker) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor) for the connected cluster."""
    import ray

    res = ray.cluster_resources()
    total_cpu, total_gpu = float(res.get("CPU", 1)), float(res.get("GPU", 0))
    node_cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")] or [total_cpu]
    if gpus_per_worker is None:
        gpus_per_worker = 1 if total_gpu else 0
    if gpus_per_worker < 0 or (num_workers is not None and num_workers < 1):
        raise ValueError("--num-gpus-per-worker must be >= 0 and the number of workers >= 1")
    if gpus_per_worker and total_gpu < gpus_per_worker:
        raise ValueError(f"--num-gpus-per-worker {gpus_per_worker} but the Ray cluster has {total_gpu:g} GPUs; "
                         "pass --num-gpus-per-worker 0 to run on CPUs")
    if num_workers is None:
        # A GPU actor per GPU; on CPUs one TensorFlow process scales well up to ~8 cores.
        num_workers = int(total_gpu // gpus_per_worker) if gpus_per_worker else max(1, int(total_cpu // 8))
    cpus = max(1, min(int(total_cpu // num_workers), int(max(node_cpus))))
    return num_workers, cpus, gpus_per_worker


class _ShardWorker:
    """A Ray actor: one TensorFlow process that runs whole shards through the local runner."""

    def __init__(self, cpus: int):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        # Before any op runs: keep this actor on its share of the node's cores.
        tf.config.threading.set_intra_op_parallelism_threads(int(cpus))
        tf.config.threading.set_inter_op_parallelism_threads(min(2, int(cpus)))
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)  # fractional GPUs share the memory
        self._cache: dict = {}

    def ready(self) -> int:
        return os.getpid()

    def run(self, cfg_dict: dict, shard: str) -> dict:
        cfg = ExtractConfig(**{**cfg_dict, "shard": shard})
        main = threading.current_thread() is threading.main_thread()
        old = signal.getsignal(signal.SIGTERM) if main else None
        try:
            with reuse_model(self._cache):
                return {**extract(cfg).as_dict(), "pid": os.getpid()}
        finally:
            if main:  # the runner's SIGTERM handler is for a CLI process, not for a Ray worker
                signal.signal(signal.SIGTERM, old)

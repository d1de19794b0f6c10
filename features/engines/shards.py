"""What every multi-worker engine shares: a fixed shard plan, the bad-row count and the final merge.

An engine (Ray actors, one process per local GPU) runs :func:`features.runner.extract` on shard
files in a work directory beside the output; a shard is done when its final file exists, so a
rerun skips finished shards and resumes interrupted ones. The plan (how many shards) is written
at the first attempt and reused, whatever the number of workers on the rerun.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import shutil
import time

from features.config import ExtractConfig, ExtractSummary, TooManyBadImages
from features.fsutil import atomic_write_bytes


def start_work(cfg: ExtractConfig, work: str) -> int:
    """Clear ``work`` when the run overwrites, and return the source's row count (the plan needs it)."""
    from features.reader.sources import check_found, read_source

    if cfg.overwrite:
        shutil.rmtree(work, ignore_errors=True)
    manifest = read_source(cfg.data, progress=cfg.progress, **{k: v for k, v in cfg.source.items() if v is not None})
    check_found(cfg.data, manifest)
    return len(manifest)


def shard_config(cfg: ExtractConfig, work: str, decode_workers: int) -> ExtractConfig:
    """Each shard's config: its file in ``work``, no bar; the bad-row budget is judged at the merge."""
    return dataclasses.replace(cfg, output=os.path.join(work, os.path.basename(cfg.output)), overwrite=False,
                               progress=False, max_bad_fraction=1.0, workers=cfg.workers or decode_workers)


def plan_shards(work: str, n_rows: int, wanted: int, batch_size: int) -> int:
    """The shard count of this run: fixed at the first attempt so reruns resume the same shard files."""
    os.makedirs(work, exist_ok=True)
    plan_path = os.path.join(work, "plan.json")
    if os.path.exists(plan_path):
        with open(plan_path, encoding="utf-8") as f:
            return int(json.load(f)["n_shards"])
    # Every shard at least one batch long, so tiny datasets do not spawn empty shards.
    n_shards = max(1, min(wanted, n_rows // max(1, batch_size)))
    atomic_write_bytes(plan_path, json.dumps({"n_shards": n_shards, "n_rows": n_rows}).encode())
    return n_shards


def count_bad(files: list[str]) -> tuple[int, collections.Counter]:
    """Invalid rows over the shard files, and their reasons."""
    import h5py

    bad, reasons = 0, collections.Counter()
    for path in files:
        with h5py.File(path, "r") as f:
            valid = f["valid"][()]
            bad += int((~valid).sum())
            reasons.update(r.decode() if isinstance(r, bytes) else r for r in f["reason"][()][~valid])
    return bad, reasons


def merge_shards(cfg: ExtractConfig, files: list[str], work: str, n_rows: int, *, computed: int, written: int,
                 t0: float) -> ExtractSummary:
    """Check the bad-row budget over all shards, merge them into ``cfg.output`` (a copy) and remove ``work``."""
    from features.merge import merge

    bad, reasons = count_bad(files)
    if n_rows and bad / n_rows > cfg.max_bad_fraction:
        raise TooManyBadImages(
            f"{bad} of {n_rows} images ({bad / n_rows:.1%}) could not be decoded ({dict(reasons)}), more than "
            f"--max-bad-fraction {cfg.max_bad_fraction}. The shard files are kept in {work}; rerun with a "
            "higher --max-bad-fraction to finish without recomputing, or fix the inputs")
    merge(files, cfg.output, copy=True, overwrite=cfg.overwrite, progress=cfg.progress)
    shutil.rmtree(work, ignore_errors=True)
    return ExtractSummary(cfg.output, n_rows, computed, bad, time.time() - t0,
                          written + os.path.getsize(cfg.output), bad_reasons=dict(reasons))


@contextlib.contextmanager
def reuse_model(cache: dict):
    """Build the backbone and trace (or compile) its graph once per worker process, not once per shard.

    Within the block, the runner's model and extractor factories return cached objects for equal
    arguments. Engines use it around their per-shard ``extract`` calls; the CLI never does.
    """
    from features import weights
    from features.mapper import tf_runtime

    try:
        from features.mapper import ov_runtime as ov
    except ImportError:  # pragma: no cover - a build without the OpenVINO runtime module
        ov = None
    build, make_extractor = weights.build_backbone, tf_runtime.Extractor
    make_ov = getattr(ov, "OpenVINOExtractor", None)

    def cached_build(spec, **kw):
        key = ("model", spec.name, repr(sorted(kw.items())))
        if key not in cache:
            cache[key] = build(spec, **kw)
        return cache[key]

    def cached(kind, factory):
        def make(model, preprocess, **kw):
            key = (kind, id(model), repr(sorted(kw.items())))
            if key not in cache:
                cache[key] = factory(model, preprocess, **kw)
            return cache[key]
        return make

    weights.build_backbone, tf_runtime.Extractor = cached_build, cached("tf", make_extractor)
    if make_ov is not None:
        ov.OpenVINOExtractor = cached("openvino", make_ov)
    try:
        yield
    finally:
        weights.build_backbone, tf_runtime.Extractor = build, make_extractor
        if make_ov is not None:
            ov.OpenVINOExtractor = make_ov

"""Does `--engine ray` scale from 1 to 2 workers here, and where does its time go?

Runs the same extraction (photo-like JPEGs, one backbone, random weights) three ways, each in a
fresh process as a user would: the local engine (`bneck extract`), then `--engine ray` with 1 and
with 2 actors on a local Ray instance. Prints ONE JSON object: wall time and images/s of each, the
Ray phases (``ray_init_s``: Ray start; then, counted from the end of the Ray start,
``actors_ready_s``: worker processes up and TensorFlow imported, ``shards_done_s``: all shards
computed, ``merge_s``: the merge copy) and the per-shard seconds, plus the speed-up of 2 actors over 1.

    python bench/ray_scaling.py                         # 400 JPEGs 256x256, mobilenet 224 bf16
    python bench/ray_scaling.py --n 2000 --workers 1,2,4 --precision fp32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def _one(args) -> dict:
    """Child process: one configuration; returns its measurements."""
    from features.config import ExtractConfig
    from features.runner import extract

    cfg = ExtractConfig(data=args.data, output=args.output, backbone=args.backbone, input_size=args.input_size,
                        weights="none", precision=args.precision,
                        batch_size=args.batch,
                        runtime=args.runtime, progress=False)
    t0 = time.perf_counter()
    if args.engine == "local":
        s, stats = extract(cfg), {}
    else:
        from features.engines.ray import extract_ray

        stats = {}  # extract_ray starts a local Ray instance (all cores) and shuts it down
        s = extract_ray(cfg, num_workers=args.ray_workers, stats=stats)
    wall = time.perf_counter() - t0
    shard_s = [x["seconds"] for x in stats.get("shards", [])]
    return {"engine": args.engine, "ray_workers": args.ray_workers, "rows": s.rows, "computed": s.computed,
            "wall_s": round(wall, 2), "images_per_s_wall": round(s.rows / wall, 1),
            "summary": s.as_dict(), "ray": {k: v for k, v in stats.items() if k != "shards"} if stats else None,
            "shard_seconds": [round(x, 2) for x in shard_s],
            "shard_images_per_s": [round(x["computed"] / x["seconds"], 1) for x in stats.get("shards", [])
                                   if x["seconds"] > 0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=400, help="number of JPEGs (default 400)")
    p.add_argument("--size", type=int, default=256, help="JPEG side in pixels (default 256)")
    p.add_argument("--backbone", default="mobilenet", help="backbone (default mobilenet)")
    p.add_argument("--input-size", default="224", help="model input size (default 224)")
    p.add_argument("--precision", default="bf16", help="fp32 or bf16 (default bf16)")
    p.add_argument("--runtime", default="tensorflow", help="inference runtime (default tensorflow)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--workers", default="1,2", help="Ray actor counts to try (default 1,2)")
    p.add_argument("--fixture-root", help="where the JPEGs are cached (default $TMPDIR/bneck-bench)")
    # internal: run one configuration in this process
    p.add_argument("--one", dest="engine", choices=["local", "ray"], help=argparse.SUPPRESS)
    p.add_argument("--ray-workers", type=int, help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.engine:
        print(json.dumps(_one(args)))
        return

    data, paths = common.jpeg_folder(args.n, 4, size=(args.size, args.size), root=args.fixture_root)
    common.warm_page_cache(paths)  # every configuration reads from memory, not the disk
    runs = []
    with tempfile.TemporaryDirectory(prefix="bneck-ray-bench-") as tmp:
        configs = [("local", None)] + [("ray", int(w)) for w in args.workers.split(",")]
        for i, (engine, w) in enumerate(configs):
            cmd = [sys.executable, os.path.abspath(__file__), "--one", engine, "--data", data,
                   "--output", os.path.join(tmp, f"run{i}.h5"), "--backbone", args.backbone,
                   "--input-size", args.input_size, "--precision", args.precision, "--runtime", args.runtime,
                   "--batch", str(args.batch)] + (["--ray-workers", str(w)] if w else [])
            common.log(f"running {engine}" + (f" with {w} actor(s)" if w else "") + " ...")
            r = subprocess.run(cmd, capture_output=True, text=True,
                               env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
            if r.returncode:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
            runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
            common.log(f"  {runs[-1]['wall_s']} s wall")
    ray_runs = {r["ray_workers"]: r for r in runs if r["engine"] == "ray"}
    result = {"bench": "ray_scaling", "n": args.n, "jpeg_size": args.size, "backbone": args.backbone,
              "input_size": args.input_size, "precision": args.precision, "runtime": args.runtime,
              "batch": args.batch, "views_per_image": 2, "runs": runs}
    if 1 in ray_runs and 2 in ray_runs:
        one, two = ray_runs[1], ray_runs[2]
        result["speedup_2_over_1_wall"] = round(one["wall_s"] / two["wall_s"], 2)
        result["speedup_2_over_1_compute"] = round(
            (one["ray"]["shards_done_s"] - one["ray"]["actors_ready_s"])
            / (two["ray"]["shards_done_s"] - two["ray"]["actors_ready_s"]), 2)
    common.emit(result)


if __name__ == "__main__":
    main()

"""Scaling of stage one: model throughput vs batch size, and `bneck extract` cost vs dataset size.

(a) model only: images/s (both views) of one backbone/runtime at each --batches size, a random
    uint8 batch already in memory (as model_ceiling.py), timed at least --seconds per size.
(b) end to end: `bneck extract` (child process, its own peak RSS) over generated 256x256 JPEG
    folders of each --sizes, same backbone/runtime/precision, --batch. Reports the seconds,
    the start-up (manifest, weights, model build) and the steady images/s after it, the cost
    per 1,000 images, the ratio of the per-image costs of the largest and smallest size
    (linear scaling => ~1) and the ratio of their peak RSS (memory must not grow with the
    dataset: ~1). --pooling avg keeps the 10k file small.

    python bench/scaling.py --backbone mobilenet --runtime openvino --sizes 1000,10000
    python bench/scaling.py --sizes 64,256 --batches 8,16 --seconds 2     # smoke run
"""

from __future__ import annotations

import os
import sys
import tempfile

from features.mapper import device
from features.mapper.runtimes import resolve_runtime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def model_throughput(args, batch: int) -> dict:
    """Model-only images/s at one batch size (fresh extractor, so the runtime compiles for it)."""
    import numpy as np

    ex, info = common.build_extractor(args.backbone, input_size=args.input_size, batch=batch,
                                      precision=args.precision, runtime=args.runtime, pooling=args.pooling)
    h, w = ex.input_size
    x = np.random.default_rng(0).integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
    times = common.run_for(lambda: ex(x), min_seconds=args.seconds, min_iters=3, warmup=2)
    s = common.summarize(times, batch)
    return {"batch": batch, "images_per_s": s["items_per_s"], "features_per_s": round(2 * s["items_per_s"], 2),
            "ms_per_batch_median": s["ms_per_call_median"], "ms_per_batch_p90": s["ms_per_call_p90"],
            "calls": s["calls"], "build_seconds": info["build_seconds"], "precision": info["precision"]}


def run_extract(args, data: str, out: str) -> dict:
    """`bneck extract` in a child process; its --json summary plus its own peak RSS and wall time."""
    return common.run_bneck_extract(data, out, [
        "--backbone", args.backbone, "--weights", "none", "--runtime", args.runtime, "--precision", args.precision,
        "--input-size", args.input_size, "--pooling", args.pooling, "--batch-size", str(args.batch)])


def main(argv=None) -> dict:
    p = common.parser(__doc__)
    p.add_argument("--backbone", default="mobilenet", help="registry name (default mobilenet)")
    p.add_argument("--runtime", default="auto", choices=("auto", "tensorflow", "openvino"),
                   help="auto: openvino on a CPU when installed, else tensorflow, as bneck extract (default auto)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="compute precision (default auto, as bneck extract: bf16 on a bf16 CPU, fp16 on a GPU)")
    p.add_argument("--input-size", default="224", help="N or HxW (default 224)")
    p.add_argument("--pooling", default="avg", choices=("none", "avg", "max"),
                   help="pooling at extraction (default avg: keeps the 10k file small)")
    p.add_argument("--batches", default="8,16,32,64", help="batch sizes of (a) (default 8,16,32,64)")
    p.add_argument("--seconds", type=float, default=8.0, help="time each batch size at least this long (default 8)")
    p.add_argument("--batch", type=int, default=32, help="--batch-size of the extract runs in (b) (default 32)")
    p.add_argument("--sizes", default="1000,10000", help="dataset sizes of (b) (default 1000,10000)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: a (batch sizes), b (dataset sizes)")
    common.add_output_args(p)
    args = p.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - {"a", "b"}:
        p.error(f"--skip takes a, b; got {args.skip!r}")

    # Resolve once, so (a) and every extract child of (b) use the same runtime and precision.
    args.runtime = resolve_runtime(args.runtime)
    args.precision = device.resolve_precision(args.precision)

    result = {"bench": "scaling", "backbone": args.backbone, "runtime": args.runtime, "precision": args.precision,
              "input_size": args.input_size, "pooling": args.pooling, "views": 2}

    if "a" not in skip:
        common.log(f"== (a) model-only throughput vs batch size ({args.backbone}, {args.runtime}, {args.precision})")
        rows = []
        for b in [int(v) for v in args.batches.split(",") if v]:
            row = model_throughput(args, b)
            common.log(f"   batch {b:4d}: {row['images_per_s']} img/s (median {row['ms_per_batch_median']} ms/batch)")
            rows.append(row)
        best = max(rows, key=lambda r: r["images_per_s"])
        rel = {str(r["batch"]): round(r["images_per_s"] / best["images_per_s"], 3) for r in rows}
        result["batch_sizes"] = {"rows": rows, "best_batch": best["batch"], "seconds_per_size": args.seconds,
                                 "relative_to_best": rel}

    if "b" not in skip:
        sizes = sorted(int(v) for v in args.sizes.split(",") if v)
        common.log(f"== (b) bneck extract vs dataset size {sizes} (batch {args.batch}, pooling {args.pooling})")
        runs = []
        for n in sizes:
            directory, paths = common.jpeg_folder(n, 4, size=(256, 256), root=args.fixture_root)
            common.warm_page_cache(paths)
            with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
                e = run_extract(args, directory, os.path.join(tmp, "f.h5"))
            steady_s = e["seconds"] - e["startup_seconds"]
            row = {"n": n, "seconds": round(e["seconds"], 3), "wall_seconds": e["wall_seconds"],
                   "startup_seconds": e["startup_seconds"], "images_per_s": e["images_per_s"],
                   "images_per_s_after_startup": e["images_per_s_after_startup"],
                   "seconds_per_1k_images": round(1000 * e["seconds"] / n, 3),
                   "seconds_per_1k_images_after_startup": round(1000 * steady_s / n, 3),
                   "peak_rss_mb": round(e["peak_rss_mb"], 1), "bytes_written": e.get("bytes_written")}
            common.log(f"   n={n}: {e['seconds']:.1f} s ({e['startup_seconds']:.1f} s start-up), "
                       f"{e['images_per_s_after_startup']} img/s after start-up, peak RSS {row['peak_rss_mb']} MiB")
            runs.append(row)
        small, large = runs[0], runs[-1]
        result["dataset_sizes"] = {"batch": args.batch, "jpeg": "256x256 q90", "rows": runs}
        if len(runs) > 1:
            result["dataset_sizes"].update({
                # Cost per image of the largest size over the smallest: ~1 means linear scaling.
                "per_image_cost_ratio_after_startup": round(
                    large["seconds_per_1k_images_after_startup"] / small["seconds_per_1k_images_after_startup"], 3),
                "per_image_cost_ratio_total": round(large["seconds_per_1k_images"] / small["seconds_per_1k_images"], 3),
                # Peak RSS of the largest run over the smallest: ~1 means memory does not grow with the dataset.
                "peak_rss_ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
                "size_ratio": round(large["n"] / small["n"], 1),
            })
            common.log(f"   per-image cost ratio {result['dataset_sizes']['per_image_cost_ratio_after_startup']} "
                       f"(after start-up), peak RSS ratio {result['dataset_sizes']['peak_rss_ratio']}")
        if "batch_sizes" in result:
            ceiling = {r["batch"]: r["images_per_s"] for r in result["batch_sizes"]["rows"]}.get(args.batch)
            if ceiling:
                result["dataset_sizes"]["model_ceiling_images_per_s"] = ceiling
                result["dataset_sizes"]["ratio_to_model_ceiling"] = round(
                    large["images_per_s_after_startup"] / ceiling, 3)

    result["peak_rss_mb_bench_process"] = common.peak_rss_mb()
    return common.emit(result)


if __name__ == "__main__":
    main()

"""End-to-end stage one, side by side with its ceilings: JPEG files on disk -> finished HDF5 file.

For each backbone, in ONE run on the same cores: the model-only ceiling C of every runtime
(images/s with both views, random uint8 batch already in memory), the decode-only rate D
(the best of the run), the pipeline's hardware limit 1 / (1/C_best + 1/D) (two views to infer,
one image to decode), the real `bneck extract` (subprocess, its own peak RSS), and optionally
the classic approach (`image_dataset_from_directory` + `model.predict` fp32, one pass per view).

    python bench/extract.py --backbones vgg16,resnet50,mobilenet,mobilenetv2 --n 400 --classic vgg16
    python bench/extract.py --backbones vgg16 --n 480 --classic vgg16 --int8 vgg16
    python bench/extract.py --backbones mobilenet --layouts webdataset,parquet --classic ''   # issue 22 item 6

--layouts also packs the same JPEGs as 4 webdataset tars and/or one parquet file (row groups of 64) and runs
the same extract on each right after the folder run: the ratios to the folder and to the limit side by side.
"""

from __future__ import annotations

import os
import sys
import tempfile

from features.mapper import device

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def run_extract(data: str, out: str, backbone: str, runtime: str, precision: str, batch: int) -> dict:
    """`bneck extract` in a child process; its --json summary plus its own peak RSS."""
    return common.run_bneck_extract(data, out, ["--backbone", backbone, "--weights", "none", "--runtime", runtime,
                                                "--precision", precision, "--batch-size", str(batch)])


def model_ceiling(backbone: str, runtime: str, precision: str, batch: int, seconds: float) -> dict:
    """Model-only images/s (both views) of one runtime."""
    import numpy as np

    ex, info = common.build_extractor(backbone, batch=batch, precision=precision, runtime=runtime)
    h, w = ex.input_size
    x = np.random.default_rng(0).integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
    times = common.run_for(common.pipelined_step(ex, x), min_seconds=seconds, min_iters=3, warmup=2)
    s = common.summarize(times, batch)
    return {"runtime": runtime, "precision": info["precision"], "images_per_s": s["items_per_s"],
            "features_per_s": round(2 * s["items_per_s"], 2), "build_seconds": info["build_seconds"]}


def decode_rate(paths, workers: int) -> float:
    """Decode-only images/s at 224 with the stage-one decoder and a thread pool."""
    from features import images

    seconds, _ = common.threaded_throughput(lambda p: images.decode(p, (224, 224)), paths, workers)
    return len(paths) / seconds


def hardware_limit(c: float, d: float) -> float:
    """The pipeline's limit in images/s: 1 / (1/C + 1/D), C the model-only rate (both views), D the decode rate."""
    return 1.0 / (1.0 / c + 1.0 / d)


def int8_row(directory: str, name: str, d: float, args) -> dict:
    """--precision int8 beside the float rows: its model-only ceiling, its limit, a real extract run."""
    c = model_ceiling(name, "openvino", "int8", args.batch, args.seconds)
    limit = hardware_limit(c["images_per_s"], d)
    with tempfile.TemporaryDirectory() as tmp:
        e2e = run_extract(directory, os.path.join(tmp, "f.h5"), name, "openvino", "int8", args.batch)
    steady = e2e["images_per_s_after_startup"]
    common.log(f"   int8: ceiling {c['images_per_s']} img/s; extract {steady} img/s after {e2e['startup_seconds']} s "
               f"start-up (calibration included); limit {limit:.1f}; ratio {steady / limit:.3f}")
    return {"ceiling": c, "limit_images_per_s": round(limit, 2), "images_per_s_after_startup": steady,
            "startup_seconds": e2e["startup_seconds"], "peak_rss_mb": e2e["peak_rss_mb"],
            "ratio_to_limit": round(steady / limit, 3), "features_per_s": round(2 * steady, 2)}


def pack_layouts(directory: str, paths: list[str], layouts: list[str], root: str) -> dict:
    """The same JPEG bytes as webdataset tars / a parquet file under ``root``: {layout: the DATA to extract}."""
    import io
    import tarfile

    out = {}
    labels = [os.path.basename(os.path.dirname(p)) for p in paths]
    classes = sorted(set(labels))
    if "webdataset" in layouts:
        tars = os.path.join(root, "tars")
        os.makedirs(tars, exist_ok=True)
        per = -(-len(paths) // 4)
        for s in range(4):
            with tarfile.open(os.path.join(tars, f"{s:05d}.tar"), "w") as tf:
                for i in range(s * per, min((s + 1) * per, len(paths))):
                    for ext, data in (("jpg", open(paths[i], "rb").read()),
                                      ("cls", str(classes.index(labels[i])).encode())):
                        info = tarfile.TarInfo(f"{i:06d}.{ext}")
                        info.size = len(data)
                        tf.addfile(info, io.BytesIO(data))
        out["webdataset"] = tars
    if "parquet" in layouts:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({"image": [open(p, "rb").read() for p in paths],
                          "label": [classes.index(lab) for lab in labels]})
        path = os.path.join(root, "data.parquet")
        pq.write_table(table, path, row_group_size=64)
        out["parquet"] = path
    return out


def main(argv=None) -> dict:
    p = common.parser(__doc__)
    p.add_argument("--backbones", default="vgg16,resnet50,mobilenet,mobilenetv2", help="comma-separated names")
    common.add_fixture_args(p, n=400)
    p.add_argument("--runtimes", default="tensorflow,openvino", help="runtimes to measure (default both)")
    p.add_argument("--seconds", type=float, default=8.0, help="time each ceiling at least this long (default 8)")
    p.add_argument("--classic", default="vgg16", help="backbones to also run the classic approach on ('' = none)")
    p.add_argument("--int8", default="", help="backbones to also measure with --precision int8 (OpenVINO + NNCF): "
                                              "its own ceiling, limit and extract run (default none)")
    p.add_argument("--layouts", default="", help="also extract the same JPEGs as webdataset tars and/or parquet "
                                                 "(comma-separated: webdataset,parquet; default none)")
    common.add_output_args(p)
    args = p.parse_args(argv)


    runtimes = [r for r in args.runtimes.split(",") if r and (r != "openvino" or device.openvino_available())]
    # OpenVINO runs a bf16 request in fp32 on a CPU without native bf16 (bneck extract then records
    # fp32), so its row is labelled with what it actually computes.
    ov_float = "bf16" if device.cpu_has_bf16() else "fp32"
    directory, paths = common.jpeg_folder(args.n, 4, size=(256, 256), root=args.fixture_root)
    common.warm_page_cache(paths)
    workers = os.cpu_count() or 2
    result = {"bench": "extract", "env": common.env_info(), "n": args.n, "batch": args.batch,
              "jpeg": "256x256 q90", "input_size": [224, 224], "views": 2, "backbones": {}}
    decode = [decode_rate(paths, workers) for _ in range(2)]
    result["decode_images_per_s"] = round(max(decode), 1)
    for name in [b for b in args.backbones.split(",") if b]:
        common.log(f"== {name}")
        row = {"ceilings": {}}
        for rt in runtimes:
            for precision in (["bf16", "fp32"] if rt == "tensorflow" else [ov_float]):
                c = model_ceiling(name, rt, precision, args.batch, args.seconds)
                row["ceilings"][f"{rt}_{precision}"] = c
                common.log(f"   ceiling {rt} {precision}: {c['images_per_s']} img/s")
        best_key = max(row["ceilings"], key=lambda k: row["ceilings"][k]["images_per_s"])
        best = row["ceilings"][best_key]
        # The best decode rate of the run: decoding measured right after a model was built can
        # be slowed by that model's idle runtime threads, and a lower D would flatter the ratio.
        d = max(decode_rate(paths, workers), result["decode_images_per_s"])
        limit = hardware_limit(best["images_per_s"], d)
        rt, precision = best_key.split("_")
        with tempfile.TemporaryDirectory() as tmp:
            e2e = run_extract(directory, os.path.join(tmp, "f.h5"), name, rt, precision, args.batch)
        steady = e2e["images_per_s_after_startup"]
        row.update({"best_runtime": best_key, "decode_images_per_s": round(d, 1), "limit_images_per_s": round(limit, 2),
                    "extract": {k: e2e[k] for k in ("images_per_s", "images_per_s_after_startup", "startup_seconds",
                                                     "seconds", "peak_rss_mb", "bytes_written")},
                    "ratio_to_limit": round(steady / limit, 3), "features_per_s": round(2 * steady, 2)})
        common.log(f"   extract {steady} img/s after {e2e['startup_seconds']} s start-up; limit {limit:.1f}; "
                   f"ratio {row['ratio_to_limit']}")
        layouts = [x for x in args.layouts.split(",") if x]
        if layouts:
            row["layouts"] = {}
            with tempfile.TemporaryDirectory() as tmp:
                for layout, data in pack_layouts(directory, paths, layouts, tmp).items():
                    e = run_extract(data, os.path.join(tmp, f"{layout}.h5"), name, rt, precision, args.batch)
                    rate = e["images_per_s_after_startup"]
                    row["layouts"][layout] = {"images_per_s_after_startup": rate, "rows": e.get("rows"),
                                              "ratio_to_limit": round(rate / limit, 3),
                                              "ratio_to_folder": round(rate / steady, 3),
                                              "peak_rss_mb": e["peak_rss_mb"]}
                    common.log(f"   {layout}: {rate} img/s; ratio to limit {rate / limit:.3f}, to the folder "
                               f"{rate / steady:.3f}")
        if name in args.classic.split(","):
            import contextlib

            import classic

            with contextlib.redirect_stdout(sys.stderr):  # this script prints ONE JSON object
                c = classic.main(["--backbone", name, "--n", str(args.n), "--batch", str(args.batch)]
                                 + (["--fixture-root", args.fixture_root] if args.fixture_root else []))
            row["classic"] = {"images_per_s": c["images_per_s"], "features_per_s": c["features_per_s"]}
            row["speedup_vs_classic"] = round(steady / c["images_per_s"], 2)
        if name in args.int8.split(",") and "openvino" in runtimes:
            row["int8"] = int8_row(directory, name, d, args)
            if "classic" in row:
                row["int8"]["speedup_vs_classic"] = round(row["int8"]["images_per_s_after_startup"]
                                                          / row["classic"]["images_per_s"], 2)
        result["backbones"][name] = row
    result["peak_rss_mb_bench_process"] = round(common.peak_rss_mb(), 1)
    return common.emit(result)


if __name__ == "__main__":
    main()

"""The GPU device check: every figure the README's GPU section needs, as JSON lines, in one short run.

Run by ``bench/gpu_check.sh`` (which installs what it needs first); each step prints one JSON
line to stdout as soon as it is measured, so a run cut short by its time limit still reports
everything before the cut. Steps:

1. ``system``: what TensorFlow sees (GPU, CUDA, cuDNN) and what ``auto`` picks.
2. ``ceiling``: model-only images/s (both views, uint8 batch already in memory) per backbone,
   fp16 and fp32, XLA on and off, and a batch-size sweep for ResNet50.
3. ``decode``: decode-only images/s of 256-px JPEGs on all cores.
4. ``extract``: end-to-end ``bneck extract`` of ``--n`` generated 256-px JPEGs for ResNet50 and
   MobileNetV2, against the pipeline's limit 1 / (1/C + 1/D) (C: the best ceiling in img/s with
   both views, D: the decode rate).
5. ``oom``: ``bneck extract --batch-size`` far beyond the card's memory: the extractor must halve
   its compute batch on ``ResourceExhaustedError`` and finish with every row once.

    python bench/gpu_check.py                         # the full check (about 6 minutes on an H200)
    python bench/gpu_check.py --quick                 # tiny sizes: a smoke test of the script on a CPU
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def line(step: str, **fields) -> dict:
    """Print one JSON line for ``step`` and return it."""
    row = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **fields}
    print(json.dumps(row, default=str), flush=True)
    return row


def ceiling(backbone, precision, xla, batch, seconds, input_size) -> dict:
    """One model-only ceiling, in this process (one TensorFlow import for all of them)."""
    import model_ceiling

    argv = ["--backbone", backbone, "--precision", precision, "--batch", str(batch), "--seconds", str(seconds),
            "--input-size", str(input_size), "--min-batches", "3", "--warmup", "2"] + (["--xla"] if xla else [])
    with contextlib.redirect_stdout(sys.stderr):  # model_ceiling prints its own JSON; ours is the line
        r = model_ceiling.main(argv)
    return {k: r[k] for k in ("images_per_s", "features_per_s", "ms_per_call_median", "build_seconds") if k in r}


def main(argv=None) -> int:
    p = common.parser(__doc__, epilog_from=2)
    p.add_argument("--backbones", default="vgg16,resnet50,mobilenetv2,efficientnetb0",
                   help="ceilings for these registry names (default: vgg16,resnet50,mobilenetv2,efficientnetb0)")
    p.add_argument("--e2e", default="resnet50,mobilenetv2", help="end-to-end extract for these (default resnet50,"
                   "mobilenetv2)")
    p.add_argument("--n", type=int, default=20000, help="generated 256-px JPEGs, end to end (default 20000)")
    p.add_argument("--batch", type=int, default=256, help="batch size of ceilings and extracts (default 256)")
    p.add_argument("--sweep", default="64,128,256,512", help="ResNet50 fp16 batch sizes to sweep (default 64..512)")
    p.add_argument("--seconds", type=float, default=4.0, help="time each ceiling at least this long (default 4)")
    p.add_argument("--input-size", type=int, default=224, help="model input side (default 224)")
    p.add_argument("--oom-batch", type=int, default=32768, help="batch size of the OOM back-off run (default 32768)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and one precision: check the script on a CPU")
    args = p.parse_args(argv)
    precisions = ["fp16", "fp32"]
    if args.quick:
        args.backbones, args.e2e, args.n, args.batch, args.sweep = "mobilenetv2", "mobilenetv2", 64, 16, "8,16"
        args.seconds, args.input_size, args.oom_batch, precisions = 0.5, 64, 64, ["fp32"]
    t0 = time.time()
    from features.mapper.system import system_info

    info = line("system", **system_info())
    gpu = bool(info["gpus"])
    best: dict[str, float] = {}
    for name in [b for b in args.backbones.split(",") if b]:
        for precision in precisions:
            for xla in (True, False):
                try:
                    r = ceiling(name, precision, xla, args.batch, args.seconds, args.input_size)
                except Exception as exc:  # noqa: BLE001 - one failed config must not end the check
                    line("ceiling", backbone=name, precision=precision, xla=xla, batch=args.batch, error=repr(exc))
                    continue
                line("ceiling", backbone=name, precision=precision, xla=xla, batch=args.batch, **r)
                if r["images_per_s"] > best.get(name, (0,))[0]:
                    best[name] = (r["images_per_s"], precision, xla)
    for batch in [int(b) for b in args.sweep.split(",") if b]:
        try:
            r = ceiling("resnet50" if not args.quick else "mobilenetv2", precisions[0], True, batch, args.seconds,
                        args.input_size)
            line("ceiling_sweep", backbone="resnet50" if not args.quick else "mobilenetv2", precision=precisions[0],
                 xla=True, batch=batch, **r)
        except Exception as exc:  # noqa: BLE001
            line("ceiling_sweep", batch=batch, error=repr(exc))
    import decode as decode_bench

    with contextlib.redirect_stdout(sys.stderr):
        d = decode_bench.main(["--n", str(min(args.n, 2000)), "--large-n", "0", "--workers", str(os.cpu_count() or 2),
                               "--size", str(args.input_size), "--repeat", "2"])
    rate = d["small_256"]["images_per_s"]
    line("decode", workers=os.cpu_count(), size=args.input_size, **d["small_256"])
    directory, _paths = common.jpeg_folder(args.n, 4, size=(256, 256))
    for name in [b for b in args.e2e.split(",") if b]:
        c, precision, xla = best.get(name, (None, precisions[0], True))
        flags = ["--backbone", name, "--weights", "none", "--runtime", "tensorflow", "--precision", precision,
                 "--xla", "on" if xla else "off", "--batch-size", str(args.batch), "--input-size", str(args.input_size)]
        with tempfile.TemporaryDirectory() as tmp:
            e = common.run_bneck_extract(directory, os.path.join(tmp, "f.h5"), flags)
        steady = e.get("images_per_s_after_startup")
        limit = 1 / (1 / c + 1 / rate) if c and rate else None
        line("extract", backbone=name, n=args.n, precision=precision, xla=xla, batch=args.batch,
             images_per_s=e.get("images_per_s"), images_per_s_after_startup=steady,
             startup_seconds=e.get("startup_seconds"), peak_rss_mb=e.get("peak_rss_mb"),
             ceiling_images_per_s=c, decode_images_per_s=rate,
             limit_images_per_s=round(limit, 1) if limit else None,
             ratio_to_limit=round(steady / limit, 3) if limit and steady else None)
    with tempfile.TemporaryDirectory() as tmp:
        small, _ = common.jpeg_folder(min(args.n, 2 * args.oom_batch if args.quick else 1024), 4, size=(256, 256))
        flags = ["--backbone", "vgg16", "--weights", "none", "--runtime", "tensorflow", "--precision", "fp32",
                 "--batch-size", str(args.oom_batch), "--input-size", str(args.input_size),
                 "--chunk-rows", str(args.oom_batch)]
        try:
            e = common.run_bneck_extract(small, os.path.join(tmp, "oom.h5"), flags)
        except RuntimeError as exc:  # the back-off failed: the check says so instead of stopping
            e = {"error": str(exc)[-2000:]}
        line("oom", gpu=gpu, requested_batch=args.oom_batch, rows=e.get("rows"), computed=e.get("computed"),
             compute_batch=e.get("compute_batch"), images_per_s=e.get("images_per_s"), error=e.get("error"))
    line("done", seconds=round(time.time() - t0, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

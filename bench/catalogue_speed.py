"""Catalogue speed: model-only ceilings of one backbone per family, both runtimes, fp32 and `auto`.

Runs bench/model_ceiling.py's measurement (uint8 batches already in memory, both views, seeded random
weights, which time like pretrained ones) for each backbone x runtime x precision, side by side in one
run, and prints one JSON object with every row. The end-to-end half of issue 20 (extract against the
pipeline's limit) is bench/extract.py --backbones A,B.

    python bench/catalogue_speed.py
    python bench/catalogue_speed.py --backbones convnexttiny,dinov2_small --seconds 5
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import model_ceiling  # noqa: E402

FAMILIES = "convnexttiny,efficientnetv2s,mobilenetv3large,dinov2_small,siglip_base_patch16_224"


def main(argv=None) -> dict:
    p = common.parser(__doc__)
    p.add_argument("--backbones", default=FAMILIES, help=f"registry names (default {FAMILIES})")
    p.add_argument("--runtimes", default="tensorflow,openvino", help="runtimes (default both)")
    p.add_argument("--precisions", default="fp32,auto", help="precisions (default fp32,auto)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--seconds", type=float, default=8.0, help="time each ceiling at least this long (default 8)")
    args = p.parse_args(argv)
    from features import backbones

    rows = []
    for name in args.backbones.split(","):
        spec = backbones.get(name)
        size = "x".join(map(str, spec.input_size))
        for runtime in args.runtimes.split(","):
            for precision in args.precisions.split(","):
                common.log(f"== {name} {runtime} {precision}")
                try:
                    r = model_ceiling.main(["--backbone", name, "--runtime", runtime, "--precision", precision,
                                            "--input-size", size, "--batch", str(args.batch),
                                            "--seconds", str(args.seconds), "--min-batches", "2"])
                    rows.append({"backbone": name, "runtime": runtime, "precision": r["precision"],
                                 "asked": precision, "images_per_s": r["images_per_s"],
                                 "ms_per_batch": r.get("ms_per_call_median")})
                except Exception as exc:  # a runtime that cannot run an entry is a row, not a crash
                    rows.append({"backbone": name, "runtime": runtime, "asked": precision,
                                 "error": f"{type(exc).__name__}: {exc}"[:300]})
    return common.emit({"bench": "catalogue_speed", "batch": args.batch, "rows": rows})


if __name__ == "__main__":
    main()

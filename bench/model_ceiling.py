"""Model-only ceiling: images/s of the stage-one extractor on a uint8 batch already in memory.

No decoding, no disk, no HDF5: this is the most stage one can ever do on this machine with
this backbone, precision, batch size and runtime. Both views (original + mirror) are computed
per image unless --no-flip, so features/s = 2 x images/s. Weights are seeded random
(``--weights none``), which time exactly like ImageNet weights and never download.

    python bench/model_ceiling.py --backbone vgg16 --precision bf16 --runtime openvino
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def main(argv=None) -> dict:
    p = common.parser(__doc__)
    common.add_model_args(p)
    p.add_argument("--seconds", type=float, default=15.0, help="time at least this long (default 15)")
    p.add_argument("--min-batches", type=int, default=3, help="and at least this many batches (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches first (default 2)")
    args = p.parse_args(argv)

    import numpy as np

    ex, info = common.build_extractor(args.backbone, input_size=args.input_size, batch=args.batch,
                                      precision=args.precision, runtime=args.runtime, layer=args.layer,
                                      pooling=args.pooling, flip=args.flip, seed=args.seed, xla=args.xla)
    common.log(f"built {info['backbone']} {info['runtime']} {info['precision']} in {info['build_seconds']} s")
    h, w = ex.input_size
    x = np.random.default_rng(args.seed).integers(0, 256, (args.batch, h, w, 3), dtype=np.uint8)
    times = common.run_for(common.pipelined_step(ex, x), min_seconds=args.seconds, min_iters=args.min_batches,
                           warmup=args.warmup)
    s = common.summarize(times, args.batch)
    views = 2 if args.flip else 1
    result = {"bench": "model_ceiling", **info, **s, "images_per_s": s["items_per_s"],
              "features_per_s": round(s["items_per_s"] * views, 2), "views_per_image": views}
    del result["items_per_s"]
    common.log(f"{result['images_per_s']} img/s, {result['features_per_s']} features/s "
               f"({s['ms_per_call_median']} ms per batch of {args.batch})")
    return common.emit(result)


if __name__ == "__main__":
    main()

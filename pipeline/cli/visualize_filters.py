"""``bneck visualize-filters``: what a layer's filters respond to, by gradient ascent, as a grid PNG."""

from __future__ import annotations

from pipeline.cli.errors import UsageError
from pipeline.cli.jsonout import json_text
from pipeline.cli.types import positive_float, positive_int

HELP = "render what a layer's filters respond to (gradient ascent)"
DESCRIPTION = ("Maximise each filter's mean activation by gradient ascent on the input image (normalised "
               "gradients, from grey + noise) and write the results as a grid PNG.")


def add_arguments(p) -> None:
    p.add_argument("--backbone", required=True, help="backbone name (see `bneck backbones`)")
    p.add_argument("--layer", required=True, help="layer name (see `bneck backbones --summary NAME`)")
    p.add_argument("--filters", default="0-15", help="filter indices, e.g. 0-15 or 3,7,9-11 (default 0-15)")
    p.add_argument("-o", "--output", required=True, help="grid PNG to write")
    p.add_argument("--weights", default="imagenet",
                   help="imagenet, none (random, seeded, BatchNorm statistics calibrated), auto, none-raw (random, "
                        "uncalibrated), or a weights file (default imagenet)")
    p.add_argument("--seed", type=int, default=0, help="seed of the start noise and of --weights none (default 0)")
    p.add_argument("--steps", type=positive_int, default=30, help="gradient-ascent steps (default 30)")
    p.add_argument("--size", type=positive_int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--step", type=positive_float, default=2.0, help="step size in pixel levels per step (default 2.0)")
    p.add_argument("--json", action="store_true", help="print path, grid size and start/end activations as JSON")


def check(args) -> None:
    """``--filters`` and the backbone name are checked before TensorFlow is imported."""
    from features import backbones
    from pipeline.tools.filters import parse_filters

    try:
        parse_filters(args.filters)
        backbones.get(args.backbone)
    except (ValueError, KeyError) as exc:
        raise UsageError(exc.args[0]) from None


def run(args) -> int:
    from pipeline.tools.filters import visualize_filters

    r = visualize_filters(args.backbone, args.layer, args.filters, args.output, weights=args.weights,
                          steps=args.steps, size=args.size, step=args.step, seed=args.seed)
    start, end = r["activations"][0], r["activations"][-1]
    if args.json:
        print(json_text({k: v for k, v in r.items() if k != "activations"} | {"start": start, "end": end}))
    else:
        print(f"{len(r['filters'])} filters of {args.layer} -> {r['path']} ({r['grid_size'][0]}x{r['grid_size'][1]}); "
              f"mean activation {sum(start) / len(start):.4g} -> {sum(end) / len(end):.4g}")
    return 0

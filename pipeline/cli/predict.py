"""``bneck predict``: new images through the stitched backbone and head, one line per image."""

from __future__ import annotations

import sys

from pipeline.cli.command import Command
from pipeline.cli.jsonout import json_text
from pipeline.cli.model_args import add_model_args, model_options
from pipeline.cli.types import positive_int


def add_arguments(p) -> None:
    p.add_argument("model", help="model directory from `bneck train` or `bneck finetune`")
    p.add_argument("inputs", nargs="+", help="image files or directories (searched recursively)")
    p.add_argument("--top-k", type=positive_int, default=5, help="classes to report per image (default 5)")
    p.add_argument("--tta-flip", action="store_true", help="average the original and mirrored predictions")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per model call (default 32)")
    p.add_argument("--json", action="store_true", help="JSON lines: path plus label/scores, or image_size and targets "
                   "(keypoints in each image's own pixels)")
    add_model_args(p)


def run(args) -> int:
    from pipeline.serve.predict import predict

    failed = 0
    for r in predict(args.model, args.inputs, top_k=args.top_k, tta_flip=args.tta_flip, batch_size=args.batch_size,
                       **model_options(args)):
        failed += "error" in r
        if args.json:
            print(json_text(r), flush=True)
        elif "error" in r:
            print(f"{r['path']}\tERROR {r['error']}: {r['detail']}", flush=True)
        elif "label" in r:
            print(f"{r['path']}\t{r['label']}\t" + " ".join(f"{k}={v:.4f}" for k, v in r["scores"].items()), flush=True)
        else:
            print(f"{r['path']}\t" + " ".join(f"{k}={v:.2f}" for k, v in r["targets"].items()), flush=True)
    if failed:
        print(f"bneck: {failed} image(s) could not be decoded", file=sys.stderr)
    return 1 if failed else 0


COMMAND = Command(name="predict", help="run new images through the stitched backbone and head",
                  add_arguments=add_arguments, run=run)

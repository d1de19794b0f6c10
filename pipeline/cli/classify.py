"""``bneck classify``: top-k ImageNet labels from a full backbone with its classifier top."""

from __future__ import annotations

import sys

from pipeline.cli.jsonout import json_text
from pipeline.cli.types import positive_int

HELP = "top-k ImageNet labels from a full backbone with its classifier top"
DESCRIPTION = ("Classify images with the full ImageNet model (include_top=True). Offline, the with-top weights "
               "and imagenet_class_index.json must be in the Keras cache.")


def add_arguments(p) -> None:
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files or directories (searched recursively)")
    p.add_argument("--backbone", required=True, help="backbone name (see `bneck backbones`)")
    p.add_argument("--top-k", type=positive_int, default=5, help="labels per image (default 5)")
    p.add_argument("--weights", default="imagenet",
                   help="imagenet (Keras cache, else download) or a with-top .h5/.weights.h5 file (default imagenet)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per model call (default 16)")
    p.add_argument("--json", action="store_true", help="JSON lines: path plus predictions [{wnid, label, score}]")


def run(args) -> int:
    from pipeline.tools.classify import classify

    failed = 0
    for r in classify(args.inputs, backbone=args.backbone, top_k=args.top_k, weights=args.weights,
                      batch_size=args.batch_size):
        failed += "error" in r
        if args.json:
            print(json_text(r), flush=True)
        elif "error" in r:
            print(f"{r['path']}\tERROR {r['error']}: {r['detail']}", flush=True)
        else:
            print(f"{r['path']}\t" + "  ".join(f"{p['label']} {p['score']:.4f}" for p in r["predictions"]), flush=True)
    if failed:
        print(f"bneck: {failed} image(s) could not be decoded", file=sys.stderr)
    return 1 if failed else 0

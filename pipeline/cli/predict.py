"""``bneck predict``: new images (files, folders, or the rows of a dataset source) through the stitched backbone and
head, or a feature file's cached rows through the head alone; one line per image or row."""

from __future__ import annotations

import sys

from pipeline.cli.errors import UsageError
from pipeline.cli.jsonout import json_text
from pipeline.cli.model_args import add_model_args, model_options
from pipeline.cli.types import positive_int

HELP = ("run new images through the stitched backbone and head, or a feature "
        "file's cached rows through the head")


def add_arguments(p) -> None:
    p.add_argument("model", help="model directory from `bneck train` or `bneck finetune`")
    p.add_argument("inputs", nargs="+", help="image files or directories (searched recursively); dataset sources "
                   "as `bneck extract` detects them (a Kaggle keypoints CSV such as test.csv, a CSV of image paths, "
                   "a list file, .tar shards, .parquet), read with their defaults, one result per row named by its "
                   "row id; or one HDF5 feature file from `bneck extract` (any task, unlabelled included): its "
                   "cached rows go through the head alone, no backbone is built")
    p.add_argument("--top-k", type=positive_int, default=5, help="classes to report per image (default 5)")
    p.add_argument("--tta-flip", action="store_true", help="average the original and mirrored predictions")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per model call (default 32)")
    p.add_argument("--json", action="store_true", help="JSON lines: path plus label/scores, or image_size and targets "
                   "(keypoints in each image's own pixels); a dataset source's or feature file's lines carry their "
                   "row too")
    add_model_args(p)


def _features_input(args) -> bool:
    from pipeline.serve.predict import is_feature_file

    return any(is_feature_file(p) for p in args.inputs)


def check(args) -> None:
    if _features_input(args) and len(args.inputs) > 1:
        raise UsageError("give one feature file, or image files and directories (not both, not several files)")


def run(args) -> int:
    if _features_input(args):
        from pipeline.serve.predict import predict_features

        results = predict_features(args.model, args.inputs[0], top_k=args.top_k, tta_flip=args.tta_flip,
                                   trust_pickle=args.trust_pickle)
    else:
        from pipeline.serve.predict import predict

        results = predict(args.model, args.inputs, top_k=args.top_k, tta_flip=args.tta_flip,
                          batch_size=args.batch_size, **model_options(args))
    failed = 0
    for r in results:
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


def needs_tensorflow(args) -> bool:
    """Images need the backbone; a feature file needs TensorFlow only for a Keras head."""
    if not _features_input(args):
        return True
    from pipeline.modeldir import needs_tensorflow as head_needs_tensorflow

    return head_needs_tensorflow(args.model)

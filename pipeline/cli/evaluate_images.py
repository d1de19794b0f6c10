"""``bneck evaluate-images``: metrics of any model directory on labelled images, decoded end to end."""

from __future__ import annotations

from pipeline.cli.jsonout import json_text
from pipeline.cli.model_args import add_model_args, model_options
from pipeline.cli.source_args import add_source_args, check_source_args, source_options
from pipeline.cli.types import fraction, positive_int

HELP = "metrics of any model directory on labelled images, end to end"
DESCRIPTION = ("Decode labelled images, run them through the model (fine-tuned, or backbone + head) and report "
               "accuracy or keypoint RMSE.")


def add_arguments(p) -> None:
    p.add_argument("model", help="model directory from `bneck train` or `bneck finetune`")
    p.add_argument("data", help="labelled images: class folder, CSV or Kaggle keypoint CSV")
    p.add_argument("--top-k", type=positive_int, default=5, help="also report top-k accuracy (default 5)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per model call (default 32)")
    p.add_argument("--max-bad-fraction", type=fraction, default=0.05,
                   help="exit 3 when more than this fraction of images cannot be decoded (default 0.05); "
                        "below it they are left out, named on stderr and in the JSON's bad_images")
    p.add_argument("--json", action="store_true", help="one JSON object; headline accuracy or rmse_px at top level")
    add_model_args(p)
    add_source_args(p)


def run(args) -> int:
    from pipeline.evaluate import format_report
    from pipeline.serve.evaluate_images import evaluate_on_images

    r = evaluate_on_images(args.model, args.data, top_k=args.top_k, batch_size=args.batch_size,
                           source=source_options(args, drop_unset=True), max_bad_fraction=args.max_bad_fraction,
                           **model_options(args))
    print(json_text(r) if args.json else format_report({**r, "features": r["data"],
                                                           "n_invalid_skipped": r["n_bad_skipped"]}))
    return 0


check = check_source_args

"""``bneck evaluate``: metrics of a trained model on a feature file."""

from __future__ import annotations

from pipeline.cli.command import Command
from pipeline.cli.jsonout import json_text
from pipeline.cli.types import positive_int


def add_arguments(p) -> None:
    p.add_argument("model", help="model directory from `bneck train`")
    p.add_argument("features", help="HDF5 feature file made with the same backbone settings")
    p.add_argument("--top-k", type=positive_int, default=5, help="also report top-k accuracy (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object; headline accuracy or rmse_px at top level")


def run(args) -> int:
    from pipeline.evaluate import evaluate, format_report

    result = evaluate(args.model, args.features, top_k=args.top_k)
    print(json_text(result) if args.json else format_report(result))
    return 0


def needs_tensorflow(args) -> bool:
    """Only a Keras head needs TensorFlow: a scikit-learn model is scored in a fraction of the time and memory."""
    from pipeline.modeldir import needs_tensorflow as head_needs_tensorflow

    return head_needs_tensorflow(args.model)


COMMAND = Command(name="evaluate", help="metrics of a trained model on a feature file",
                  add_arguments=add_arguments, run=run, tensorflow=needs_tensorflow)

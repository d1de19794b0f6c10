"""``bneck evaluate``: metrics of a trained model on a feature file."""

from __future__ import annotations

import logging
import os

from pipeline.cli.jsonout import json_text
from pipeline.cli.model_args import add_model_args, model_options
from pipeline.cli.report import check_output
from pipeline.cli.types import positive_int

log = logging.getLogger("bneck")

HELP = "metrics of a trained model on a feature file"


def add_arguments(p) -> None:
    p.add_argument("model", help="model directory from `bneck train`")
    p.add_argument("features", help="HDF5 feature file made with the same backbone settings")
    p.add_argument("--top-k", type=positive_int, default=5, help="also report top-k accuracy (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object; headline accuracy or rmse_px at top level")
    add_model_args(p, weights=False)
    p.add_argument("--report", metavar="DIR", help="also write the model's HTML page (as `bneck report`) to DIR: "
                   "new, empty, or an earlier report; the metrics are the same")


def check(args) -> None:
    if args.report is not None:
        check_output(args.report)


def needs_tensorflow(args) -> bool:
    """Keras heads only: a scikit-learn head is scored without importing TensorFlow."""
    from pipeline.modeldir import needs_tensorflow as head_needs_tensorflow

    return head_needs_tensorflow(args.model)


def run(args) -> int:
    from pipeline.evaluate import evaluate, format_report

    if args.report is None:
        result = evaluate(args.model, args.features, top_k=args.top_k, **model_options(args))
    else:  # scored once: the page's figures are the ones printed
        from pipeline.tools.report_html import write_report

        result = write_report([(args.model, args.features)], args.report, top_k=args.top_k, progress=False,
                              **model_options(args))[0].result
        log.info("report: %s", os.path.abspath(os.path.join(args.report, "index.html")))
    print(json_text(result) if args.json else format_report(result))
    return 0

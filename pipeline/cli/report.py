"""``bneck report``: a static HTML page per model (curves, confusion matrix, wrong images, keypoints on faces).

The inputs are model directories, each group followed by the feature file to score them on:
``bneck report m_svm m_dense digits_test.h5 m_faces faces_val.h5 -o report/``. A directory is a
model, anything else a feature file; several models make a comparison page.
"""

from __future__ import annotations

import logging
import os

from pipeline.cli.model_args import add_model_args, model_options
from pipeline.cli.errors import UsageError
from pipeline.cli.types import positive_int

log = logging.getLogger("bneck")

#: Names that say "feature file" even before the file exists (so a typo is named as such).
FEATURE_SUFFIXES = (".h5", ".hdf5", ".hdf")
#: What ``bneck report --gallery`` defaults to (pipeline.tools.report_html.GALLERY, not imported for --help).
DEFAULT_GALLERY = 24

HELP = "an HTML page per model: curves, confusion matrix, wrong images, keypoints"
DESCRIPTION = ("Score model directories on feature files (as `bneck evaluate` does) and write a "
               "static, self-contained HTML report: index.html plus PNGs, no script, no server. "
               "Several models give a comparison page with each model's own page linked.")


def add_arguments(p) -> None:
    p.add_argument("inputs", nargs="+", metavar="MODEL_DIR... FEATURES.h5",
                   help="model directories from `bneck train`, then the feature file to score them on; repeat "
                        "the pattern for another feature file (m1 m2 test.h5 m3 val.h5)")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="the report folder: new, empty, or an earlier bneck report (whose files are replaced)")
    p.add_argument("--top-k", type=positive_int, default=5, help="also report top-k accuracy (default 5)")
    p.add_argument("--gallery", type=positive_int, default=DEFAULT_GALLERY,
                   help=f"thumbnails per gallery: worst-misclassified images, typical and worst faces "
                        f"(default {DEFAULT_GALLERY})")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_model_args(p, weights=False)


def model_pairs(inputs) -> list[tuple[str, str]]:
    """``(model_dir, features)`` for every model named on the command line; UsageError for a malformed list.

    An existing directory is a model (it must hold model.json), an existing file or a name ending in
    .h5/.hdf5/.hdf a feature file (it must exist), any other missing path a model directory (running
    then fails naming it, exit 1). Every feature file applies to the models since the previous one.
    """
    pairs: list[tuple[str, str]] = []
    models: list[str] = []
    for p in inputs:
        if os.path.isdir(p):
            if not os.path.isfile(os.path.join(p, "model.json")):
                raise UsageError(f"{p}: a directory without model.json, not a model directory from `bneck train`")
            models.append(p)
        elif os.path.isfile(p) or p.lower().endswith(FEATURE_SUFFIXES):
            if not os.path.exists(p):
                raise UsageError(f"{p}: no such feature file")
            if not models:
                raise UsageError(f"{p}: a feature file with no model directory before it "
                                 "(write MODEL_DIR [MODEL_DIR...] FEATURES.h5)")
            pairs += [(m, p) for m in models]
            models = []
        else:
            models.append(p)
    if models:
        raise UsageError(f"no feature file after {models[-1]}: name the feature file to score "
                         f"{'it' if len(models) == 1 else 'them'} on last (MODEL_DIR [MODEL_DIR...] FEATURES.h5)")
    return pairs


def check_output(output) -> None:
    """UsageError unless ``output`` may hold a report (absent, empty, or an earlier bneck report)."""
    from pipeline.tools import report_html

    try:
        report_html.check_output(output)
    except report_html.ReportError as exc:
        raise UsageError(str(exc)) from None


def check(args) -> None:
    model_pairs(args.inputs)
    check_output(args.output)


def needs_tensorflow(args) -> bool:
    """Only Keras heads (and specialists over dense heads) need TensorFlow; scikit-learn heads never import it."""
    from pipeline.modeldir import needs_tensorflow as head_needs_tensorflow

    return any(head_needs_tensorflow(p) for p in args.inputs if os.path.isdir(p))


def run(args) -> int:
    from pipeline.modeldir import read_model_json
    from pipeline.tools.report_html import write_report
    from pipeline.tools.report_plots import require_matplotlib

    pairs = model_pairs(args.inputs)
    require_matplotlib()  # says how to install it, before anything is scored
    for model in dict.fromkeys(m for m, _f in pairs):  # a missing or broken model fails now, not after the others
        read_model_json(model)
    runs = write_report(pairs, args.output, top_k=args.top_k, gallery=args.gallery, progress=args.progress,
                        **model_options(args))
    page = os.path.abspath(os.path.join(args.output, "index.html"))
    log.info("report of %d model%s written to %s", len(runs), "s" if len(runs) > 1 else "", args.output)
    print(page)
    return 0

"""``bneck upgrade-model``: rewrite a model directory whose head is a pickle (``head.joblib``) in the safe format."""

from __future__ import annotations

from pipeline.cli.errors import UsageError
from pipeline.cli.jsonout import json_text
from pipeline.cli.model_args import TRUST_PICKLE_HELP

HELP = "rewrite a model directory's pickled head (head.joblib) in the safe format"
DESCRIPTION = ("Rewrite a model directory written before format 2, whose scikit-learn head is a pickle "
               "(head.joblib), with the head's safe format (plain arrays for linear heads, else head.skops with its "
               "types checked on load). Loading the "
               "pickle runs its code, so it needs the --trust-pickle flag; the new head must predict exactly what the "
               "pickle does on random rows before anything is replaced. Other files and metadata are kept.")
TENSORFLOW = False


def add_arguments(p) -> None:
    p.add_argument("model", help="model directory to upgrade (replaced atomically unless -o is given)")
    p.add_argument("-o", "--output", help="write the upgraded copy here instead of replacing MODEL")
    p.add_argument("--overwrite", action="store_true", help="replace an existing -o model directory")
    p.add_argument("--trust-pickle", action="store_true",
                   help="required for a head.joblib: upgrading loads it, and " + TRUST_PICKLE_HELP.split(": ", 1)[1])
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def check(args) -> None:
    if args.overwrite and not args.output:
        raise UsageError("--overwrite applies to -o OUTPUT only (MODEL itself is always replaced atomically)")


def run(args) -> int:
    from pipeline.modeldir import upgrade_model_dir

    report = upgrade_model_dir(args.model, trust_pickle=args.trust_pickle, output=args.output,
                               overwrite=args.overwrite)
    if args.json:
        print(json_text(report))
    elif report["upgraded"]:
        print(f"upgraded {args.model}: {report['head_loader']} -> {report['new_head_loader']} "
              f"(format {report['format_version']}) -> {report['output']}")
    else:
        print(f"{args.model}: {report['reason']}")
    return 0

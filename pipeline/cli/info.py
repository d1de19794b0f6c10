"""``bneck info``: shapes, counts, provenance attrs and bad rows of a feature file."""

from __future__ import annotations

from pipeline.cli.errors import UsageError
from pipeline.cli.jsonout import json_text
from pipeline.cli.types import non_negative_int

HELP = "show shapes, counts, provenance attrs and bad rows of a feature file"


def add_arguments(p) -> None:
    p.add_argument("file", nargs="?", help="HDF5 feature file written by `bneck extract`")
    p.add_argument("--system", action="store_true",
                   help="instead: this machine as stage one sees it: GPUs, CUDA and cuDNN TensorFlow sees, CPU "
                        "features, and what --runtime/--precision/--xla auto pick here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--max-bad", type=non_negative_int, default=20, help="bad rows to list (default 20)")


def check(args) -> None:
    if bool(args.file) == bool(args.system):
        raise UsageError("give a feature file, or --system (not both)")


def run(args) -> int:
    if args.system:
        from features.mapper.system import format_system_info, system_info

        info = system_info()
        print(json_text(info, indent=1) if args.json else format_system_info(info))
        return 0
    from features.fileinfo import describe_file, format_info

    info = describe_file(args.file, max_bad=args.max_bad)
    print(json_text(info, indent=1) if args.json else format_info(info))
    return 0


def needs_tensorflow(args) -> bool:
    return args.system

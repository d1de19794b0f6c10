"""``bneck export``: backbone + preprocessing + head as one Keras, SavedModel or TFLite model."""

from __future__ import annotations

from pipeline.cli.errors import UsageError
from pipeline.cli.jsonout import json_text
from pipeline.cli.model_args import add_model_args, model_options

HELP = "export backbone + preprocessing + head as one model"


def add_arguments(p) -> None:
    p.add_argument("model", help="model directory from `bneck train` or `bneck finetune`")
    p.add_argument("-o", "--output", required=True,
                   help="output file (.keras/.tflite) or directory (savedmodel, dir)")
    p.add_argument("--format", choices=["keras", "savedmodel", "tflite", "dir"], default="keras",
                   help="export format (default keras); dir: a checked copy of the model directory to share")
    p.add_argument("--bundle-weights", action="store_true",
                   help="with --format dir: copy the backbone weights file (found by sha256) into the copy, so it "
                        "works on a machine without it")
    p.add_argument("--any-size", action="store_true",
                   help="keras/savedmodel: the model takes uint8 RGB images of any size and resizes them itself "
                        "(bilinear, antialiased, like bneck), so an app needs no copy of bneck's decoder")
    p.add_argument("--quantize", choices=["float16", "int8"], help="TFLite quantisation (int8 uses training images)")
    p.add_argument("--representative", nargs="+", metavar="IMAGE",
                   help="image files or directories for int8 calibration and for the check after export "
                        "(default: training images for int8, else seeded random pixels for the check)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file or SavedModel directory")
    p.add_argument("--json", action="store_true", help="print the export report as JSON")
    add_model_args(p)


def check(args) -> None:
    if args.bundle_weights and args.format != "dir":
        raise UsageError("--bundle-weights applies to --format dir only")
    if args.format == "dir" and (args.quantize or args.representative or args.any_size):
        raise UsageError("--quantize, --representative and --any-size do not apply to --format dir")
    if args.any_size and args.format == "tflite":
        raise UsageError("--any-size applies to --format keras or savedmodel: its antialiased resize is not a "
                         "TFLite builtin op")


def run(args) -> int:
    from pipeline.serve.export import export

    report = export(args.model, args.output, format=args.format, quantize=args.quantize,
                    representative_images=args.representative, overwrite=args.overwrite,
                    bundle_weights=args.bundle_weights, any_size=args.any_size,
                    **model_options(args))
    print(json_text(report) if args.json else " ".join(f"{k}={v}" for k, v in report.items()))
    return 0

"""``bneck export``: backbone + preprocessing + head as one Keras, SavedModel or TFLite model."""

from __future__ import annotations

from pipeline.cli.command import Command
from pipeline.cli.jsonout import json_text
from pipeline.cli.model_args import add_model_args, model_options


def add_arguments(p) -> None:
    p.add_argument("model", help="model directory from `bneck train` or `bneck finetune`")
    p.add_argument("-o", "--output", required=True, help="output file (.keras/.tflite) or directory (savedmodel)")
    p.add_argument("--format", choices=["keras", "savedmodel", "tflite"], default="keras",
                   help="export format (default keras)")
    p.add_argument("--quantize", choices=["float16", "int8"], help="TFLite quantisation (int8 uses training images)")
    p.add_argument("--representative", nargs="+", metavar="IMAGE",
                   help="image files or directories for int8 calibration and for the check after export "
                        "(default: training images for int8, else seeded random pixels for the check)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file or SavedModel directory")
    p.add_argument("--json", action="store_true", help="print the export report as JSON")
    add_model_args(p)


def run(args) -> int:
    from pipeline.serve.export import export

    report = export(args.model, args.output, format=args.format, quantize=args.quantize,
                    representative_images=args.representative, overwrite=args.overwrite,
                    **model_options(args))
    print(json_text(report) if args.json else " ".join(f"{k}={v}" for k, v in report.items()))
    return 0


COMMAND = Command(name="export", help="export backbone + preprocessing + head as one model",
                  add_arguments=add_arguments, run=run)

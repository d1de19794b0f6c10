"""The ``bneck`` command line: thin argparse wrappers, each one call into the Python API.

Exit codes (for Makefiles and batch schedulers): 0 done (or already done), 1 error,
2 usage error, 3 too many bad images (chunks kept), 130 interrupted, 143 terminated (resumable).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from features.names import escape_unencodable_output
from pipeline.cli.jsonout import json_text
from pipeline.cli.source_args import add_source_args
from pipeline.cli.types import fraction, non_negative_float, non_negative_int, positive_int

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter hides our messages

log = logging.getLogger("bneck")

#: Commands that import TensorFlow late or never: `extract` reads (and checks) its dataset first,
#: so a malformed CSV fails in milliseconds; the backbone build imports TF quietly itself. A command
#: may also decide per call with ``needs_tensorflow(args)`` (`train` with a scikit-learn head: never).
_NO_TENSORFLOW = {"info", "merge", "extract"}

EXIT_ERROR, EXIT_USAGE, EXIT_BAD_IMAGES, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 3, 130, 143


class UsageError(Exception):
    """Flags that argparse alone cannot check together (e.g. ``-o`` without ``--plot``): exit 2."""


def _add_extract(sub) -> None:
    from features.backbones import REGISTRY
    from features.mapper.int8 import DEFAULT_IMAGES as DEFAULT_CALIBRATION_IMAGES

    p = sub.add_parser("extract", help="stage one: run a frozen backbone over DATA and cache features in HDF5",
                       description="Extract bottleneck features of every image and of its horizontal mirror "
                                   "into one HDF5 file. Resumable: rerun the same command after a kill.")
    p.add_argument("data", help="image folder DATA/<class>/<image>, a CSV, a Kaggle keypoint CSV, or a list file")
    p.add_argument("-o", "--output", required=True, help="output HDF5 file (written atomically)")
    p.add_argument("--backbone", default="vgg16", help=f"backbone name: {', '.join(REGISTRY)} (default vgg16)")
    p.add_argument("--layer", help="bottleneck layer (default: the backbone's last conv/pool block)")
    p.add_argument("--input-size", help="N or HxW (default: the backbone's; e.g. 96 for 96x96 keypoint faces)")
    p.add_argument("--pooling", choices=["none", "avg", "max"], default="none",
                   help="pool the map at extraction (default none: keep the full map)")
    p.add_argument("--weights", default="imagenet",
                   help="imagenet (Keras cache/download), none (random, seeded), auto (imagenet if available, "
                        "else random, loudly), or a .weights.h5/.h5 file (default imagenet)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init for --weights none/auto (default 0)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16", "int8"], default="auto",
                   help="auto: bf16 on bf16-capable CPUs, fp16 on GPUs, else fp32; int8: OpenVINO model quantized "
                        "with NNCF, calibrated on this dataset (extra: pip install 'bneck[int8]') (default auto)")
    p.add_argument("--calibration-images", type=positive_int, default=DEFAULT_CALIBRATION_IMAGES, metavar="N",
                   help="--precision int8: images spread evenly over the whole dataset (never one shard) that "
                        f"calibrate the quantization (default {DEFAULT_CALIBRATION_IMAGES})")
    p.add_argument("--calibrate-on", metavar="DATA",
                   help="--precision int8: calibrate on another dataset, e.g. the training set when extracting the "
                        "test set, so both files come from the same int8 model (default: DATA itself)")
    p.add_argument("--store-dtype", choices=["float16", "float32"], default="float16",
                   help="dtype of the stored features (default float16)")
    p.add_argument("--no-flip", dest="flip", action="store_false",
                   help="extract the original view only (default: original and horizontal mirror)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per model call (default 32)")
    p.add_argument("--chunk-rows", type=positive_int, help="rows per committed chunk, a multiple of --batch-size "
                                                  "(default 8 batches); a kill loses at most one chunk")
    p.add_argument("--shard", metavar="I/N", help="extract only shard I of N (0-based); writes OUT.shard-I-of-N.h5")
    p.add_argument("--overwrite", action="store_true", help="discard an existing output or partial run and redo it")
    p.add_argument("--max-bad-fraction", type=fraction, default=0.05,
                   help="exit 3 when more than this fraction of images cannot be decoded (default 0.05)")
    p.add_argument("--workers", type=positive_int, help="decode threads (default: one per core)")
    p.add_argument("--runtime", choices=["auto", "tensorflow", "openvino"], default=None,
                   help="auto: OpenVINO on a CPU when the [openvino] extra is installed, else TensorFlow "
                        "(default $BNECK_RUNTIME or auto)")
    p.add_argument("--xla", choices=["auto", "on", "off"], default="auto",
                   help="--runtime tensorflow: compile the model with XLA; auto = on with a GPU only, because on "
                        "CPUs it measured slower (bench/model_ceiling.py --xla) (default auto)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this machine (default); ray: shards on a Ray cluster, merged into the output "
                        "(optional extra: pip install 'bneck[ray]')")
    p.add_argument("--ray-address", help="--engine ray: cluster to join, auto, HOST:PORT or ray://HOST:10001 "
                                         "(default: start Ray on this machine)")
    p.add_argument("--num-workers", type=positive_int,
                   help="--engine ray: backbone actors (default: one per GPU, else one per 8 CPUs)")
    p.add_argument("--num-gpus-per-worker", type=non_negative_float,
                   help="--engine ray: GPUs per actor, fractions share a GPU "
                        "(default: 1 if the cluster has GPUs, else 0)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_source_args(p)
    p.set_defaults(func=_cmd_extract)


def _cmd_extract(args) -> int:
    from features.config import ExtractConfig
    from features.mapper.runtimes import default_runtime
    from features.runner import extract

    source = {"kind": args.source_kind, "categories": args.categories, "image_root": args.image_root,
              "path_column": args.path_column, "label_column": args.label_column,
              "target_columns": args.target_columns.split(",") if args.target_columns else None}
    cfg = ExtractConfig(
        data=args.data, output=args.output, backbone=args.backbone, layer=args.layer, input_size=args.input_size,
        pooling=args.pooling, weights=args.weights, seed=args.seed, precision=args.precision,
        store_dtype=args.store_dtype, flip=args.flip, batch_size=args.batch_size, chunk_rows=args.chunk_rows,
        shard=args.shard, overwrite=args.overwrite, max_bad_fraction=args.max_bad_fraction, workers=args.workers,
        runtime=args.runtime or default_runtime(), xla=args.xla, progress=args.progress, source=source,
        calibration_images=args.calibration_images, calibrate_on=args.calibrate_on)
    if args.engine == "ray":
        from features.engines.ray import extract_ray

        summary = extract_ray(cfg, address=args.ray_address, num_workers=args.num_workers,
                              num_gpus_per_worker=args.num_gpus_per_worker)
    else:
        summary = extract(cfg)
    print(json_text(summary.as_dict()) if args.json else summary.line())
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="show shapes, counts, provenance attrs and bad rows of a feature file")
    p.add_argument("file", help="HDF5 feature file written by `bneck extract`")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--max-bad", type=non_negative_int, default=20, help="bad rows to list (default 20)")
    p.set_defaults(func=_cmd_info)


def _cmd_info(args) -> int:
    from features.fileinfo import describe_file, format_info

    info = describe_file(args.file, max_bad=args.max_bad)
    print(json_text(info, indent=1) if args.json else format_info(info))
    return 0


def _add_backbones(sub) -> None:
    p = sub.add_parser("backbones", help="list the backbone registry, or show one backbone's layers",
                       description="List the registry; --summary NAME prints every layer of one backbone and "
                                   "--plot NAME draws its graph (both with random weights: nothing is downloaded).")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--summary", metavar="NAME", help="layer table of NAME: name, type, output shape, params; totals")
    g.add_argument("--plot", metavar="NAME", help="draw NAME's graph to -o (needs pydot and Graphviz's dot)")
    p.add_argument("-o", "--output", help="image file for --plot (default NAME.png)")
    p.add_argument("--input-size", help="N or HxW for --summary/--plot (default: the backbone's)")
    p.add_argument("--json", action="store_true", help="print the registry (or the --summary table) as JSON")
    p.set_defaults(func=_cmd_backbones)


def _cmd_backbones(args) -> int:
    from features.backbones import describe

    if args.output and not args.plot:
        raise UsageError("-o/--output is the image file of --plot NAME")
    if args.input_size and not (args.summary or args.plot):
        raise UsageError("--input-size applies to --summary NAME or --plot NAME")
    if args.summary or args.plot:
        from pipeline.tools import filters

        if args.plot:
            print(filters.plot_backbone(args.plot, args.output or f"{args.plot}.png", input_size=args.input_size))
            return 0
        table = filters.layer_table(args.summary, input_size=args.input_size)
        print(json_text(table, indent=1) if args.json else filters.format_layer_table(table))
        return 0
    rows = describe()
    if args.json:
        print(json_text(rows, indent=1))
        return 0
    print(f"{'name':15s} {'input':>9s} {'preprocess':16s} {'default layer':22s} other layers")
    for r in rows:
        others = ", ".join(x for x in r["layers"] if x != r["default_layer"])
        print(f"{r['name']:15s} {'x'.join(map(str, r['input_size'])):>9s} {r['preprocessing']:16s} "
              f"{r['default_layer']:22s} {others}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to check the README against the CLI)."""
    from features import __version__

    parser = argparse.ArgumentParser(prog="bneck", description="Transfer learning with cached bottleneck features.")
    parser.add_argument("--version", action="version", version=f"bneck {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (_add_extract, _add_info, _add_backbones):
        add(sub)
    from pipeline.cli import merge, more, stage2

    stage2.add_commands(sub)
    merge.add_commands(sub)
    more.add_commands(sub)
    return parser


def _setup_logging(args) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="bneck: %(levelname)s: %(message)s" if level != logging.INFO
                        else "bneck: %(message)s", stream=sys.stderr)
    logging.getLogger("bneck").setLevel(level)


def main(argv=None) -> int:
    """Entry point of the ``bneck`` console script; returns the exit code."""
    # A file name that is not UTF-8 must not end a run with UnicodeEncodeError halfway through
    # its output (predict prints one line per image as it goes).
    escape_unencodable_output(sys.stdout, sys.stderr)
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    if args.verbose:
        os.environ["BNECK_TF_LOGS"] = "1"
    elif args.command not in _NO_TENSORFLOW and getattr(args, "needs_tensorflow", lambda a: True)(args):
        from features.quiet import import_tensorflow_quietly

        import_tensorflow_quietly()
    from features.config import TooManyBadImages
    from features.writer.commit import Terminated

    try:
        return args.func(args) or 0
    except UsageError as exc:
        print(f"bneck {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TooManyBadImages as exc:
        log.error("%s", exc)
        return EXIT_BAD_IMAGES
    except Terminated as exc:
        log.error("%s", exc)
        return EXIT_TERMINATED
    except BrokenPipeError:
        # `bneck predict ... | head`: the reader left; stop quietly like other Unix tools.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        if args.command == "extract":
            log.error("interrupted; finished chunks are kept, rerun the same command to resume")
        else:  # every other command writes its output atomically at the end
            log.error("interrupted; nothing was written")
        return EXIT_INTERRUPTED
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        if args.verbose:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        log.error("%s", msg)
        return EXIT_ERROR

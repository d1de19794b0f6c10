"""``bneck extract``: stage one, a frozen backbone over a dataset into one HDF5 feature file."""

from __future__ import annotations

from pipeline.cli.errors import UsageError
from pipeline.cli.jsonout import json_text
from pipeline.cli.source_args import add_source_args, check_source_args, source_options
from pipeline.cli.types import batch_size, fraction, non_negative_float, positive_int

HELP = "stage one: run a frozen backbone over DATA and cache features in HDF5"
DESCRIPTION = ("Extract bottleneck features of every image and of its horizontal mirror into one HDF5 file. "
               "Resumable: rerun the same command after a kill.")
# extract reads (and checks) its dataset first, so a malformed CSV fails in milliseconds;
# the backbone build imports TF quietly itself.
TENSORFLOW = False
INTERRUPTED = "interrupted; finished chunks are kept, rerun the same command to resume"


def add_arguments(p) -> None:
    from features.backbones import REGISTRY
    from features.mapper.int8 import DEFAULT_IMAGES as DEFAULT_CALIBRATION_IMAGES

    p.add_argument("data", help="class folders DATA/<class>/<image>, a folder of images, a CSV, a Kaggle keypoint "
                                "CSV, a list file, webdataset .tar shards or .parquet files (see --source-kind)")
    p.add_argument("-o", "--output", required=True, help="output HDF5 file, a local path (written atomically)")
    p.add_argument("--backbone", default="vgg16",
                   help=f"backbone name, one of the {len(REGISTRY)} of `bneck backbones` (default vgg16)")
    p.add_argument("--layer", help="bottleneck layer (default: the backbone's last conv/pool block)")
    p.add_argument("--input-size", help="N or HxW (default: the backbone's; e.g. 96 for 96x96 keypoint faces)")
    p.add_argument("--pooling", choices=["none", "avg", "max", "mean", "cls"], default="none",
                   help="pool the map at extraction (default none: keep the full map; a vision transformer's is its "
                        "patch grid). Token models (KerasHub) also offer mean (= avg over patches) and cls "
                        "(the class token)")
    p.add_argument("--weights", default="imagenet",
                   help="imagenet (Keras cache/download; for a KerasHub backbone its preset: "
                        "~/.keras/presets/NAME, else KerasHub's download), none (random, seeded; BatchNorm "
                        "statistics calibrated on synthetic images so features keep a sane scale), auto (imagenet "
                        "if available, else none, loudly), none-raw (random without that calibration, the older init "
                        "kept only to reproduce files recorded as none(seed=S)), a .weights.h5/.h5 file, or a "
                        "KerasHub preset directory (default imagenet)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init for --weights none/auto (default 0)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16", "int8"], default="auto",
                   help="auto: fp32 for keypoint/regression targets (bf16 costs them accuracy: bench/quality.py), "
                        "else bf16 on bf16-capable CPUs, fp16 on GPUs, fp32 otherwise; int8: OpenVINO model "
                        "quantized with NNCF, calibrated on this dataset (extra: pip install 'bneck[int8]') "
                        "(default auto)")
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
    p.add_argument("--batch-size", type=batch_size, default=32,
                   help="images per model call, or auto: 256 with a GPU, 32 on a CPU; on a GPU out of memory the "
                        "compute batch halves by itself, rows unchanged (default 32)")
    p.add_argument("--chunk-rows", type=positive_int, help="rows per committed chunk, a multiple of --batch-size "
                                                  "(default 8 batches); a kill loses at most one chunk")
    p.add_argument("--shard", metavar="I/N", help="extract only shard I of N (0-based); writes OUT.shard-I-of-N.h5. "
                   "Rows are split evenly; webdataset sources by whole tars (I*T//N to (I+1)*T//N of T), "
                   "opening no other tar")
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
    p.add_argument("--gpus", metavar="all|N|I,J",
                   help="one worker process per local GPU (all, the first N, or these ids), each on its own "
                        "shards, merged into the output; resumable like a local run (default: one process)")
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


def config(args):
    """The :class:`features.config.ExtractConfig` these flags ask for."""
    from features.config import ExtractConfig
    from features.mapper.runtimes import default_runtime

    return ExtractConfig(
        data=args.data, output=args.output, backbone=args.backbone, layer=args.layer, input_size=args.input_size,
        pooling=args.pooling, weights=args.weights, seed=args.seed, precision=args.precision,
        store_dtype=args.store_dtype, flip=args.flip, batch_size=args.batch_size, chunk_rows=args.chunk_rows,
        shard=args.shard, overwrite=args.overwrite, max_bad_fraction=args.max_bad_fraction, workers=args.workers,
        runtime=args.runtime or default_runtime(), xla=args.xla, progress=args.progress, source=source_options(args),
        calibration_images=args.calibration_images, calibrate_on=args.calibrate_on)


def check(args) -> None:
    """The config's own checks (backbone, --input-size, --shard, --chunk-rows...) as usage errors: exit 2."""
    check_source_args(args)
    try:
        config(args).check()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.gpus is not None:
        from features.engines.gpus import parse_gpus

        if args.engine == "ray" or args.shard:
            raise UsageError("--gpus runs its own shards on this machine; it cannot be combined with "
                             "--engine ray (use --num-gpus-per-worker) or --shard")
        try:
            args.gpus = parse_gpus(args.gpus)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if args.engine != "ray" and (args.ray_address or args.num_workers or args.num_gpus_per_worker is not None):
        raise UsageError("--ray-address, --num-workers and --num-gpus-per-worker apply to --engine ray only")


def run(args) -> int:
    from features.runner import extract

    cfg = config(args)
    if args.engine == "ray":
        from features.engines.ray import extract_ray

        summary = extract_ray(cfg, address=args.ray_address, num_workers=args.num_workers,
                              num_gpus_per_worker=args.num_gpus_per_worker)
    elif args.gpus:
        from features.engines.gpus import extract_gpus

        summary = extract_gpus(cfg, args.gpus)
    else:
        summary = extract(cfg)
    print(json_text(summary.as_dict()) if args.json else summary.line())
    return 0

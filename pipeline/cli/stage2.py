"""Stage-two commands of the CLI: train, evaluate, predict, export. Each is one call into the API."""

from __future__ import annotations

import sys

from pipeline.cli.jsonout import json_text
from pipeline.cli.types import (
    fraction_below_one,
    int_at_least,
    joblib_jobs,
    non_negative_int,
    positive_float,
    positive_int,
)


def add_commands(sub) -> None:
    """Register the stage-two subcommands on ``sub``."""
    for add in (_add_train, _add_evaluate, _add_predict, _add_export):
        add(sub)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="stage two: fit a head on a cached feature file",
                       description="Train a dense, svm, logreg or keypoint-specialists head on HDF5 features "
                                   "and write an atomic model directory.")
    p.add_argument("features", help="HDF5 feature file from `bneck extract`")
    p.add_argument("-o", "--output", required=True, help="model directory to write")
    p.add_argument("--head", choices=["dense", "svm", "logreg", "specialists"], default="dense",
                   help="head type (default dense)")
    p.add_argument("--pooling", choices=["none", "avg", "max"], default="none",
                   help="pool feature maps on load (default none: flatten the full map)")
    p.add_argument("--use-flipped", dest="use_flipped", action="store_true", default=None,
                   help="add mirrored views as training rows (default: on when the file has them)")
    p.add_argument("--no-flipped", dest="use_flipped", action="store_false", help="train on original views only")
    p.add_argument("--val", help="separate validation feature file (default: split --val-split off the training file)")
    p.add_argument("--val-split", type=fraction_below_one, default=0.2,
                   help="validation fraction, stratified for labels, by source row (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the head (default 0)")
    p.add_argument("--memory-budget", default="2GiB",
                   help="load features into RAM below this size, else stream from HDF5 (default 2GiB)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    g = p.add_argument_group("dense head")
    g.add_argument("--units", type=non_negative_int, help="hidden units, 0 for none (default 256)")
    g.add_argument("--dropout", type=fraction_below_one,
                   help="dropout rate (default: 0.5 for classes, 0.1 for regression)")
    g.add_argument("--epochs", type=positive_int, help="maximum epochs (default 30)")
    g.add_argument("--batch-size", type=positive_int, help="batch size (default 64)")
    g.add_argument("--optimizer", choices=["adam", "sgd"], help="adam, or sgd with Nesterov momentum (default adam)")
    g.add_argument("--lr", type=positive_float, dest="learning_rate", help="learning rate (default 1e-3)")
    g.add_argument("--momentum", type=fraction_below_one, help="SGD momentum (default 0.9)")
    g.add_argument("--lr-decay", choices=["auto", "linear", "none"],
                   help="linear LR decay to 1%% over the epochs (default auto: linear for sgd)")
    g.add_argument("--patience", type=non_negative_int,
                   help="early-stopping patience in epochs; best epoch restored (default 8)")
    g.add_argument("--gap", dest="pool", action="store_const", const="gap",
                   help="GlobalAveragePooling instead of Flatten in front of the dense layer")
    g = p.add_argument_group("svm / logreg heads")
    g.add_argument("--C", type=positive_float, dest="C", help="inverse regularisation strength (default 1.0)")
    g.add_argument("--kernel", choices=["linear", "rbf"], help="SVM kernel (default linear: LinearSVC)")
    g.add_argument("--tol", type=positive_float,
                   help="SVM stopping tolerance (default 1e-2 for linear, LIBLINEAR's own; 1e-3 for rbf)")
    g.add_argument("--grid", action="append", metavar="PARAM=V1,V2",
                   help="cross-validated grid search, e.g. --grid C=0.01,0.1,1 (repeatable)")
    g.add_argument("--cv", type=int_at_least(2), default=3, help="grid-search folds (default 3)")
    g.add_argument("--jobs", type=joblib_jobs, default=1, help="parallel joblib workers for grid search / specialists")
    g = p.add_argument_group("keypoint specialists")
    g.add_argument("--groups", help="JSON file {group: [target columns]} (default: the six facial-keypoint groups)")
    g.add_argument("--specialist-base", choices=["ridge", "dense"], default="ridge",
                   help="estimator cloned per group (default ridge)")
    g.add_argument("--alpha", type=positive_float, help="ridge regularisation of the specialists (default 10)")
    p.add_argument("--json", action="store_true", help="print model.json's metrics as one JSON object")
    p.set_defaults(func=_cmd_train, needs_tensorflow=train_needs_tensorflow)


def train_needs_tensorflow(args) -> bool:
    """True when ``bneck train`` fits a Keras head; scikit-learn heads never import TensorFlow."""
    # Importing TF costs memory and time (svm train, tiny file: peak RSS 730 -> 210 MB, 4.5 -> 2.2 s).
    return args.head == "dense" or (args.head == "specialists" and args.specialist_base == "dense")


_DENSE_KEYS = ("units", "dropout", "epochs", "batch_size", "optimizer", "learning_rate", "momentum", "lr_decay",
               "patience", "pool")


def _cmd_train(args) -> int:
    from pipeline.heads import parse_grid
    from pipeline.train import train

    keys = {"dense": _DENSE_KEYS, "svm": ("C", "kernel", "tol"), "logreg": ("C",),
            "specialists": _DENSE_KEYS + ("alpha",) if args.specialist_base == "dense" else ("alpha",)}[args.head]
    params = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    meta = train(args.features, args.output, head=args.head, pooling=args.pooling, use_flipped=args.use_flipped,
                 val=args.val, val_split=args.val_split, seed=args.seed, memory_budget=args.memory_budget,
                 params=params, grid=parse_grid(args.grid) if args.grid else None, cv=args.cv, jobs=args.jobs,
                 groups=args.groups, specialist_base=args.specialist_base, overwrite=args.overwrite)
    m = meta.get("metrics", {})
    if args.json:
        print(json_text({"model": args.output, "head": args.head, **{k: v for k, v in m.items()
                                                                      if not isinstance(v, (dict, list))}}))
    else:
        headline = (f"val accuracy {m['accuracy']:.4f}" if "accuracy" in m else
                    f"val RMSE {m['rmse_px']:.3f} px" if "rmse_px" in m else "no validation rows")
        t = meta["training"]
        print(f"{args.head} head -> {args.output}: {headline}; {t['n_training_samples']} training samples, "
              f"{t['n_invalid_skipped']} invalid rows skipped, {t['seconds']:.1f} s")
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics of a trained model on a feature file")
    p.add_argument("model", help="model directory from `bneck train`")
    p.add_argument("features", help="HDF5 feature file made with the same backbone settings")
    p.add_argument("--top-k", type=positive_int, default=5, help="also report top-k accuracy (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object; headline accuracy or rmse_px at top level")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args) -> int:
    from pipeline.evaluate import evaluate, format_report

    result = evaluate(args.model, args.features, top_k=args.top_k)
    print(json_text(result) if args.json else format_report(result))
    return 0


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="run new images through the stitched backbone and head")
    p.add_argument("model", help="model directory from `bneck train` or `bneck finetune`")
    p.add_argument("inputs", nargs="+", help="image files or directories (searched recursively)")
    p.add_argument("--top-k", type=positive_int, default=5, help="classes to report per image (default 5)")
    p.add_argument("--tta-flip", action="store_true", help="average the original and mirrored predictions")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per model call (default 32)")
    p.add_argument("--json", action="store_true", help="JSON lines: path plus label/scores, or image_size and targets "
                   "(keypoints in each image's own pixels)")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args) -> int:
    from pipeline.serve.predict import predict

    failed = 0
    for r in predict(args.model, args.inputs, top_k=args.top_k, tta_flip=args.tta_flip, batch_size=args.batch_size):
        failed += "error" in r
        if args.json:
            print(json_text(r), flush=True)
        elif "error" in r:
            print(f"{r['path']}\tERROR {r['error']}: {r['detail']}", flush=True)
        elif "label" in r:
            print(f"{r['path']}\t{r['label']}\t" + " ".join(f"{k}={v:.4f}" for k, v in r["scores"].items()), flush=True)
        else:
            print(f"{r['path']}\t" + " ".join(f"{k}={v:.2f}" for k, v in r["targets"].items()), flush=True)
    if failed:
        print(f"bneck: {failed} image(s) could not be decoded", file=sys.stderr)
    return 1 if failed else 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export backbone + preprocessing + head as one model")
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
    p.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    from pipeline.serve.export import export

    report = export(args.model, args.output, format=args.format, quantize=args.quantize,
                    representative_images=args.representative, overwrite=args.overwrite)
    print(json_text(report) if args.json else " ".join(f"{k}={v}" for k, v in report.items()))
    return 0

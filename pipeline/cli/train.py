"""``bneck train``: stage two, fit a head on a cached feature file and write a model directory."""

from __future__ import annotations

import argparse

from pipeline.cli.errors import UsageError
from pipeline.cli.jsonout import json_text
from pipeline.heads import HEAD_NAMES, head_class
from pipeline.cli.types import (
    fraction_below_one,
    int_at_least,
    joblib_jobs,
    non_negative_int,
    positive_float,
    positive_int,
)

HELP = "stage two: fit a head on a cached feature file"
DESCRIPTION = ("Train a dense, svm, logreg or keypoint-specialists head on HDF5 features and write "
               "an atomic model directory.")


def add_arguments(p) -> None:
    p.add_argument("features", help="HDF5 feature file from `bneck extract`")
    p.add_argument("-o", "--output", required=True, help="model directory to write")
    p.add_argument("--head", choices=HEAD_NAMES, default="dense", help="head type (default dense)")
    p.add_argument("--pooling", choices=["none", "avg", "max"], default="none",
                   help="pool feature maps on load (default none: flatten the full map)")
    p.add_argument("--use-flipped", dest="use_flipped", action="store_true", default=None,
                   help="add mirrored views as training rows (default: on when the file has them)")
    p.add_argument("--no-flipped", dest="use_flipped", action="store_false", help="train on original views only")
    p.add_argument("--val", help="separate validation feature file (default: split --val-split off the training file)")
    p.add_argument("--val-split", type=fraction_below_one, default=0.2,
                   help="validation fraction, stratified for labels, by source row: an image and its mirror, or a "
                        "whole group when the file has groups (the frames of one video) (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the head (default 0)")
    p.add_argument("--memory-budget", default="2GiB",
                   help="load features into RAM below this size, else stream from HDF5 (default 2GiB)")
    p.add_argument("--refit", action=argparse.BooleanOptionalAction, default=True,
                   help="after choosing settings on the --val-split rows (epochs, C, alpha), fit the head again on "
                        "every training row; model.json keeps the validation metrics (default --refit)")
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
    g.add_argument("--C", type=positive_float, dest="C",
                   help="inverse regularisation strength (default: chosen by CV from 0.01, 0.1, 1 for "
                        "linear models; 1.0 for --kernel rbf)")
    g.add_argument("--kernel", choices=["linear", "rbf"], help="SVM kernel (default linear: LinearSVC)")
    g.add_argument("--tol", type=positive_float,
                   help="SVM stopping tolerance (default 1e-2 for linear, LIBLINEAR's own; 1e-3 for rbf)")
    g.add_argument("--grid", action="append", metavar="PARAM=V1,V2",
                   help="cross-validated grid search, e.g. --grid C=0.01,0.1,1 (repeatable)")
    g.add_argument("--cv", type=int_at_least(2), default=3,
                   help="grid-search folds, by group when the file has groups (default 3)")
    g.add_argument("--jobs", type=joblib_jobs, default=1, help="parallel joblib workers for grid search / specialists")
    g = p.add_argument_group("keypoint specialists")
    g.add_argument("--groups", help="JSON file {group: [target columns]} (default: the six facial-keypoint groups)")
    g.add_argument("--specialist-base", choices=["ridge", "dense"], default="ridge",
                   help="estimator cloned per group (default ridge)")
    g.add_argument("--alpha", type=positive_float,
                   help="ridge regularisation of the specialists (default: each group's own, chosen by "
                        "RidgeCV's leave-one-out from 1e-3 .. 1e6)")
    p.add_argument("--json", action="store_true", help="print model.json's metrics as one JSON object")


def _options(args) -> dict:
    """The build options of the chosen head that the flags set (the class lists those it takes)."""
    return {"specialist_base": args.specialist_base} if "specialist_base" in head_class(args.head).user_options \
        else {}


def needs_tensorflow(args) -> bool:
    """Whether the chosen head imports TensorFlow (only Keras heads do: the class says)."""
    # Importing TF costs memory and time (svm train, tiny file: peak RSS 730 -> 210 MB, 4.5 -> 2.2 s).
    return head_class(args.head).needs_tensorflow(_options(args))


#: Every head hyper-parameter flag: argparse destination -> the flag as the user typed it.
_PARAM_FLAGS = {"units": "--units", "dropout": "--dropout", "epochs": "--epochs", "batch_size": "--batch-size",
                "optimizer": "--optimizer", "learning_rate": "--lr", "momentum": "--momentum",
                "lr_decay": "--lr-decay", "patience": "--patience", "pool": "--gap", "C": "--C",
                "kernel": "--kernel", "tol": "--tol", "alpha": "--alpha"}


def _given_params(args) -> dict:
    return {k: getattr(args, k) for k in _PARAM_FLAGS if getattr(args, k, None) is not None}


def check(args) -> None:
    """Refuse, before any work, flags the chosen head would ignore and a malformed ``--grid``."""
    from pipeline.heads import check_grid, parse_grid

    cls, options = head_class(args.head), _options(args)
    allowed = cls.applicable_params(options)
    bad = [_PARAM_FLAGS[k] for k in _given_params(args) if k not in allowed]
    what = f"--head {args.head}" + (f" --specialist-base {args.specialist_base}" if options else "")
    if bad:
        takes = ", ".join(_PARAM_FLAGS[k] for k in allowed) or "no hyper-parameter flags"
        raise UsageError(f"{what} does not use {', '.join(bad)}; it takes {takes}")
    if args.grid:
        try:
            grid = parse_grid(args.grid)
        except ValueError as exc:
            raise UsageError(f"--grid: {exc}") from None
        try:
            check_grid(cls(), grid)  # an unfitted head only stores its parameters: cheap
        except ValueError as exc:
            raise UsageError(f"--grid: {exc}") from None
    if args.pool == "gap":
        _check_gap(args)
    if "groups" not in cls.user_options and (args.groups or args.specialist_base != "ridge"):
        raise UsageError(f"--groups and --specialist-base apply to --head specialists, not --head {args.head}")


def _check_gap(args) -> None:
    # Global average pooling needs a spatial map: refuse it on vectors rather than train something else.
    if args.pooling != "none":
        raise UsageError(f"--gap pools the feature map itself; with --pooling {args.pooling} there is no map left")
    try:
        import h5py

        with h5py.File(args.features, "r") as f:
            shape = f["features"].shape[1:]
    except (OSError, KeyError):
        return  # not a readable feature file: train says so with the full story
    if len(shape) != 3:
        raise UsageError(f"--gap needs (h, w, c) feature maps; {args.features} holds pooled features of shape "
                         f"{tuple(shape)} (extracted with --pooling avg/max)")


def run(args) -> int:
    from pipeline.heads import parse_grid
    from pipeline.train import train

    params = _given_params(args)
    meta = train(args.features, args.output, head=args.head, pooling=args.pooling, use_flipped=args.use_flipped,
                 val=args.val, val_split=args.val_split, seed=args.seed, memory_budget=args.memory_budget,
                 params=params, grid=parse_grid(args.grid) if args.grid else None, cv=args.cv, jobs=args.jobs,
                 groups=args.groups, specialist_base=args.specialist_base, refit=args.refit,
                 overwrite=args.overwrite)
    m = meta.get("metrics", {})
    if args.json:
        print(json_text({"model": args.output, "head": args.head, **{k: v for k, v in m.items()
                                                                      if not isinstance(v, (dict, list))}}))
    else:
        headline = (f"val accuracy {m['accuracy']:.4f}" if "accuracy" in m else
                    f"val RMSE {m['rmse_px']:.3f} px" if "rmse_px" in m else "no validation rows")
        t = meta["training"]
        chosen = (f", best of grid {t['grid']['best_params']}" if t.get("grid") else "")
        refit = (f", then refitted on all {t['refit']['n_training_samples']} training samples"
                 if t.get("refit") else "")
        split = t.get("split") or {}
        held = (f" (optimistic: near-duplicates of them, same {split['by']}, are in training)" if split.get("warning")
                else f" (whole {split['by']}s)" if split.get("grouped") and t["n_val_rows"] else "")
        print(f"{args.head} head -> {args.output}: {headline} on {t['n_val_rows']} held-out rows{held}{chosen}; "
              f"{t['n_training_samples']} training samples{refit}, {t['n_invalid_skipped']} invalid rows skipped, "
              f"{t['seconds']:.1f} s")
    return 0

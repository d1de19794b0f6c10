"""CLI for the classic workflows: finetune, evaluate-images, classify, visualize-filters, frames.

Thin argparse wrappers, one call each into :mod:`pipeline.finetune.train`, :mod:`pipeline.tools.classify`,
:mod:`pipeline.tools.filters` and :mod:`pipeline.tools.frames` (imported when the command runs, so ``bneck --help``
stays fast).
"""

from __future__ import annotations

import argparse
import sys

from pipeline.cli.jsonout import json_text
from pipeline.cli.types import fraction, fraction_below_one, int_between, non_negative_int, positive_float, positive_int


def add_commands(sub) -> None:
    """Register the finetune, evaluate-images, classify, visualize-filters and frames subcommands on ``sub``."""
    for add in (_add_finetune, _add_evaluate_images, _add_classify, _add_filters, _add_frames):
        add(sub)


def _source(args) -> dict:
    """The ``read_source`` options given on the command line (the dataset-source group of ``bneck extract``)."""
    return {k: v for k, v in {"kind": args.source_kind, "categories": args.categories,
                              "image_root": args.image_root, "path_column": args.path_column,
                              "label_column": args.label_column,
                              "target_columns": args.target_columns.split(",") if args.target_columns else None,
                              }.items() if v is not None}


def _add_finetune(sub) -> None:
    from pipeline.cli.source_args import add_source_args

    p = sub.add_parser("finetune", help="fine-tune backbone top + head end to end on images",
                       description="Stitch the backbone to a trained head (stage-two weights), unfreeze the top of "
                                   "the backbone and train on decoded, augmented images with SGD. Writes a model "
                                   "directory (the whole network as model.keras) with the best validation epoch.")
    p.add_argument("model", help="model directory from `bneck train` (the starting point)")
    p.add_argument("data", help="training images: class folder DATA/<class>/<image>, a CSV, or a Kaggle keypoint CSV")
    p.add_argument("-o", "--output", required=True, help="model directory to write (atomically, at the end)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--unfreeze", metavar="PREFIX", help="train the backbone layers whose name starts with PREFIX "
                                                        "(comma-separate several), e.g. block5 for VGG16")
    g.add_argument("--unfreeze-last", type=non_negative_int, metavar="N",
                   help="train the last N backbone layers that have weights (0: the head only)")
    p.add_argument("--train-bn", action=argparse.BooleanOptionalAction, default=False,
                   help="let BatchNorm layers in the unfrozen part train and update their statistics "
                        "(default: frozen, inference mode)")
    p.add_argument("--lr", type=positive_float, default=1e-4, help="SGD learning rate (default 1e-4)")
    p.add_argument("--momentum", type=fraction_below_one, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("--epochs", type=positive_int, default=10,
                   help="epochs; the best validation epoch is kept (default 10)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per step (default 32)")
    p.add_argument("--val", help="separate validation images (same kinds as DATA)")
    p.add_argument("--val-split", type=fraction_below_one, default=0.2,
                   help="validation fraction of DATA when --val is not given, stratified for classes (default 0.2)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="random shift/zoom/rotation/flip/brightness/channel shift; for keypoints a flip-aware "
                        "mirror plus brightness/channel shift (default on)")
    p.add_argument("--no-flip", dest="flip", action="store_false",
                   help="no horizontal flips in the augmentation (e.g. for digits or text)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the augmentation and training (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    p.add_argument("--json", action="store_true", help="print the result summary as one JSON object")
    add_source_args(p)
    p.set_defaults(func=_cmd_finetune)


def _cmd_finetune(args) -> int:
    from pipeline.finetune.train import finetune

    meta = finetune(args.model, args.data, args.output, unfreeze=args.unfreeze, unfreeze_last=args.unfreeze_last,
                    train_bn=args.train_bn, lr=args.lr, momentum=args.momentum, epochs=args.epochs,
                    batch_size=args.batch_size, val=args.val, val_split=args.val_split, augment=args.augment,
                    flip=args.flip, seed=args.seed, source=_source(args), overwrite=args.overwrite)
    f, m = meta["finetune"], meta["metrics"]
    key = "accuracy" if meta["task"] == "classification" else "rmse_px"
    if args.json:
        print(json_text({"model": args.output, key: m.get(key), "best_epoch": f["best_epoch"],
                          "epochs": f["epochs"], "seconds": f["seconds"], "val_before": f["val_before"],
                          "trainable_backbone_layers": len(f["trainable_backbone_layers"])}))
    else:
        before = f["val_before"]
        if key not in m:
            head = "no validation rows"
        elif key == "accuracy":
            head = f"val accuracy {m[key]:.4f} ({before['accuracy']:.4f} before fine-tuning)"
        else:
            head = f"val RMSE {m[key]:.3f} px (val_loss {before['loss']:.4g} -> {m['val_loss']:.4g})"
        print(f"finetuned -> {args.output}: {head}, best epoch {f['best_epoch']} of {f['epochs']}, "
              f"{len(f['trainable_backbone_layers'])} backbone layers trained, {f['seconds']:.1f} s")
    return 0


def _add_evaluate_images(sub) -> None:
    from pipeline.cli.source_args import add_source_args

    p = sub.add_parser("evaluate-images", help="metrics of any model directory on labelled images, end to end",
                       description="Decode labelled images, run them through the model (fine-tuned, or backbone + "
                                   "head) and report accuracy or keypoint RMSE.")
    p.add_argument("model", help="model directory from `bneck train` or `bneck finetune`")
    p.add_argument("data", help="labelled images: class folder, CSV or Kaggle keypoint CSV")
    p.add_argument("--top-k", type=positive_int, default=5, help="also report top-k accuracy (default 5)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per model call (default 32)")
    p.add_argument("--max-bad-fraction", type=fraction, default=0.05,
                   help="exit 3 when more than this fraction of images cannot be decoded (default 0.05); "
                        "below it they are left out, named on stderr and in the JSON's bad_images")
    p.add_argument("--json", action="store_true", help="one JSON object; headline accuracy or rmse_px at top level")
    add_source_args(p)
    p.set_defaults(func=_cmd_evaluate_images)


def _cmd_evaluate_images(args) -> int:
    from pipeline.evaluate import format_report
    from pipeline.serve.evaluate_images import evaluate_on_images

    r = evaluate_on_images(args.model, args.data, top_k=args.top_k, batch_size=args.batch_size, source=_source(args),
                           max_bad_fraction=args.max_bad_fraction)
    print(json_text(r) if args.json else format_report({**r, "features": r["data"],
                                                           "n_invalid_skipped": r["n_bad_skipped"]}))
    return 0


def _add_classify(sub) -> None:
    p = sub.add_parser("classify", help="top-k ImageNet labels from a full backbone with its classifier top",
                       description="Classify images with the full ImageNet model (include_top=True). Offline, the "
                                   "with-top weights and imagenet_class_index.json must be in the Keras cache.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files or directories (searched recursively)")
    p.add_argument("--backbone", required=True, help="backbone name (see `bneck backbones`)")
    p.add_argument("--top-k", type=positive_int, default=5, help="labels per image (default 5)")
    p.add_argument("--weights", default="imagenet",
                   help="imagenet (Keras cache, else download) or a with-top .h5/.weights.h5 file (default imagenet)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per model call (default 16)")
    p.add_argument("--json", action="store_true", help="JSON lines: path plus predictions [{wnid, label, score}]")
    p.set_defaults(func=_cmd_classify)


def _cmd_classify(args) -> int:
    from pipeline.tools.classify import classify

    failed = 0
    for r in classify(args.inputs, backbone=args.backbone, top_k=args.top_k, weights=args.weights,
                      batch_size=args.batch_size):
        failed += "error" in r
        if args.json:
            print(json_text(r), flush=True)
        elif "error" in r:
            print(f"{r['path']}\tERROR {r['error']}: {r['detail']}", flush=True)
        else:
            print(f"{r['path']}\t" + "  ".join(f"{p['label']} {p['score']:.4f}" for p in r["predictions"]), flush=True)
    if failed:
        print(f"bneck: {failed} image(s) could not be decoded", file=sys.stderr)
    return 1 if failed else 0


def _add_filters(sub) -> None:
    p = sub.add_parser("visualize-filters", help="render what a layer's filters respond to (gradient ascent)",
                       description="Maximise each filter's mean activation by gradient ascent on the input image "
                                   "(normalised gradients, from grey + noise) and write the results as a grid PNG.")
    p.add_argument("--backbone", required=True, help="backbone name (see `bneck backbones`)")
    p.add_argument("--layer", required=True, help="layer name (see `bneck backbones --summary NAME`)")
    p.add_argument("--filters", default="0-15", help="filter indices, e.g. 0-15 or 3,7,9-11 (default 0-15)")
    p.add_argument("-o", "--output", required=True, help="grid PNG to write")
    p.add_argument("--weights", default="imagenet", help="imagenet, none (random, seeded), auto, or a weights file "
                                                         "(default imagenet)")
    p.add_argument("--seed", type=int, default=0, help="seed of the start noise and of --weights none (default 0)")
    p.add_argument("--steps", type=positive_int, default=30, help="gradient-ascent steps (default 30)")
    p.add_argument("--size", type=positive_int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--step", type=positive_float, default=2.0, help="step size in pixel levels per step (default 2.0)")
    p.add_argument("--json", action="store_true", help="print path, grid size and start/end activations as JSON")
    p.set_defaults(func=_cmd_filters)


def _cmd_filters(args) -> int:
    from pipeline.tools.filters import visualize_filters

    r = visualize_filters(args.backbone, args.layer, args.filters, args.output, weights=args.weights,
                          steps=args.steps, size=args.size, step=args.step, seed=args.seed)
    start, end = r["activations"][0], r["activations"][-1]
    if args.json:
        print(json_text({k: v for k, v in r.items() if k != "activations"} | {"start": start, "end": end}))
    else:
        print(f"{len(r['filters'])} filters of {args.layer} -> {r['path']} ({r['grid_size'][0]}x{r['grid_size'][1]}); "
              f"mean activation {sum(start) / len(start):.4g} -> {sum(end) / len(end):.4g}")
    return 0


def _add_frames(sub) -> None:
    p = sub.add_parser("frames", help="turn videos into a class-folder dataset (every N-th frame as JPEG)",
                       description="Each video's file stem is its class label: DATASET_DIR/<label>/"
                                   "<stem>_<frame:06d>.jpg. Needs the [video] extra (imageio, imageio-ffmpeg).")
    p.add_argument("videos", metavar="VIDEO_DIR", help="directory of video files (.mp4, .avi, .mov, ...)")
    p.add_argument("-o", "--output", required=True, metavar="DATASET_DIR", help="class-folder dataset to write")
    p.add_argument("--every", type=positive_int, default=10,
                   help="keep every N-th frame, starting with frame 0 (default 10)")
    p.add_argument("--quality", type=int_between(1, 95), default=95, help="JPEG quality 1-95 (default 95)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=_cmd_frames)


def _cmd_frames(args) -> int:
    from pipeline.tools.frames import extract_frames

    r = extract_frames(args.videos, args.output, every=args.every, quality=args.quality, progress=args.progress)
    print(json_text(r) if args.json else
          f"{r['videos']} videos -> {r['output']}: {len(r['classes'])} classes, {r['written']} frames written, "
          f"{r['skipped_existing']} already there, {r['skipped_videos']} videos already done"
          + (f"; {len(r['failed'])} could not be decoded" if r["failed"] else ""))
    return 1 if r["failed"] else 0

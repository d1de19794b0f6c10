"""``bneck finetune``: unfreeze the top of the backbone and train it with the head end to end on images."""

from __future__ import annotations

import argparse

from pipeline.cli.jsonout import json_text
from pipeline.cli.model_args import add_model_args, model_options
from pipeline.cli.source_args import add_source_args, check_source_args, source_options
from pipeline.cli.types import fraction_below_one, non_negative_float, non_negative_int, positive_float, positive_int
from pipeline.finetune.data import AUGMENT

HELP = "fine-tune backbone top + head end to end on images"
DESCRIPTION = ("Stitch the backbone to a trained head (stage-two weights), unfreeze the top of the backbone and "
               "train on decoded, augmented images with SGD. Writes a model directory (the whole network as "
               "model.keras) with the best validation epoch.")


def add_arguments(p) -> None:
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
                   help="epochs; the one with the lowest val_loss is kept, if it beats the starting model's, "
                        "else the starting model is written unchanged (default 10)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per step (default 32)")
    p.add_argument("--val", help="separate validation images (same kinds as DATA)")
    p.add_argument("--val-split", type=fraction_below_one, default=0.2,
                   help="validation fraction of DATA when --val is not given, stratified for classes, whole groups "
                        "(videos) when DATA has them (default 0.2)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="random mirror, shift and zoom (and rotation/brightness/channel shift when asked); for "
                        "keypoints a flip-aware mirror (default on)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="mirror training images at random (--no-flip: never, e.g. for digits or text; default: "
                        "inherit: off when the head was trained with --no-flipped or the features without flips)")
    p.add_argument("--shift", type=non_negative_float, default=AUGMENT["shift"], metavar="FRACTION",
                   help=f"random width/height shift, fraction of the size (default {AUGMENT['shift']:g}; 0: off)")
    p.add_argument("--zoom", type=non_negative_float, default=AUGMENT["zoom"], metavar="FRACTION",
                   help=f"random zoom in/out by up to this fraction (default {AUGMENT['zoom']:g}; 0: off)")
    p.add_argument("--rotation", type=non_negative_float, default=AUGMENT["rotation"], metavar="DEGREES",
                   help="random rotation by up to this many degrees (default 0: off)")
    p.add_argument("--brightness", type=non_negative_float, default=AUGMENT["brightness"], metavar="FRACTION",
                   help="random brightness shift, fraction of 255 (default 0: off)")
    p.add_argument("--channel-shift", type=non_negative_float, default=AUGMENT["channel_shift"], metavar="LEVELS",
                   help="random per-channel shift by up to this many pixel levels (default 0: off)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the augmentation and training (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    p.add_argument("--json", action="store_true", help="print the result summary as one JSON object")
    add_model_args(p)
    add_source_args(p)


def run(args) -> int:
    from pipeline.finetune.train import finetune

    meta = finetune(args.model, args.data, args.output, unfreeze=args.unfreeze, unfreeze_last=args.unfreeze_last,
                    train_bn=args.train_bn, lr=args.lr, momentum=args.momentum, epochs=args.epochs,
                    batch_size=args.batch_size, val=args.val, val_split=args.val_split, augment=args.augment,
                    flip=args.flip, shift=args.shift, zoom=args.zoom, rotation=args.rotation,
                    brightness=args.brightness, channel_shift=args.channel_shift, seed=args.seed,
                    source=source_options(args, drop_unset=True),
                    overwrite=args.overwrite, **model_options(args))
    f, m = meta["finetune"], meta["metrics"]
    key = "accuracy" if meta["task"] == "classification" else "rmse_px"
    if args.json:
        print(json_text({"model": args.output, key: m.get(key), "best_epoch": f["best_epoch"],
                          "kept_starting_model": f["kept_starting_model"], "monitor": f["monitor"],
                          "epochs": f["epochs"], "seconds": f["seconds"], "val_before": f["val_before"],
                          "augment": f["augment"], "flip": f["flip"], "flip_reason": f["flip_reason"],
                          "trainable_backbone_layers": len(f["trainable_backbone_layers"])}))
    else:
        before = f["val_before"]
        if key not in m:
            head = "no validation rows"
        elif key == "accuracy":
            head = f"val accuracy {m[key]:.4f} ({before['accuracy']:.4f} before fine-tuning)"
        else:
            head = f"val RMSE {m[key]:.3f} px (val_loss {before['loss']:.4g} -> {m['val_loss']:.4g})"
        if f["kept_starting_model"]:
            kept = f"no epoch beat the starting model ({f['monitor']}), so it was written unchanged"
        else:
            kept = f"kept epoch {f['best_epoch'] + 1} of {f['epochs']} (lowest {f['monitor']})"
        mirror = f"mirror {'on' if f['flip'] else 'off'}, {f['flip_reason']}" if f["augment"] else "no augmentation"
        print(f"finetuned -> {args.output}: {head}, {kept}, {mirror}, "
              f"{len(f['trainable_backbone_layers'])} backbone layers trained, {f['seconds']:.1f} s")
    return 0


check = check_source_args

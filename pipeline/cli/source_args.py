"""The dataset-source flags shared by ``extract``, ``finetune`` and ``evaluate-images``."""

from __future__ import annotations

import argparse

SOURCE_KINDS = ["auto", "folder", "csv", "kaggle_keypoints", "places365"]


def add_source_args(p: argparse.ArgumentParser) -> None:
    """Add the ``dataset source`` group: how to read DATA (kind, CSV columns, list-file roots)."""
    g = p.add_argument_group("dataset source")
    g.add_argument("--source-kind", choices=SOURCE_KINDS, default="auto",
                   help="how to read DATA (default: detect: directory, Kaggle keypoint CSV, CSV, or .txt list)")
    g.add_argument("--categories", help="Places365 categories file (lines like '/a/airfield 0') for a list-file DATA")
    g.add_argument("--image-root", help="directory the list file's image names are relative to (default: its folder)")
    g.add_argument("--path-column", help="CSV column holding image paths, relative to the CSV (default: detect)")
    g.add_argument("--label-column", help="CSV column holding class labels (default: detect)")
    g.add_argument("--target-columns", help="comma-separated numeric CSV columns to regress (default: all numeric)")


def source_options(args: argparse.Namespace, *, drop_unset: bool = False) -> dict:
    """The ``read_source`` options given on the command line; ``drop_unset`` leaves out the flags not given."""
    options = {"kind": args.source_kind, "categories": args.categories, "image_root": args.image_root,
               "path_column": args.path_column, "label_column": args.label_column,
               "target_columns": args.target_columns.split(",") if args.target_columns else None}
    return {k: v for k, v in options.items() if v is not None} if drop_unset else options

"""The dataset-source flags shared by extract, finetune and evaluate-images."""

from __future__ import annotations

import argparse


def add_source_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("dataset source")
    g.add_argument("--source-kind", choices=["auto", "folder", "csv", "kaggle_keypoints", "places365"], default="auto",
                   help="how to read DATA (default: detect: directory, Kaggle keypoint CSV, CSV, or .txt list)")
    g.add_argument("--categories", help="Places365 categories file (lines like '/a/airfield 0') for a list-file DATA")
    g.add_argument("--image-root", help="directory the list file's image names are relative to (default: its folder)")
    g.add_argument("--path-column", help="CSV column holding image paths, relative to the CSV (default: detect)")
    g.add_argument("--label-column", help="CSV column holding class labels (default: detect)")
    g.add_argument("--target-columns", help="comma-separated numeric CSV columns to regress (default: all numeric)")

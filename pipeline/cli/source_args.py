"""The dataset-source flags shared by ``extract``, ``finetune`` and ``evaluate-images``."""

from __future__ import annotations

import argparse


def add_source_args(p: argparse.ArgumentParser) -> None:
    """Add the ``dataset source`` group: how to read DATA (kind, CSV columns, list-file roots, shard fields)."""
    from features.reader.sources import SOURCES

    kinds = "; ".join(f"{name}: {s.help}" for name, s in SOURCES.items())
    g = p.add_argument_group("dataset source")
    g.add_argument("--source-kind", choices=["auto", *SOURCES], default="auto",
                   help=f"how to read DATA (default auto: the first of these that fits DATA). {kinds}")
    g.add_argument("--categories", help="Places365 categories file (lines like '/a/airfield 0') for a list-file DATA")
    g.add_argument("--image-root", help="directory (or fsspec URL) the list file's, CSV's or parquet path cells' "
                                        "image names are relative to (default: the file's folder)")
    g.add_argument("--path-column", help="CSV column holding image paths, relative to the CSV (default: detect)")
    g.add_argument("--label-column", help="CSV or parquet column holding class labels (default: detect)")
    g.add_argument("--target-columns", help="comma-separated numeric CSV or parquet columns, or webdataset json "
                                            "fields, to regress (default: all numeric CSV columns)")
    g.add_argument("--group-column", help="CSV column whose equal values mark near-duplicates (one subject, video or "
                                           "scene); `bneck train` keeps each group on one side of its validation "
                                           "splits (default: none; a `bneck frames` folder has its videos already)")
    g.add_argument("--recursive", action="store_true", default=None,
                   help="a folder of images without classes: take the files in its subfolders too")
    g.add_argument("--label-key", help="webdataset: the .json field holding each sample's class (default: .cls)")
    g.add_argument("--image-column", help="parquet column holding the images (default: detect image, img, jpg...)")


def source_options(args: argparse.Namespace, *, drop_unset: bool = False) -> dict:
    """The ``read_source`` options given on the command line; ``drop_unset`` leaves out the flags not given."""
    options = {"kind": args.source_kind, "categories": args.categories, "image_root": args.image_root,
               "path_column": args.path_column, "label_column": args.label_column,
               "target_columns": args.target_columns.split(",") if args.target_columns else None,
               "group_column": args.group_column, "recursive": args.recursive, "label_key": args.label_key,
               "image_column": args.image_column}
    return {k: v for k, v in options.items() if v is not None} if drop_unset else options


def check_source_args(args: argparse.Namespace) -> None:
    """Source flags that can never work together, or that the chosen ``--source-kind`` would ignore: exit 2.

    Which flags a kind takes is its reader's signature (the registry entry), so a new kind needs no edit here.
    """
    import inspect

    from features.reader.sources import SOURCES
    from pipeline.cli.errors import UsageError

    given = {k: v for k, v in source_options(args, drop_unset=True).items() if k != "kind"}
    if "label_key" in given and ("target_columns" in given or "label_column" in given):
        raise UsageError("--label-key (webdataset) names the class field; it cannot be combined with "
                         "--label-column or --target-columns")
    if "label_column" in given and "target_columns" in given:
        raise UsageError("give either --label-column or --target-columns, not both")
    if args.source_kind != "auto":
        takes = set(inspect.signature(SOURCES[args.source_kind].read).parameters)
        unused = sorted(set(given) - takes)
        if unused:
            flags = ", ".join("--" + u.replace("_", "-") for u in unused)
            raise UsageError(f"{flags} do not apply to --source-kind {args.source_kind}")

"""``bneck merge``: combine the shard files of ``bneck extract --shard I/N`` runs into one feature file."""

from __future__ import annotations

import glob
import os

from pipeline.cli.jsonout import json_text

HELP = "merge the shard files of `bneck extract --shard I/N` into one feature file"
DESCRIPTION = ("Combine shards 0..N-1 of one extraction into a file equal to a single-machine run. "
               "Default: an HDF5 virtual dataset that reads the shard files in place (instant; keep "
               "them next to it). --copy writes a self-contained file. Everything is checked first: "
               "missing, unfinished or foreign shards, differing settings and gaps are refused.")
TENSORFLOW = False


def add_arguments(p) -> None:
    p.add_argument("shards", nargs="+", metavar="SHARD",
                   help="shard files (OUT.shard-0000I-of-0000N.h5), a quoted glob, or a directory holding them")
    p.add_argument("-o", "--output", required=True, help="merged HDF5 file to write (atomically)")
    p.add_argument("--copy", action="store_true",
                   help="copy the rows into a self-contained file instead of a virtual dataset")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output file (without it, rerunning the same merge is a no-op)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar (--copy)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def expand_shards(args: list[str]) -> list[str]:
    """Directories -> their ``*.shard-*-of-*.h5`` files; unexpanded globs -> their matches; files as given."""
    out = []
    for a in args:
        if os.path.isdir(a):
            found = sorted(glob.glob(os.path.join(glob.escape(a), "*.shard-*-of-*.h5")))
            if not found:
                raise ValueError(f"{a}: directory holds no *.shard-*-of-*.h5 files")
            out += found
        elif not os.path.exists(a) and glob.has_magic(a):
            found = sorted(glob.glob(a))
            if not found:
                raise ValueError(f"{a}: no file matches")
            out += found
        else:
            out.append(a)
    return out


def run(args) -> int:
    from features.merge import merge

    summary = merge(expand_shards(args.shards), args.output, copy=args.copy, overwrite=args.overwrite,
                    progress=args.progress)
    if args.json:
        print(json_text(summary))
    else:
        kind = "self-contained copy" if args.copy else "virtual dataset: keep the shard files next to it"
        done = "already merged" if summary["skipped_existing"] else "merged"
        print(f"{done} {summary['n_shards']} shards, {summary['rows']} rows -> {summary['output']} ({kind})")
    return 0

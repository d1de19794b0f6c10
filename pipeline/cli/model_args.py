"""The flags of every command that opens a model directory: ``--trust-pickle`` and ``--weights DIR``."""

from __future__ import annotations

import argparse

TRUST_PICKLE_HELP = ("load a head.joblib head (model directories written before format 2): it is a pickle, and "
                     "loading it runs any code it holds, so only for directories you made or trust; "
                     "upgrade-model rewrites one safely once")


def add_model_args(p: argparse.ArgumentParser, *, weights: bool = True) -> None:
    """Add ``--trust-pickle`` and, for commands that rebuild the backbone, ``--weights DIR`` (repeatable)."""
    p.add_argument("--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP)
    if weights:
        p.add_argument("--weights", dest="weights_dirs", action="append", default=[], metavar="DIR",
                       help="a folder to look for the backbone weights file in, found by its sha256 (repeatable; "
                            "also searched: $BNECK_WEIGHTS_PATH, the Keras cache, the model directory and its folder)")


def model_options(args: argparse.Namespace) -> dict:
    """The keyword arguments :func:`add_model_args` gives to the API call (``trust_pickle``, ``weights_dirs``)."""
    options = {"trust_pickle": args.trust_pickle}
    if hasattr(args, "weights_dirs"):
        options["weights_dirs"] = tuple(args.weights_dirs)
    return options

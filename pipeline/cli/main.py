"""The ``bneck`` command line: thin argparse wrappers, each one call into the Python API.

Each subcommand is one module of this package defining a :class:`pipeline.cli.command.Command`;
:data:`COMMANDS` lists them in the order ``bneck --help`` shows them. Adding a command is one
module plus one entry here. Exit codes: see :mod:`pipeline.cli.errors`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from features.names import escape_unencodable_output
from pipeline.cli import (
    backbones,
    classify,
    evaluate,
    evaluate_images,
    export,
    extract,
    finetune,
    frames,
    info,
    merge,
    predict,
    report,
    train,
    upgrade_model,
    visualize_filters,
)
from pipeline.cli.command import Command
from pipeline.cli.errors import EXIT_BAD_IMAGES, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USAGE, UsageError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter hides our messages

log = logging.getLogger("bneck")

#: Every subcommand, in the order of ``bneck --help``.
COMMANDS = [Command.of(m) for m in (extract, info, backbones, train, evaluate, report, predict, export, merge,
                                    finetune, evaluate_images, classify, visualize_filters, frames, upgrade_model)]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to check the README against the CLI)."""
    from features import __version__

    parser = argparse.ArgumentParser(prog="bneck", description="Transfer learning with cached bottleneck features.")
    parser.add_argument("--version", action="version", version=f"bneck {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")
    # The same two flags after the subcommand (`bneck info F -q`); SUPPRESS keeps the subparser
    # from resetting a -q given before the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="warnings and errors only, no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description, parents=[common])
        cmd.add_arguments(p)
        p.set_defaults(cmd=cmd, cmd_parser=p)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """The command line as its command sees it, global flags applied; a usage error exits 2 (argparse)."""
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # said by the subcommand's parser, so the usage shown is the command's own
        args.cmd_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.quiet and hasattr(args, "progress"):
        # -q is for logs and Makefiles: a progress bar is neither a warning nor an error.
        args.progress = False
    return args


def _setup_logging(args) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="bneck: %(levelname)s: %(message)s" if level != logging.INFO
                        else "bneck: %(message)s", stream=sys.stderr)
    logging.getLogger("bneck").setLevel(level)


def main(argv=None) -> int:
    """Entry point of the ``bneck`` console script; returns the exit code."""
    # A file name that is not UTF-8 must not end a run with UnicodeEncodeError halfway through
    # its output (predict prints one line per image as it goes).
    escape_unencodable_output(sys.stdout, sys.stderr)
    args = parse_args(argv)
    cmd = args.cmd
    _setup_logging(args)
    try:
        if cmd.check is not None:
            cmd.check(args)
    except UsageError as exc:
        print(f"bneck {cmd.name}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.verbose:
        os.environ["BNECK_TF_LOGS"] = "1"
    elif cmd.needs_tensorflow(args):
        from features.quiet import import_tensorflow_quietly

        import_tensorflow_quietly()
    from features.config import TooManyBadImages
    from features.writer.commit import Terminated

    try:
        return cmd.run(args) or 0
    except UsageError as exc:
        print(f"bneck {cmd.name}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TooManyBadImages as exc:
        log.error("%s", exc)
        return EXIT_BAD_IMAGES
    except Terminated as exc:
        log.error("%s", exc)
        return EXIT_TERMINATED
    except BrokenPipeError:
        # `bneck predict ... | head`: the reader left; stop quietly like other Unix tools.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        log.error("%s", cmd.interrupted)
        return EXIT_INTERRUPTED
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        if args.verbose:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        log.error("%s", msg)
        return EXIT_ERROR

"""What one ``bneck`` subcommand is: its flags, its one call into the API, and what it needs before it runs.

A new command is one module plus one entry in :data:`pipeline.cli.main.COMMANDS`; nothing else in the
CLI names commands. The module is the command (:meth:`Command.of` reads it): ``HELP`` (and optionally
``DESCRIPTION``, ``INTERRUPTED``), ``add_arguments(parser)``, ``run(args)``, and optionally ``check(args)``
and ``needs_tensorflow(args)`` or a constant ``TENSORFLOW``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable, Union

#: ``True``/``False``, or a function of the parsed arguments (``train`` needs TensorFlow for Keras heads only).
NeedsTensorFlow = Union[bool, Callable[[argparse.Namespace], bool]]


@dataclass(frozen=True)
class Command:
    """One subcommand: ``add_arguments(parser)`` declares its flags, ``run(args)`` returns the exit code.

    Attributes:
        name: The subcommand's name on the command line.
        help: The one line ``bneck --help`` shows for it.
        add_arguments: Adds the command's flags to its subparser.
        run: Does the work; returns the exit code (None counts as 0).
        description: The paragraph ``bneck NAME --help`` shows (default: ``help``).
        tensorflow: Whether TensorFlow is imported (quietly, see :mod:`features.quiet`) before ``run``.
            Commands that import it late or never say False: their usage checks and cheap input
            checks then fail in milliseconds.
        check: Usage checks that need more than argparse (flags that only make sense together, or
            cheap facts of an input file); raises :class:`pipeline.cli.errors.UsageError` for exit 2.
            Runs before TensorFlow is imported and before any work.
        interrupted: The message logged on Ctrl-C.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    description: str | None = None
    tensorflow: NeedsTensorFlow = True
    check: Callable[[argparse.Namespace], None] | None = None
    interrupted: str = "interrupted; nothing was written"  # every command but extract writes atomically at the end

    @classmethod
    def of(cls, module) -> Command:
        """The command a ``pipeline.cli`` module defines; its name is the module's, with ``-`` for ``_``."""
        optional = {"description": getattr(module, "DESCRIPTION", None), "check": getattr(module, "check", None),
                    "tensorflow": getattr(module, "needs_tensorflow", getattr(module, "TENSORFLOW", True))}
        if hasattr(module, "INTERRUPTED"):
            optional["interrupted"] = module.INTERRUPTED
        return cls(name=module.__name__.rsplit(".", 1)[-1].replace("_", "-"), help=module.HELP,
                   add_arguments=module.add_arguments, run=module.run, **optional)

    def needs_tensorflow(self, args: argparse.Namespace) -> bool:
        """Whether this run imports TensorFlow before :attr:`run` (see :attr:`tensorflow`)."""
        return self.tensorflow(args) if callable(self.tensorflow) else bool(self.tensorflow)

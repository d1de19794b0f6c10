"""argparse ``type=`` checkers: a bad number is a usage error (exit 2) naming the flag, not a traceback later.

argparse turns the ``ArgumentTypeError`` raised here into ``bneck CMD: error: argument --flag: ...``
and exit code 2, before any file is read or any model is built.
"""

from __future__ import annotations

import argparse


def _number(text: str, kind):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None


def int_at_least(lo: int):
    """An integer >= lo."""
    return int_between(lo, None)


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _number(text, float)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    value = _number(text, float)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def fraction_below_one(text: str) -> float:
    """A number in [0, 1): a validation share or a dropout rate."""
    value = _number(text, float)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {text}")
    return value


def int_between(lo: int, hi: int | None):
    """An integer in [lo, hi] (no upper bound when ``hi`` is None)."""
    def check(text: str) -> int:
        value = _number(text, int)
        if value < lo or (hi is not None and value > hi):
            bound = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    check.__name__ = f"int_at_least_{lo}" if hi is None else f"int_{lo}_to_{hi}"
    return check


def joblib_jobs(text: str) -> int:
    """Joblib's n_jobs: >= 1, or -1 for one per core (0 means nothing to joblib)."""
    value = _number(text, int)
    if value == 0 or value < -1:
        raise argparse.ArgumentTypeError(f"must be at least 1, or -1 for one per core; got {value}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _number(text, float)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


#: An integer >= 1.
positive_int = int_at_least(1)
#: An integer >= 0.
non_negative_int = int_at_least(0)


def batch_size(text: str):
    """``auto`` or an integer >= 1 (``--batch-size``)."""
    return "auto" if text == "auto" else positive_int(text)

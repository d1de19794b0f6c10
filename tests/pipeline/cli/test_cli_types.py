"""argparse checkers: a bad number is a usage error (exit 2) that names the flag, before any work."""

import argparse
import json

import pytest

from pipeline.cli import types as t
from pipeline.cli.jsonout import json_text
from pipeline.cli.main import build_parser


@pytest.mark.parametrize("check, good, bad", [
    (t.positive_int, ["1", "32"], ["0", "-3", "1.5", "x"]),
    (t.non_negative_int, ["0", "7"], ["-1", "a"]),
    (t.positive_float, ["1e-4", "3"], ["0", "-1", "inf", "nan", "x"]),
    (t.fraction, ["0", "0.05", "1"], ["-0.1", "1.5", "nan"]),
    (t.fraction_below_one, ["0", "0.5"], ["1", "-0.2"]),
    (t.int_between(1, 95), ["1", "95"], ["0", "100"]),
    (t.int_at_least(2), ["2", "10"], ["1", "0"]),
    (t.joblib_jobs, ["1", "4", "-1"], ["0", "-2"]),
    (t.non_negative_float, ["0", "0.5"], ["-1", "inf"]),
])
def test_checkers_accept_and_refuse(check, good, bad):
    for text in good:
        check(text)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            check(text)


@pytest.mark.parametrize("argv, flag", [
    (["extract", "d", "-o", "x.h5", "--max-bad-fraction", "-1"], "--max-bad-fraction"),
    (["extract", "d", "-o", "x.h5", "--workers", "0"], "--workers"),
    (["train", "f.h5", "-o", "m", "--epochs", "0"], "--epochs"),
    (["train", "f.h5", "-o", "m", "--batch-size", "0"], "--batch-size"),
    (["train", "f.h5", "-o", "m", "--val-split", "1"], "--val-split"),
    (["train", "f.h5", "-o", "m", "--cv", "1"], "--cv"),
    (["predict", "m", "a.jpg", "--top-k", "0"], "--top-k"),
    (["evaluate", "m", "f.h5", "--top-k", "-1"], "--top-k"),
    (["frames", "v", "-o", "d", "--quality", "100"], "--quality"),
])
def test_out_of_range_flags_exit_2_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2 and f"argument {flag}" in capsys.readouterr().err


def test_json_text_is_strict():
    text = json_text({"rmse_px": float("nan"), "per": [1.0, float("inf")], "n": 3})
    assert json.loads(text) == {"rmse_px": None, "per": [1.0, None], "n": 3} and "NaN" not in text

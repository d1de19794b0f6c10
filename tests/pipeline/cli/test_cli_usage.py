"""Every malformed command line exits 2 before any work, with a message naming the flag (README: exit codes).

Table-driven over every command in ``COMMANDS``: a flag no command has, a missing argument, and the
command's own flag checks (numbers, flag combinations, flags the chosen head would ignore). Each
case runs ``main`` in-process and checks that nothing was written and no TensorFlow was needed.
"""

import sys

import pytest

from pipeline.cli.errors import EXIT_USAGE
from pipeline.cli.main import COMMANDS, build_parser, main, parse_args

X = ["x.h5", "-o", "out"]  # train's positional + required flag
E = ["data", "-o", "out.h5"]  # extract's

#: (argv, text the error must contain)
CASES = [
    (["extract", *E, "--input-size", "abc"], "--input-size must be N or HxW"),
    (["extract", *E, "--input-size", "8"], "at least 32 pixels"),
    (["extract", *E, "--shard", "3/2"], "0 <= I < 2"),
    (["extract", *E, "--shard", "one/two"], "shard must look like I/N"),
    (["extract", *E, "--chunk-rows", "12", "--batch-size", "8"], "--chunk-rows must be a multiple of --batch-size"),
    (["extract", *E, "--backbone", "alexnet"], "unknown backbone 'alexnet'"),
    (["extract", *E, "--batch-size", "0"], "must be at least 1, got 0"),
    (["extract", *E, "--calibrate-on", "other"], "--calibrate-on applies to --precision int8 only"),
    (["extract", *E, "--runtime", "openvino", "--precision", "fp16"], "fp16 is a GPU setting"),
    (["extract", *E, "--num-workers", "2"], "apply to --engine ray only"),
    (["extract", *E, "--max-bad-fraction", "2"], "must be between 0 and 1"),
    (["extract", "data", "-o", "s3://bucket/x.h5"], "-o/--output s3://bucket/x.h5: the HDF5 output must be a local"),
    (["extract", "data", "-o", "file:///tmp/x.h5"], "must be a local path, not a URL"),
    (["train", *X, "--grid", "C=a,b", "--head", "svm"], "takes numbers"),
    (["train", *X, "--grid", "C", "--head", "svm"], "malformed grid spec"),
    (["train", *X, "--grid", "units=4,8", "--head", "svm"], "unknown parameter"),
    (["train", *X, "--head", "logreg", "--kernel", "rbf"], "--head logreg does not use --kernel"),
    (["train", *X, "--head", "svm", "--units", "12"], "--head svm does not use --units"),
    (["train", *X, "--head", "dense", "--C", "1"], "--head dense does not use --C"),
    (["train", *X, "--head", "specialists", "--epochs", "3"], "--head specialists --specialist-base ridge does "
                                                               "not use --epochs"),
    (["train", *X, "--head", "svm", "--groups", "g.json"], "apply to --head specialists"),
    (["train", *X, "--gap", "--pooling", "avg"], "no map left"),
    (["train", *X, "--val-split", "1"], "below 1"),
    (["train", *X, "--head", "nope"], "invalid choice: 'nope'"),
    (["predict", "m", "img.png", "--top-k", "0"], "must be at least 1, got 0"),
    (["evaluate", "m", "f.h5", "--top-k", "-1"], "must be at least 1"),
    (["report", "m", "-o", "out"], "no feature file after m"),
    (["report", "f.h5", "-o", "out"], "f.h5: no such feature file"),
    (["report", "m", "f.h5"], "the following arguments are required: -o"),
    (["report", "m", "f.h5", "-o", "out", "--gallery", "0"], "must be at least 1, got 0"),
    (["export", "m", "-o", "m.keras", "--format", "onnx"], "invalid choice: 'onnx'"),
    (["export", "m", "-o", "m.keras", "--bundle-weights"], "--bundle-weights applies to --format dir only"),
    (["export", "m", "-o", "copy", "--format", "dir", "--quantize", "int8"], "do not apply to --format dir"),
    (["finetune", "m", "data", "-o", "ft", "--epochs", "0"], "must be at least 1"),
    (["merge", "a.h5", "-o", "m.h5", "--nonsense"], "unrecognized arguments: --nonsense"),
    (["info"], "give a feature file, or --system"),
    (["info", "f.h5", "--system"], "give a feature file, or --system (not both)"),
    (["extract", *E, "--batch-size", "big"], "expected an integer"),
    (["extract", *E, "--batch-size", "auto", "--chunk-rows", "64"], "needs a fixed --batch-size"),
    (["extract", *E, "--gpus", "0,0"], "distinct GPU ids"),
    (["extract", *E, "--gpus", "0", "--shard", "0/2"], "cannot be combined"),
    (["backbones", "--summary"], "expected one argument"),
    (["evaluate-images", "m"], "the following arguments are required: data"),
    (["classify"], "the following arguments are required"),
    (["visualize-filters", "--backbone", "vgg16", "--layer", "block1_conv1", "-o", "f.png", "--filters", "x"],
     "--filters must look like 0-15"),
    (["frames", "videos"], "the following arguments are required"),
    (["extract", *E, "--source-kind", "tar"], "invalid choice: 'tar'"),
    (["extract", *E, "--label-key"], "expected one argument"),
    (["extract", *E, "--label-key", "y", "--target-columns", "a,b"], "--label-key (webdataset) names the class"),
    (["extract", *E, "--label-column", "y", "--target-columns", "a"], "either --label-column or --target-columns"),
    (["extract", *E, "--source-kind", "folder", "--recursive"], "--recursive do not apply to --source-kind folder"),
    (["extract", *E, "--source-kind", "webdataset", "--image-column", "img"], "--image-column do not apply"),
    (["extract", *E, "--source-kind", "parquet", "--categories", "c.txt"], "--categories do not apply"),
    (["evaluate-images", "m", "data", "--source-kind", "csv", "--label-key", "y"], "--label-key do not apply"),
    (["finetune", "m", "data", "-o", "ft", "--unfreeze-last", "2", "--source-kind", "images", "--path-column", "p"],
     "--path-column do not apply to --source-kind images"),
    (["upgrade-model"], "the following arguments are required: model"),
    (["upgrade-model", "m", "--overwrite"], "--overwrite applies to -o OUTPUT only"),
    (["predict", "m", "img.png", "--trust-pickle=yes"], "ignored explicit argument"),
]


def _run(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_a_malformed_command_line_exits_2_before_any_work(argv, message, tmp_path, monkeypatch, capsys):
    had_tf = "tensorflow" in sys.modules
    rc, err = _run(argv, tmp_path, monkeypatch, capsys)
    assert rc == EXIT_USAGE, err
    assert message in err and f"bneck {argv[0]}" in err, err
    assert list(tmp_path.iterdir()) == [], "a usage error wrote something"
    assert had_tf or "tensorflow" not in sys.modules, "a usage error imported TensorFlow"


def test_the_table_covers_every_command():
    assert {argv[0] for argv, _ in CASES} == {c.name for c in COMMANDS}


@pytest.mark.parametrize("command", [c.name for c in COMMANDS])
def test_an_unknown_flag_is_refused_by_every_command(command, tmp_path, monkeypatch, capsys):
    rc, err = _run([command, "--no-such-flag"], tmp_path, monkeypatch, capsys)
    assert rc == EXIT_USAGE and "--no-such-flag" in err or "required" in err, err


@pytest.mark.parametrize("command", [c.name for c in COMMANDS])
def test_global_flags_work_after_the_subcommand_too(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices[command]
    flags = {s for a in sub._actions for s in a.option_strings}
    assert {"-q", "--quiet", "-v", "--verbose"} <= flags


def test_quiet_before_or_after_the_subcommand_is_the_same():
    parser = build_parser()
    for argv in (["-q", "info", "f.h5"], ["info", "f.h5", "-q"], ["info", "-q", "f.h5"]):
        args = parser.parse_args(argv)
        assert args.quiet is True and args.verbose is False, argv
    args = parser.parse_args(["info", "f.h5"])
    assert args.quiet is False and args.verbose is False


@pytest.mark.parametrize("argv", [["-q", "extract", "d", "-o", "f.h5"], ["extract", "d", "-o", "f.h5", "-q"],
                                  ["merge", "a.h5", "-o", "f.h5", "-q"], ["report", "m", "f.h5", "-o", "r", "-q"],
                                  ["frames", "v", "-o", "f", "-q"]])
def test_quiet_hides_the_progress_bars(argv):
    assert parse_args(argv).progress is False
    assert parse_args([a for a in argv if a != "-q"]).progress is True


def test_gpus_all_on_a_machine_without_gpus_is_a_usage_error(tmp_path, monkeypatch, capsys):
    from features.engines import gpus

    monkeypatch.setattr(gpus, "visible_gpus", lambda: [])
    rc, err = _run(["extract", *E, "--gpus", "all"], tmp_path, monkeypatch, capsys)
    assert rc == EXIT_USAGE and "no GPU is visible here" in err

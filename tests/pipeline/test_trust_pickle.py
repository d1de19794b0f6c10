"""Pickled heads (format v1 head.joblib) on the command line: refused by default, --trust-pickle on every
command that opens a model directory, and ``bneck upgrade-model`` to rewrite one safely."""

import json
import logging

import joblib
import pytest

from pipeline.cli.main import build_parser, main
from pipeline.modeldir import load_model_dir, sha256_file
from tests.feature_files import write_feature_file

#: Every command that opens a model directory, with its positional arguments.
LOADERS = [["evaluate", "m", "f.h5"], ["predict", "m", "img.png"], ["export", "m", "-o", "x.keras"],
           ["finetune", "m", "data", "-o", "ft", "--unfreeze-last", "1"], ["evaluate-images", "m", "data"],
           ["upgrade-model", "m"]]


@pytest.mark.parametrize("argv", LOADERS, ids=[a[0] for a in LOADERS])
def test_every_command_that_opens_a_model_takes_trust_pickle(argv):
    parser = build_parser()
    assert parser.parse_args(argv).trust_pickle is False
    assert parser.parse_args([*argv, "--trust-pickle"]).trust_pickle is True


def test_every_model_command_is_in_the_list():
    """A new command taking a model directory must take --trust-pickle too (its first positional is "model")."""
    from pipeline.cli.main import COMMANDS

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    takes_model = {name for name, p in sub.choices.items()
                   if any(a.dest == "model" and not a.option_strings for a in p._actions)}
    assert takes_model == {a[0] for a in LOADERS} and takes_model <= {c.name for c in COMMANDS}


@pytest.fixture
def v1_model(tmp_path):
    """A logreg model directory as format v1 wrote it: head.joblib, a pickle."""
    write_feature_file(tmp_path / "f.h5", n=30, shape=(4,), store_dtype="float32")
    assert main(["-q", "train", str(tmp_path / "f.h5"), "-o", str(tmp_path / "m"), "--head", "logreg"]) == 0
    m = tmp_path / "m"
    head, _ = load_model_dir(m)
    for name in ("head.npz", "head.json"):
        (m / name).unlink()
    joblib.dump(head, m / "head.joblib")
    doc = json.loads((m / "model.json").read_text())
    doc["files"].pop("head.npz")
    doc["files"].pop("head.json")
    doc.update(format_version=1, head_loader="joblib")
    doc["files"]["head.joblib"] = sha256_file(m / "head.joblib")
    (m / "model.json").write_text(json.dumps(doc))
    return m


def test_a_pickled_head_is_refused_then_loaded_with_trust_pickle_then_upgraded(v1_model, tmp_path, capsys, caplog):
    feats = str(tmp_path / "f.h5")
    caplog.set_level(logging.ERROR, logger="bneck")
    assert main(["evaluate", str(v1_model), feats, "--json"]) == 1
    assert "it is a pickle" in caplog.text and "--trust-pickle" in caplog.text and "upgrade-model" in caplog.text
    capsys.readouterr()
    assert main(["-q", "evaluate", str(v1_model), feats, "--json", "--trust-pickle"]) == 0
    before = json.loads(capsys.readouterr().out)
    caplog.clear()
    assert main(["upgrade-model", str(v1_model)]) == 1  # upgrading unpickles too: the same opt-in
    assert "it is a pickle" in caplog.text and (v1_model / "head.joblib").exists()
    assert main(["-q", "upgrade-model", str(v1_model), "--trust-pickle", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["upgraded"] and report["new_head_loader"] == "arrays"
    assert not (v1_model / "head.joblib").exists() and (v1_model / "head.npz").exists()
    assert main(["-q", "evaluate", str(v1_model), feats, "--json"]) == 0  # no trust needed any more
    assert json.loads(capsys.readouterr().out) == before
    assert main(["-q", "upgrade-model", str(v1_model), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["upgraded"] is False


def test_report_of_a_pickled_head_needs_trust_pickle_too(v1_model, tmp_path, caplog):
    pytest.importorskip("matplotlib")
    feats = str(tmp_path / "f.h5")
    caplog.set_level(logging.ERROR, logger="bneck")
    assert main(["report", str(v1_model), feats, "-o", str(tmp_path / "r"), "--no-progress"]) == 1
    assert "--trust-pickle" in caplog.text and not (tmp_path / "r" / "index.html").exists()
    assert main(["-q", "report", str(v1_model), feats, "-o", str(tmp_path / "r"), "--no-progress",
                 "--trust-pickle"]) == 0
    assert (tmp_path / "r" / "index.html").is_file()

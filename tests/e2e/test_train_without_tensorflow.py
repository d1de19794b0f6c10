"""`bneck train` with a scikit-learn head never imports TensorFlow (it costs ~500 MB RSS and seconds).

Each run is a fresh interpreter: in the test process TensorFlow is usually imported already.
"""

import json
import os
import subprocess
import sys

import pytest

from pipeline.cli.main import build_parser
from tests.feature_files import write_feature_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# `python -m pipeline train ...` (same main()), then report which heavy modules got imported.
_TRAIN_AND_REPORT = """
import json, sys
from pipeline.cli.main import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "imported": sorted(m for m in ("tensorflow", "keras") if m in sys.modules)}))
"""


@pytest.mark.parametrize("head,task,extra", [
    ("svm", "classification", ["--grid", "C=0.1,1", "--cv", "2"]),
    ("logreg", "classification", []),
    pytest.param("specialists", "regression", [], marks=pytest.mark.slow),  # a subprocess each: logreg is enough
])
def test_sklearn_heads_train_without_importing_tensorflow(tmp_path, head, task, extra):
    write_feature_file(tmp_path / "f.h5", n=24, task=task, n_targets=4, store_dtype="float32")
    env = {k: v for k, v in os.environ.items() if k != "BNECK_TF_LOGS"}
    r = subprocess.run([sys.executable, "-c", _TRAIN_AND_REPORT, "train", str(tmp_path / "f.h5"),
                        "-o", str(tmp_path / "m"), "--head", head, *extra],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report == {"rc": 0, "imported": []}, r.stderr
    assert (tmp_path / "m" / "model.json").is_file()


@pytest.mark.parametrize("argv,needs", [
    ([], True),  # the default head is dense
    (["--head", "specialists", "--specialist-base", "dense"], True),
    (["--head", "specialists"], False),
    (["--head", "svm"], False),
    (["--head", "logreg"], False),
])
def test_only_keras_heads_ask_for_tensorflow(argv, needs):
    args = build_parser().parse_args(["train", "f.h5", "-o", "m", *argv])
    assert args.cmd.needs_tensorflow(args) is needs


@pytest.mark.parametrize("head,task", [("logreg", "classification"),
                                       pytest.param("specialists", "regression", marks=pytest.mark.slow)])
def test_evaluate_and_report_score_sklearn_heads_without_tensorflow(tmp_path, head, task):
    from pipeline.train import train

    write_feature_file(tmp_path / "f.h5", n=24, task=task, n_targets=4, store_dtype="float32")
    train(tmp_path / "f.h5", tmp_path / "m", head=head, pooling="avg")
    env = {k: v for k, v in os.environ.items() if k != "BNECK_TF_LOGS"}
    for argv in (["evaluate", "m", "f.h5", "--json", "--report", "one"], ["report", "m", "f.h5", "-o", "rep"]):
        r = subprocess.run([sys.executable, "-c", _TRAIN_AND_REPORT, *argv], capture_output=True, text=True,
                           cwd=tmp_path, env=dict(env, PYTHONPATH=REPO), timeout=300)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout.strip().splitlines()[-1]) == {"rc": 0, "imported": []}, (argv, r.stderr)
    assert (tmp_path / "one" / "index.html").is_file() and (tmp_path / "rep" / "index.html").is_file()


def test_only_keras_model_directories_ask_for_tensorflow(tmp_path):
    for name, doc, needs in [("keras", {"head": "dense", "head_loader": "keras"}, True),
                             ("ridge", {"head": "specialists", "head_loader": "joblib",
                                        "params": {"base": None}}, False),
                             ("spec_dense", {"head": "specialists", "head_loader": "joblib",
                                             "params": {"base": "DenseHead(units=8)"}}, True),
                             ("svm", {"head": "svm", "head_loader": "joblib"}, False)]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.json").write_text(json.dumps(doc))
        for argv in (["evaluate", str(tmp_path / name), "f.h5"], ["report", str(tmp_path / name), "f.h5", "-o", "r"]):
            args = build_parser().parse_args(argv)
            assert args.cmd.needs_tensorflow(args) is needs, (name, argv)
    args = build_parser().parse_args(["report", str(tmp_path / "svm"), str(tmp_path / "keras"), "f.h5", "-o", "r"])
    assert args.cmd.needs_tensorflow(args) is True

"""Metric maths and the refusal of features that don't fit the model."""

import shutil

import h5py
import numpy as np
import pytest

from pipeline.data import FeatureFileError
from pipeline.evaluate import classification_metrics, evaluate, regression_metrics
from pipeline.train import train
from tests.imagefolders import make_class_folder
from tests.stage2_fixtures import extract_fast


def test_classification_metrics_by_hand():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    m = classification_metrics([0, 2, 2, 1], scores, ["x", "y", "z"], top_k=2)
    assert m["accuracy"] == 0.5 and m["top2_accuracy"] == 1.0
    assert m["confusion_matrix"] == [[1, 0, 0], [1, 0, 0], [0, 1, 1]]
    assert m["per_class"]["x"] == {"precision": 0.5, "recall": 1.0, "support": 1}
    assert m["per_class"]["z"]["recall"] == 0.5


def test_regression_metrics_ignore_missing_and_report_points():
    t = np.array([[10.0, 20.0, np.nan], [30.0, 40.0, 5.0]])
    p = np.array([[13.0, 24.0, 99.0], [30.0, 40.0, 6.0]])
    m = regression_metrics(t, p, ["nose_x", "nose_y", "z"])
    assert m["n_values"] == 5
    assert m["rmse_px"] == pytest.approx(np.sqrt((9 + 16 + 1) / 5))
    assert m["per_keypoint"]["nose"]["mean_distance_px"] == pytest.approx(2.5)
    assert m["per_target"]["z"]["rmse_px"] == pytest.approx(1.0)


def test_features_that_do_not_fit_the_model_are_refused(tmp_path):
    make_class_folder(tmp_path / "d", per_class=6)
    a = extract_fast(tmp_path / "d", tmp_path / "a.h5", input_size="32")
    b = extract_fast(tmp_path / "d", tmp_path / "b.h5", input_size="48")
    c = extract_fast(tmp_path / "d", tmp_path / "c.h5", input_size="32", seed=2)
    train(a, tmp_path / "m", head="logreg", pooling="avg")
    assert evaluate(tmp_path / "m", a)["n"] == 12
    with pytest.raises(FeatureFileError, match="input_size"):
        evaluate(tmp_path / "m", b)
    with pytest.raises(FeatureFileError, match="weights"):
        evaluate(tmp_path / "m", c)
    # Provenance the extract flags cannot vary independently here: one attr changed at a time.
    for key, value in [("backbone", "vgg16"), ("layer", "conv_pw_2_relu"), ("preprocessing", "caffe"),
                       ("pooling", "avg")]:
        other = tmp_path / f"other-{key}.h5"
        shutil.copyfile(a, other)
        with h5py.File(other, "r+") as f:
            f.attrs[key] = value
        with pytest.raises(FeatureFileError, match=f"{key} is '{value}', expected"):
            evaluate(tmp_path / "m", other)

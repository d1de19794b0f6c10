"""Metric maths, keypoints scored in each image's pixels, and the refusal of features that don't fit the model."""

import shutil

import h5py
import numpy as np
import pytest

from features.keypoints import rescale_targets
from pipeline.data.views import FeatureFileError
from pipeline.evaluate import classification_metrics, evaluate, regression_metrics
from pipeline.train import train
from tests.feature_files import write_feature_file
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


@pytest.mark.slow  # ~10 s: extracts with two backbones
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
        # A pooling attr that contradicts the rows' shape is refused on opening the file, before the model.
        with pytest.raises(FeatureFileError, match=f"{key} is '{value}'(, expected| but 'features' rows are)"):
            evaluate(tmp_path / "m", other)


def _resized_copy(src, dst, names, to_hw):
    """The same rows as if every image had been ``to_hw`` pixels: targets and image_size scaled to match."""
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        f["targets"][...] = rescale_targets(f["targets"][()], names, f["image_size"][0], to_hw)
        f["image_size"][...] = np.array(to_hw, np.int32)


def test_keypoints_are_scored_in_each_images_own_pixels(tmp_path):
    names = ["nose_x", "nose_y"]
    rng = np.random.default_rng(0)
    targets = rng.uniform(0, 40, (60, 2)).astype(np.float32)
    write_feature_file(tmp_path / "f.h5", n=60, shape=(8,), task="regression", targets=targets, target_names=names)
    meta = train(tmp_path / "f.h5", tmp_path / "m", head="specialists")
    assert meta["target_frame"] == [48, 64]  # write_feature_file's images are 64 wide, 48 high
    same = evaluate(tmp_path / "m", tmp_path / "f.h5")
    # Twice the size on both axes: each pixel-centre error doubles exactly, so the RMSE does too.
    _resized_copy(tmp_path / "f.h5", tmp_path / "big.h5", names, (96, 128))
    big = evaluate(tmp_path / "m", tmp_path / "big.h5")
    assert same["rmse_px"] > 1
    assert big["rmse_px"] == pytest.approx(2 * same["rmse_px"], rel=1e-4)


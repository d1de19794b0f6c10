"""Training every head type from real feature files; model dirs, provenance, keypoint specialists."""

import json
import os

import h5py
import numpy as np
import pytest

from features.keypoints import rescale_targets
from pipeline.evaluate import evaluate
from pipeline.train import train
from tests.feature_files import write_feature_file
from tests.imagefolders import make_class_folder
from tests.stage2_fixtures import extract_fast, faces


@pytest.fixture(scope="module")
def cls_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    make_class_folder(root / "data", classes=("a", "b", "c"), per_class=10, size=(32, 32),
                      bad=[("a", "broken.png", b"\x89PNG\r\n\x1a\nxx")])
    return extract_fast(root / "data", root / "f.h5", input_size="32")


@pytest.mark.parametrize("head,kw", [("dense", dict(params={"epochs": 2})), ("svm", dict(pooling="avg")),
                                     ("logreg", dict(pooling="avg", grid={"C": [0.1, 1.0]}, jobs=2))])
def test_each_classification_head_trains_and_saves(cls_file, tmp_path, head, kw):
    meta = train(cls_file, tmp_path / "m", head=head, **kw)
    files = set(meta["files"])
    assert ("head.keras" in files) == (head == "dense") and ("head.npz" in files) == (head != "dense")
    assert "head.joblib" not in files  # no pickle: model directories are safe to open (issue 21)
    assert meta["features"]["backbone"] == "mobilenet" and meta["class_names"] == ["a", "b", "c"]
    assert meta["training"]["n_invalid_skipped"] == 1 and meta["training"]["used_flipped"]
    assert meta["training"]["n_train_rows"] + meta["training"]["n_val_rows"] == 30
    assert 0 <= meta["metrics"]["accuracy"] <= 1
    if head == "dense":
        assert {"history.csv", "learning_curve.png"} <= files
    if "grid" in kw:
        assert meta["training"]["grid"]["best_params"]["C"] in (0.1, 1.0) and "grid_results.csv" in files
    with open(tmp_path / "m" / "model.json") as f:
        assert json.load(f)["files"] == meta["files"]
    result = evaluate(tmp_path / "m", cls_file)
    assert set(result) >= {"accuracy", "top1_accuracy", "per_class", "confusion_matrix"}
    assert np.sum(result["confusion_matrix"]) == 30


def test_existing_model_dir_needs_overwrite(cls_file, tmp_path):
    train(cls_file, tmp_path / "m", head="logreg", pooling="avg")
    from pipeline import train as train_module

    with pytest.MonkeyPatch.context() as mp:  # refused before the features are even read
        mp.setattr(train_module, "load_training_data", lambda *a, **k: pytest.fail("loaded the features"))
        with pytest.raises(Exception, match="already exists .*--overwrite"):
            train(cls_file, tmp_path / "m", head="logreg", pooling="avg")
    train(cls_file, tmp_path / "m", head="logreg", pooling="avg", overwrite=True)


def test_wrong_head_for_task_is_clear(cls_file, tmp_path):
    with pytest.raises(ValueError, match="specialists needs keypoint targets"):
        train(cls_file, tmp_path / "m", head="specialists")


@pytest.fixture(scope="module")
def face_files(tmp_path_factory):
    return faces(str(tmp_path_factory.mktemp("faces")))


def _mean_rmse(face_files):
    from pipeline.data.featurefile import FeatureFile

    with FeatureFile(face_files["train"]) as a, FeatureFile(face_files["val"]) as b:
        mean = np.nanmean(a.targets, axis=0)
        t = b.targets
    return float(np.sqrt(np.nanmean((t - mean) ** 2)))


@pytest.mark.slow  # 240 faces through VGG16 at 96x96 (face_files), then six ridge groups
def test_specialists_beat_the_mean_and_use_partial_rows(face_files, tmp_path):
    meta = train(face_files["train"], tmp_path / "spec", head="specialists", val=face_files["val"], jobs=2)
    rmse = evaluate(tmp_path / "spec", face_files["val"])["rmse_px"]
    baseline = _mean_rmse(face_files)
    assert rmse < 0.5 * baseline, (rmse, baseline)
    used = meta["training"]["rows_used_per_group"]
    # Each group trains on exactly the rows where its own points are present (original + mirrored):
    # the eye centres on nearly every row, the eyebrows on the ~30% of fully labelled rows.
    from pipeline.data.featurefile import FeatureFile

    with FeatureFile(face_files["train"]) as f:
        names, t = f.target_names, f.targets
    for group, cols in meta["groups"].items():
        present = np.isfinite(t[:, [names.index(c) for c in cols]]).all(axis=1).sum()
        assert used[group] == 2 * present, group
    assert used["eye_centers"] > 0.9 * 2 * 240 and 0 < used["eyebrows"] < 0.6 * used["eye_centers"]
    assert set(meta["groups"]) == {"eye_centers", "nose_tip", "mouth_corners_top_lip", "bottom_lip",
                                   "eye_corners", "eyebrows"}


def test_groups_file_must_give_every_target_a_specialist(small_faces, tmp_path):
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps({"eyes": ["left_eye_center_x", "left_eye_center_y"]}))
    with pytest.raises(ValueError, match=r"groups\.json: no group predicts target column\(s\) right_eye_center_x"):
        train(small_faces["features"], tmp_path / "g", head="specialists", groups=str(groups))
    assert not (tmp_path / "g").exists()


@pytest.mark.slow  # needs face_files: 240 faces through VGG16 at 96x96
def test_flip_augmentation_does_not_hurt(face_files, tmp_path):
    with_flip = train(face_files["train"], tmp_path / "a", head="specialists", val=face_files["val"])
    without = train(face_files["train"], tmp_path / "b", head="specialists", val=face_files["val"], use_flipped=False)
    assert with_flip["training"]["n_training_samples"] == 2 * without["training"]["n_training_samples"]
    assert with_flip["metrics"]["rmse_px"] <= 1.05 * without["metrics"]["rmse_px"]


@pytest.mark.slow  # needs face_files, and 30 epochs of a 128-unit head
def test_dense_regression_head_on_keypoints(face_files, tmp_path):
    meta = train(face_files["train"], tmp_path / "d", head="dense", val=face_files["val"],
                 params={"epochs": 30, "units": 128})
    assert meta["metrics"]["rmse_px"] < 0.8 * _mean_rmse(face_files)
    assert "per_keypoint" in meta["metrics"] and os.path.exists(tmp_path / "d" / "history.csv")


def test_grid_search_folds_group_each_image_with_its_mirror(cls_file, tmp_path, monkeypatch):
    import pipeline.heads as H

    real, seen = H.grid_search, {}

    def spy(est, grid, X, y, **kw):
        seen.update(n=len(X), groups=kw["groups"])
        return real(est, grid, X, y, **kw)

    monkeypatch.setattr(H, "grid_search", spy)
    meta = train(cls_file, tmp_path / "m", head="logreg", pooling="avg", grid={"C": [0.1, 1.0]})
    m = meta["training"]["n_train_rows"]
    assert seen["n"] == 2 * m and list(seen["groups"]) == list(range(m)) * 2


def test_keypoints_of_mixed_image_sizes_train_in_the_input_frame_and_score_in_each_images_pixels(tmp_path):
    """The same face at two sizes is one answer in the input frame, and each size is scored in its own pixels."""
    rng = np.random.default_rng(0)
    targets = rng.uniform(5, 40, (20, 2)).astype(np.float32)
    feats = rng.normal(size=(20, 8)).astype(np.float32)
    pairs = np.concatenate([feats, feats])  # rows 20..39: the same images at twice the size
    big_targets = rescale_targets(targets, ["nose_x", "nose_y"], (48, 64), (96, 128))
    write_feature_file(tmp_path / "f.h5", n=40, shape=(8,), task="regression", target_names=["nose_x", "nose_y"],
                       targets=np.concatenate([targets, big_targets]), store_dtype="float32")
    with h5py.File(tmp_path / "f.h5", "r+") as f:
        f["features"][...] = pairs
        f["image_size"][20:] = [96, 128]
    meta = train(tmp_path / "f.h5", tmp_path / "m", head="specialists", val_split=0.0)
    assert meta["target_frame"] == [32, 32]
    for rows, name in ((slice(0, 20), "small"), (slice(20, 40), "big")):
        sub = tmp_path / f"{name}.h5"
        write_feature_file(sub, n=20, shape=(8,), task="regression", target_names=["nose_x", "nose_y"],
                           targets=np.concatenate([targets, big_targets])[rows], store_dtype="float32")
        with h5py.File(sub, "r+") as f:
            f["features"][...] = pairs[rows]
            f["image_size"][...] = [48, 64] if name == "small" else [96, 128]
    small, big = evaluate(tmp_path / "m", tmp_path / "small.h5"), evaluate(tmp_path / "m", tmp_path / "big.h5")
    assert small["rmse_px"] > 0.5  # a ridge on 8 random features does not fit 20 rows exactly
    assert big["rmse_px"] == pytest.approx(2 * small["rmse_px"], rel=1e-4)

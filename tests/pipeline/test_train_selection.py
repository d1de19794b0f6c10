"""Model selection then uses every row (issue 19): refit after a validation split, default C grid, CV alpha."""

import numpy as np
import pytest

from pipeline.heads import DEFAULT_ALPHAS, DEFAULT_C
from pipeline.modeldir import load_model_dir
from pipeline.train import train
from tests.feature_files import write_feature_file


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    path = tmp_path_factory.mktemp("sel") / "f.h5"
    labels = np.arange(60) % 3
    write_feature_file(path, n=60, shape=(8,), labels=labels, seed=1)
    return path


@pytest.fixture(scope="module")
def keypoints(tmp_path_factory):
    path = tmp_path_factory.mktemp("kp") / "k.h5"
    rng = np.random.default_rng(2)
    targets = rng.uniform(10, 80, size=(50, 4)).astype(np.float32)
    write_feature_file(path, n=50, shape=(6,), task="regression", n_targets=4, targets=targets,
                       target_names=["left_eye_x", "left_eye_y", "nose_tip_x", "nose_tip_y"], flip=False)
    return path


def _predictions(model_dir, X):
    head, _ = load_model_dir(model_dir)
    return head.predict(X)


def test_the_saved_head_is_refitted_on_every_row_and_keeps_the_split_metrics(pooled, tmp_path):
    meta = train(pooled, tmp_path / "m", head="logreg", params={"C": 0.5}, use_flipped=False, val_split=0.25)
    t = meta["training"]
    assert t["n_val_rows"] == 15 and t["n_training_samples"] == 45 and "accuracy" in meta["metrics"]
    assert t["refit"]["n_training_samples"] == 60
    # The refitted head is the head a user gets with --val-split 0 and the same C: it saw every row.
    everything = train(pooled, tmp_path / "all", head="logreg", params={"C": 0.5}, use_flipped=False, val_split=0)
    assert everything["training"]["refit"] is None and everything["metrics"] == {}
    X = np.random.default_rng(0).normal(size=(30, 8))
    np.testing.assert_array_equal(_predictions(tmp_path / "m", X), _predictions(tmp_path / "all", X))


def test_no_refit_keeps_the_head_of_the_selection_step(pooled, tmp_path):
    meta = train(pooled, tmp_path / "m", head="logreg", params={"C": 0.5}, use_flipped=False, val_split=0.25,
                 refit=False)
    assert meta["training"]["refit"] is None
    head, _ = load_model_dir(tmp_path / "m")
    assert head.pipeline_.named_steps["scale"].n_samples_seen_ == 45


def test_refit_with_mirrors_uses_every_row_and_its_mirror(pooled, tmp_path):
    meta = train(pooled, tmp_path / "m", head="logreg", params={"C": 0.5}, val_split=0.25)
    assert meta["training"]["used_flipped"] and meta["training"]["refit"]["n_training_samples"] == 120


def test_dense_refit_repeats_the_best_epoch_count(pooled, tmp_path):
    meta = train(pooled, tmp_path / "m", head="dense", params={"epochs": 4, "units": 4, "patience": 2},
                 use_flipped=False, val_split=0.25)
    best = meta["training"]["best_epoch"]
    assert meta["training"]["refit"]["params"] == {"epochs": best + 1, "patience": None}
    head, _ = load_model_dir(tmp_path / "m")
    assert len(head.history_["loss"]) == best + 1 and "val_loss" not in head.history_


@pytest.mark.parametrize("head", ["logreg", "svm"])
def test_linear_heads_search_a_small_c_grid_unless_the_user_gives_c(pooled, tmp_path, head):
    meta = train(pooled, tmp_path / "grid", head=head, use_flipped=False)
    assert meta["training"]["grid"]["best_params"]["C"] in DEFAULT_C
    given = train(pooled, tmp_path / "given", head=head, params={"C": 0.3}, use_flipped=False)
    assert given["training"]["grid"] is None and given["params"]["C"] == 0.3


def test_specialists_choose_alpha_per_group_by_cv_unless_given(keypoints, tmp_path):
    meta = train(keypoints, tmp_path / "cv", head="specialists")
    alphas = meta["training"]["alpha_per_group"]
    assert len(alphas) == 2 and all(a in DEFAULT_ALPHAS for a in alphas.values())  # left_eye, nose_tip
    # The refit chooses again on every row: model.json says what the saved head uses.
    refit = meta["training"]["refit"]
    assert refit["alpha_per_group"] == load_model_dir(tmp_path / "cv")[0].alphas_
    assert sum(refit["rows_used_per_group"].values()) > sum(meta["training"]["rows_used_per_group"].values())
    fixed = train(keypoints, tmp_path / "fixed", head="specialists", params={"alpha": 10.0})
    assert set(fixed["training"]["alpha_per_group"].values()) == {10.0}

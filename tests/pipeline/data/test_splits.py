"""Validation splits by group (pipeline.data.splits): frames of one video never sit on both sides."""

import logging

import numpy as np
import pytest

from pipeline.data.splits import group_codes, grouped_cv_folds, grouped_train_val_split
from pipeline.data.training import load_training_data
from tests.feature_files import write_feature_file


def _videos(per_class=(5, 5, 5), seed=0):
    """Labels and group names: class c has per_class[c] videos of 4..12 frames each."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for c, k in enumerate(per_class):
        for v in range(k):
            m = int(rng.integers(4, 13))
            labels += [c] * m
            groups += [f"c{c}/v{v}.mp4"] * m
    return np.array(labels), np.array(groups, dtype=object)


def _sides(groups, tr, va):
    return set(groups[tr]), set(groups[va])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_group_on_both_sides_and_every_class_validated(seed):
    labels, groups = _videos()
    tr, va, rec = grouped_train_val_split(labels, 0.2, groups=groups, stratify=True, seed=seed, by="video")
    train_g, val_g = _sides(groups, tr, va)
    assert not train_g & val_g and len(tr) + len(va) == len(labels)
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(len(labels)))
    # Stratified by group: 20% of each class's 5 videos is one video each, so every class is validated.
    assert sorted(np.unique(labels[va])) == [0, 1, 2] and rec["n_val_groups"] == 3
    assert rec["grouped"] and rec["by"] == "video" and rec["n_groups"] == 15 and rec["warning"] is None
    assert rec["classes_not_validated"] == [] and rec["val_fraction"] == round(len(va) / len(labels), 4)
    again = grouped_train_val_split(labels, 0.2, groups=groups, stratify=True, seed=seed, by="video")
    assert np.array_equal(again[1], va)  # deterministic for a seed


def test_seeds_draw_other_videos():
    labels, groups = _videos()
    vals = {tuple(grouped_train_val_split(labels, 0.2, groups=groups, stratify=True, seed=s)[1]) for s in range(6)}
    assert len(vals) > 1


def test_a_class_of_one_video_stays_in_training_and_is_reported():
    labels, groups = _videos(per_class=(4, 1, 4))
    tr, va, rec = grouped_train_val_split(labels, 0.25, groups=groups, stratify=True, seed=0, by="video")
    assert not set(labels[va]) & {1} and (labels[tr] == 1).any()
    assert rec["grouped"] and rec["classes_not_validated"] == [1]
    assert not _sides(groups, tr, va)[0] & _sides(groups, tr, va)[1]


def test_one_video_per_class_falls_back_to_rows_with_a_warning(caplog):
    labels = np.repeat([0, 1, 2], 10)
    groups = np.array([f"v{c}.mp4" for c in labels], dtype=object)  # bneck frames over flat VIDEO_DIR/<video>.mp4
    with caplog.at_level(logging.WARNING, logger="bneck"):
        tr, va, rec = grouped_train_val_split(labels, 0.2, groups=groups, stratify=True, seed=0, by="video")
    assert not rec["grouped"] and "optimistic" in rec["warning"] and "optimistic" in caplog.text
    assert len(va) == 6 and sorted(np.bincount(labels[va])) == [2, 2, 2]  # the old stratified row split


def test_groups_spanning_classes_never_empty_a_class_from_training():
    # Subjects photographed in several poses: a group's minority class must keep training rows.
    labels = np.array([0, 0, 0, 1, 0, 0, 1, 1, 1, 1, 0, 1])
    groups = np.array(list("aaaabbbcccdd"), dtype=object)
    for seed in range(10):
        tr, va, rec = grouped_train_val_split(labels, 0.5, groups=groups, stratify=True, seed=seed)
        assert set(labels[tr]) == {0, 1} and not _sides(groups, tr, va)[0] & _sides(groups, tr, va)[1]


def test_regression_groups_without_stratification():
    groups = np.repeat(np.array([f"s{i}" for i in range(10)], dtype=object), 3)
    tr, va, rec = grouped_train_val_split(len(groups), 0.3, groups=groups, stratify=False, seed=0, by="subject")
    assert rec["n_val_groups"] == 3 and len(va) == 9 and not _sides(groups, tr, va)[0] & _sides(groups, tr, va)[1]
    assert grouped_train_val_split(len(groups), 0.0, groups=groups, stratify=False)[1].size == 0


def test_cv_folds_keep_groups_whole_and_never_score_a_one_video_class():
    labels, groups = _videos(per_class=(4, 4, 1))
    folds, rec = grouped_cv_folds(labels, groups, 3, classifier=True, seed=0, by="video")
    assert rec == {"grouped": True, "by": "video", "n_folds": 3, "warning": None} and len(folds) == 3
    scored = np.concatenate([b for _, b in folds])
    assert np.array_equal(np.sort(scored), np.flatnonzero(labels != 2))  # each scorable row once
    for a, b in folds:
        assert not set(groups[a]) & set(groups[b])
        assert set(np.flatnonzero(labels == 2)) <= set(a)  # the one-video class always trains
    few, rec = grouped_cv_folds(*_videos(per_class=(1, 2)), 5, classifier=True)
    assert rec["n_folds"] == 2 and len(few) == 2  # fewer groups than folds: fewer folds
    none, rec = grouped_cv_folds(np.repeat([0, 1], 4), ["a"] * 4 + ["b"] * 4, 3, classifier=True)
    assert none is None and not rec["grouped"] and "optimistic" in rec["warning"]


def test_cv_folds_never_score_a_subject_whose_other_photos_must_train():
    # Subject s1 is the only group of class 0 and also has a photo of class 1: that photo cannot be scored
    # without testing on s1 while s1's class-0 photos train (the reviewer's case: y and groups below).
    y, g = np.array([0, 0, 1, 1, 1, 1]), np.array(["s1", "s1", "s1", "s2", "s3", "s3"])
    folds, _ = grouped_cv_folds(y, g, 2, classifier=True, seed=0)
    for a, b in folds or []:
        assert not set(g[a]) & set(g[b]) and "s1" not in set(g[b])
    rng = np.random.default_rng(0)
    for _ in range(300):  # random subjects spread over classes: no fold shares a group or lacks a tested class
        n = int(rng.integers(6, 40))
        y, g = rng.integers(0, 3, n), rng.integers(0, int(rng.integers(2, 10)), n).astype(str)
        folds, _ = grouped_cv_folds(y, g, 3, classifier=True, seed=int(rng.integers(1000)))
        for a, b in folds or []:
            assert len(b) and not set(g[a]) & set(g[b]) and set(y[b]) <= set(y[a])


def test_group_codes_follow_the_rows():
    assert group_codes(["b", "a", "b", "c"]).tolist() == [0, 1, 0, 2]


def test_training_data_of_a_grouped_file_keeps_videos_and_mirrors_together(tmp_path):
    labels, groups = _videos(per_class=(4, 4))
    path = tmp_path / "f.h5"
    write_feature_file(path, n=len(labels), shape=(4,), labels=labels, groups=list(groups), invalid=[3])
    data = load_training_data(path, val_split=0.25, seed=0)
    assert data.used_flipped and data.group_by == "video" and data.split["grouped"]
    assert data.split["n_val_groups"] == 2 and data.split["classes_not_validated"] == []
    train_rows = data.n_train_rows
    assert len(data.X) == 2 * train_rows and len(data.groups) == len(data.y) == 2 * train_rows
    assert np.array_equal(data.groups[:train_rows], data.groups[train_rows:])  # a mirror keeps its group
    # The validation rows' videos have no frame in training; rebuilding the split says which they were.
    codes = group_codes(groups)
    src = np.flatnonzero(np.arange(len(labels)) != 3)  # row 3 is invalid
    _, va, _ = grouped_train_val_split(labels[src], 0.25, groups=groups[src], stratify=True, seed=0)
    assert not set(codes[src][va]) & set(data.groups.tolist()) and len(va) == data.n_val_rows
    folds, rec = data.cv_folds(3, seed=0)
    assert rec["grouped"]
    for a, b in folds:  # an image and its mirror, and a video's frames, are never split by a fold
        assert not set(data.groups[a]) & set(data.groups[b])


def test_files_without_groups_split_by_image(tmp_path):
    write_feature_file(tmp_path / "f.h5", n=12, shape=(4,))
    data = load_training_data(tmp_path / "f.h5", val_split=0.25)
    assert data.groups is None and data.split == {"grouped": False, "by": "image"}
    assert data.cv_folds(3) == (None, None)
    val = load_training_data(tmp_path / "f.h5", val=tmp_path / "f.h5")
    assert val.split is None  # --val FILE: no split drawn


def test_train_records_the_grouped_split_and_folds(tmp_path):
    from pipeline.train import train

    labels, groups = _videos(per_class=(3, 3))
    write_feature_file(tmp_path / "f.h5", n=len(labels), shape=(4,), labels=labels, groups=list(groups))
    meta = train(tmp_path / "f.h5", tmp_path / "m", head="logreg", pooling="avg", val_split=0.34)
    split, grid = meta["training"]["split"], meta["training"]["grid"]
    assert split["grouped"] and split["by"] == "video" and split["n_val_groups"] == 2
    assert grid["cv_folds"] == {"grouped": True, "by": "video", "n_folds": 3, "warning": None}
    plain = tmp_path / "plain.h5"
    write_feature_file(plain, n=len(labels), shape=(4,), labels=labels)
    meta = train(plain, tmp_path / "m2", head="logreg", pooling="avg")
    assert meta["training"]["split"] == {"grouped": False, "by": "image"}
    assert meta["training"]["grid"]["cv_folds"] == {"grouped": False, "by": "image"}

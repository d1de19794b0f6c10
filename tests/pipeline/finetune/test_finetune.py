"""Fine-tuning: which layers train, BatchNorm statistics, best-epoch restore, flip-aware keypoints, the model dir.

And that it never makes a model worse (issue 19): the mirror choice is inherited from the starting model, the
starting model is scored as epoch 0 and written unchanged when no epoch beats it, augmentation is geometric and
small by default, and the kept epoch is chosen and counted like ``bneck train``'s.
"""

import csv
import os
import re

import keras
import numpy as np
import pytest
from PIL import Image

from features import backbones, keypoints
from features.weights import build_backbone
from pipeline.finetune import data as ftdata
from pipeline.finetune import epochs
from pipeline.finetune import train as ft
from pipeline.heads.dense_fit import EpochControl
from pipeline.serve import evaluate_images, finetuned
from pipeline.serve.stitch import stitch
from pipeline.train import train
from tests.imagefolders import make_class_folder
from tests.stage2_fixtures import extract_fast

SPEC = backbones.get("mobilenet")
LAYER = "conv_pw_2_relu"  # shallow: deeper layers of a *random* MobileNet give vanishing activations and gradients
BACKBONE = f"mobilenet_{LAYER}"  # the nested backbone model's name inside the stitched network


@pytest.fixture(scope="module")
def stage2(tmp_path_factory):
    """A class folder and a dense-head model directory trained on its features (mobilenet 32x32, random seed 1)."""
    root = tmp_path_factory.mktemp("ft")
    make_class_folder(root / "data", classes=("a", "b", "c"), per_class=8)
    feats = extract_fast(root / "data", root / "f.h5", input_size="32", layer=LAYER)
    train(feats, root / "m", head="dense", params={"epochs": 2, "units": 16})
    return {"root": root, "data": str(root / "data"), "model": str(root / "m"), "features": feats}


def _backbone():
    model, _ = build_backbone(SPEC, input_size=(32, 32), layer=LAYER, weights="none", seed=1)
    return model


def _trainable(model):
    return [layer.name for layer in model.layers if layer.trainable and layer.weights]


def test_unfreeze_last_counts_weighted_layers_and_bn_follows_train_bn():
    bb = _backbone()
    assert ft.select_trainable(bb, unfreeze_last=3) == ["conv_pw_2"]
    assert _trainable(bb) == ["conv_pw_2"] and len(bb.trainable_weights) == 1
    assert ft.select_trainable(bb, unfreeze_last=3, train_bn=True) == ["conv_dw_2_bn", "conv_pw_2", "conv_pw_2_bn"]
    assert _trainable(bb) == ["conv_dw_2_bn", "conv_pw_2", "conv_pw_2_bn"]
    assert ft.select_trainable(bb, unfreeze_last=0) == [] and bb.trainable_weights == []


def test_unfreeze_prefix():
    bb = _backbone()
    assert ft.select_trainable(bb, unfreeze="conv_pw_2,conv_dw_2") == ["conv_dw_2", "conv_pw_2"]
    assert ft.select_trainable(bb, unfreeze="conv_pw_1", train_bn=True) == ["conv_pw_1", "conv_pw_1_bn"]
    assert _trainable(bb) == ["conv_pw_1", "conv_pw_1_bn"]
    with pytest.raises(ValueError, match="prefixes in this backbone: conv1, conv"):
        ft.select_trainable(bb, unfreeze="block5")
    with pytest.raises(ValueError, match="has 10 layers with weights"):
        ft.select_trainable(bb, unfreeze_last=99)


def _run_epochs(cb, model, val_losses, start=0.0):
    """Drive a callback through epochs whose weights are 1, 2, ... (the start: ``start``) and given val_losses."""
    model.set_weights([np.full((2, 1), start, np.float32), np.zeros(1, np.float32)])
    cb.set_model(model)
    cb.on_train_begin()
    for epoch, loss in enumerate(val_losses):
        model.set_weights([np.full((2, 1), epoch + 1.0, np.float32), np.zeros(1, np.float32)])
        cb.on_epoch_begin(epoch)
        cb.on_epoch_end(epoch, {"val_loss": loss})
    cb.on_train_end()
    return model.get_weights()[0][0, 0]


def _tiny():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")  # EpochControl logs the LR
    return model


def test_best_epoch_keeps_and_restores_the_lowest_val_loss():
    cb = epochs.BestEpoch("val_loss", 3)
    assert _run_epochs(cb, _tiny(), [0.9, 0.4, 0.6]) == 2.0  # the second epoch's weights
    assert cb.best_epoch == 1 and not cb.kept_start and cb.history["val_loss"] == [0.9, 0.4, 0.6]


def test_best_epoch_keeps_the_starting_weights_when_no_epoch_beats_them():
    cb = epochs.BestEpoch("val_loss", 3, baseline=0.5)
    assert _run_epochs(cb, _tiny(), [0.7, np.nan, 0.5], start=-3.0) == -3.0  # a tie is no improvement
    assert cb.kept_start and cb.best_epoch == epochs.START == -1
    cb = epochs.BestEpoch("val_loss", 3, baseline=0.5)
    assert _run_epochs(cb, _tiny(), [0.7, 0.45, 0.3], start=-3.0) == 3.0 and cb.best_epoch == 2


@pytest.mark.parametrize("losses", [[0.9, 0.4, 0.6], [0.5, 0.5, 0.2], [np.nan, 0.3, 0.3, 0.1, 0.2]])
def test_train_and_finetune_keep_the_same_epoch_and_count_it_the_same(losses):
    """One rule: lowest val_loss, NaN never, the first of ties; best_epoch the 0-based index, like EpochControl."""
    dense = EpochControl(None, "val_loss", None)  # what `bneck train` runs for dense heads
    ours = epochs.BestEpoch("val_loss", len(losses))
    assert _run_epochs(dense, _tiny(), losses) == _run_epochs(ours, _tiny(), losses)
    assert ours.best_epoch == dense.best_epoch == int(np.nanargmin(losses))


def test_inherited_flip():
    flipped = {"features": {"flip": True}, "training": {"used_flipped": True}}
    assert ft.inherited_flip(flipped) == (True, "inherited: the head was trained with mirrored rows")
    no_rows = {"features": {"flip": True}, "training": {"used_flipped": False}}
    assert ft.inherited_flip(no_rows) == (False, "inherited: the head was trained without mirrored rows "
                                                 "(train --no-flipped)")
    no_views = {"features": {"flip": False}, "training": {"used_flipped": False}}
    assert ft.inherited_flip(no_views)[0] is False and "no mirrored views" in ft.inherited_flip(no_views)[1]
    assert ft.inherited_flip({})[0] is True  # an older model.json that says nothing: mirroring, as before
    assert ft.inherited_flip(no_rows, True) == (True, "asked for (--flip)")
    assert ft.inherited_flip(flipped, False) == (False, "asked for (--no-flip)")


NAMES = ["left_eye_center_x", "left_eye_center_y", "right_eye_center_x", "right_eye_center_y", "nose_tip_x",
         "nose_tip_y"]


def test_flip_keypoint_batch_matches_flip_targets():
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 90, (4, 6)).astype(np.float32)
    t[1, 2] = np.nan
    widths = np.array([96, 96, 40, 64], np.float32)
    x = rng.integers(0, 256, (4, 8, 8, 3)).astype(np.float32)
    flip = np.array([True, False, True, True])
    xo, to = ftdata.flip_keypoint_batch(x, t, widths, NAMES, flip)
    want = np.where(flip[:, None], keypoints.flip_targets(t, NAMES, widths), t)
    np.testing.assert_allclose(np.asarray(to), want, rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(np.asarray(xo)[flip], x[flip][:, :, ::-1])
    np.testing.assert_array_equal(np.asarray(xo)[~flip], x[~flip])


def test_keypoint_augmentation_flips_images_and_targets_together():
    n = 32
    x = np.zeros((n, 16, 16, 3), np.uint8)
    x[:, :, :8] = 200  # bright left half: its side tells whether the image was mirrored
    t = np.tile(np.array([[10.0, 5.0, 3.0, 5.0, 7.0, 9.0]], np.float32), (n, 1))
    w = np.full(n, 16, np.float32)
    xa, ta = ftdata.make_augment("regression", target_names=NAMES, seed=3)(x, t, w)
    xa, ta = np.asarray(xa), np.asarray(ta)
    mirrored = xa[:, :, 8:].mean(axis=(1, 2, 3)) > xa[:, :, :8].mean(axis=(1, 2, 3))
    assert 0 < mirrored.sum() < n  # both outcomes happen
    np.testing.assert_allclose(ta[mirrored], keypoints.flip_targets(t[mirrored], NAMES, 16))
    np.testing.assert_array_equal(ta[~mirrored], t[~mirrored])
    assert xa.dtype == np.float32 and xa.min() >= 0 and xa.max() <= 255


def test_classification_augmentation_changes_pixels_not_labels():
    x = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), np.uint8)
    y = np.arange(4)
    xa, ya = ftdata.make_augment("classification", seed=0)(x, y, np.full(4, 32, np.float32))
    assert np.asarray(xa).shape == x.shape and np.abs(np.asarray(xa) - x).mean() > 1
    np.testing.assert_array_equal(np.asarray(ya), y)


def test_default_augmentation_is_small_and_geometric():
    assert ftdata.AUGMENT == {"shift": 0.1, "zoom": 0.1, "rotation": 0.0, "brightness": 0.0, "channel_shift": 0.0}
    # Shifts, zoom and mirrors of a flat picture leave it flat: only photometric shifts change its level.
    x = np.full((8, 32, 32, 3), 120, np.uint8)
    w, y = np.full(8, 32, np.float32), np.arange(8)
    for task in ("classification", "regression"):
        xa, _ = ftdata.make_augment(task, target_names=NAMES, seed=0)(x, np.zeros((8, 6), np.float32)
                                                                     if task == "regression" else y, w)
        np.testing.assert_allclose(np.asarray(xa), 120.0, atol=1e-3)
    asked = ftdata.make_augment("classification", flip=False, seed=0, strengths={"brightness": 0.2,
                                                                               "channel_shift": 20})
    levels = np.asarray(asked(x, y, w)[0]).mean(axis=(1, 2))
    assert np.ptp(levels) > 5  # per image and channel
    with pytest.raises(ValueError, match="unknown augmentation shear"):
        ftdata.augment_strengths(shear=0.2)
    with pytest.raises(ValueError, match=">= 0: zoom=-0.1"):
        ftdata.augment_strengths(zoom=-0.1)


def test_temper_normalization_caps_the_gain_of_dead_channels():
    var = np.array([1e-6, 0.5, 1.0, 2.0], np.float32)
    inp = keras.Input((4,))
    norm = keras.layers.Normalization(mean=np.zeros(4), variance=var, name="normalize")
    head = keras.Model(inp, keras.layers.Dense(2)(norm(inp)))
    x = np.array([[0.0, 1.0, 2.0, 3.0]], np.float32)  # the dead channel at its mean: output unchanged
    before = np.asarray(head(x))
    assert ft.temper_normalization([head]) == 1
    np.testing.assert_allclose(np.asarray(head(x)), before, rtol=1e-6)
    assert norm.get_config()["variance"] == pytest.approx([0.0075, 0.5, 1.0, 2.0])  # 1e-2 x the median 0.75
    np.testing.assert_allclose(np.asarray(norm(np.ones((1, 4), np.float32)))[0, 0], 1 / np.sqrt(0.0075), rtol=1e-5)


def _layer(model, name):
    return model.get_layer(BACKBONE).get_layer(name)


@pytest.mark.slow  # ~8 s; the unit tests around it (layers, BatchNorm, epochs, mirrors) stay in the default suite
def test_finetune_end_to_end(stage2, tmp_path):
    out = str(tmp_path / "ft")
    meta = ft.finetune(stage2["model"], stage2["data"], out, unfreeze_last=3, epochs=2, batch_size=8, lr=1e-2)
    f = meta["finetune"]
    assert meta["head"] == "finetuned" and f["trainable_backbone_layers"] == ["conv_pw_2"]
    assert f["n_train"] + f["n_val"] == 24 and f["monitor"] == "val_loss" and f["best_epoch"] in (-1, 0, 1)
    assert f["flip"] is True and f["flip_reason"] == "inherited: the head was trained with mirrored rows"
    assert f["augmentation"] == ftdata.AUGMENT
    with open(os.path.join(out, "history.csv")) as fh:
        hist = list(csv.DictReader(fh))
    assert len(hist) == 2
    # The kept epoch is history.csv's row best_epoch + 1 (0-based, like `bneck train`): the lowest val_loss,
    # below the starting model's; the saved model scores exactly what that epoch logged.
    losses = [float(r["val_loss"]) for r in hist]
    if f["kept_starting_model"]:
        assert f["best_epoch"] == -1 and min(losses) >= f["val_before"]["loss"]
        kept = {"val_accuracy": f["val_before"]["accuracy"], "val_loss": f["val_before"]["loss"]}
    else:
        kept = hist[f["best_epoch"]]
        assert float(kept["val_loss"]) == min(losses) < f["val_before"]["loss"]
    assert meta["metrics"]["accuracy"] == pytest.approx(float(kept["val_accuracy"]), abs=1e-6)
    assert meta["metrics"]["val_loss"] == pytest.approx(float(kept["val_loss"]), rel=1e-4)

    model, _ = finetuned.load_finetuned(out)
    start = _backbone()
    # Frozen BN (the default): moving statistics untouched, also inside the unfrozen block.
    for name in ("conv_pw_2_bn", "conv_dw_2_bn", "conv1_bn"):
        for got, was in zip(_layer(model, name).get_weights(), start.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, was)
    kernel = start.get_layer("conv_pw_2").get_weights()[0]
    assert not np.array_equal(_layer(model, "conv_pw_2").get_weights()[0], kernel)
    np.testing.assert_array_equal(_layer(model, "conv_pw_1").get_weights()[0],
                                  start.get_layer("conv_pw_1").get_weights()[0])

    pred = finetuned.FinetunedPredictor(out)
    files = [os.path.join(stage2["data"], "a", "img000.png"), os.path.join(stage2["data"], "c", "img001.png")]
    res = list(pred.predict_files(files, top_k=2))
    assert [r["path"] for r in res] == files and all(r["label"] in "abc" and len(r["scores"]) == 2 for r in res)
    ev = evaluate_images.evaluate_on_images(out, stage2["data"])
    assert ev["n"] == 24 and ev["head"] == "finetuned" and 0 <= ev["accuracy"] <= 1
    report = finetuned.export_finetuned(out, str(tmp_path / "exp.keras"))
    assert report["max_abs_diff"] < 1e-5 and report["output_names"] == ["scores"]


@pytest.mark.slow  # a fine-tune of its own
def test_finetune_splits_a_grouped_source_by_group(stage2, tmp_path):
    import shutil

    from features.reader.groups import write_groups_file

    data = shutil.copytree(stage2["data"], tmp_path / "data")
    files = sorted(f"{c}/{n}" for c in "abc" for n in os.listdir(data / c))
    write_groups_file(data, [(p, f"{p[0]}/video{i % 4 // 2}") for i, p in enumerate(files)], by="video")
    meta = ft.finetune(stage2["model"], str(data), str(tmp_path / "ft"), unfreeze_last=1, epochs=1, batch_size=8,
                       val_split=0.34)
    f = meta["finetune"]
    assert f["split"]["grouped"] and f["split"]["by"] == "video" and f["split"]["n_groups"] == 6
    assert f["split"]["n_val_groups"] == 2 and f["n_val"] == 8 and f["n_train"] == 16  # two whole videos of 4


def _flips_asked(monkeypatch):
    """Record the ``flip`` each fine-tune hands to the augmentation."""
    asked = []

    def spy(*args, **kwargs):
        asked.append(kwargs["flip"])
        return ftdata.make_augment(*args, **kwargs)

    monkeypatch.setattr(ft, "make_augment", spy)
    return asked


@pytest.mark.slow  # 40 s on 2 shared cores: a head and two fine-tunes
def test_finetune_inherits_the_mirror_choice(stage2, tmp_path, monkeypatch, caplog):
    no_flipped = str(tmp_path / "noflip")
    meta = train(stage2["features"], no_flipped, head="dense", use_flipped=False, params={"epochs": 1, "units": 8})
    assert meta["training"]["used_flipped"] is False and meta["features"]["flip"] is True
    asked = _flips_asked(monkeypatch)
    with caplog.at_level("INFO", logger="bneck"):
        f = ft.finetune(no_flipped, stage2["data"], str(tmp_path / "a"), unfreeze_last=0, epochs=1,
                        batch_size=8)["finetune"]
    assert asked == [False] and f["flip"] is False and f["flip_reason"].startswith("inherited: the head was trained "
                                                                                   "without mirrored rows")
    assert "augmentation: mirror off, inherited: the head" in caplog.text
    f = ft.finetune(no_flipped, stage2["data"], str(tmp_path / "b"), unfreeze_last=0, epochs=1, batch_size=8,
                    flip=True)["finetune"]  # --flip overrides
    assert asked == [False, True] and f["flip"] is True and f["flip_reason"] == "asked for (--flip)"


@pytest.mark.slow  # 12 s on 2 shared cores: a fine-tune
def test_finetune_that_only_gets_worse_writes_the_starting_model_unchanged(stage2, tmp_path, caplog):
    out = str(tmp_path / "worse")
    with caplog.at_level("INFO", logger="bneck"):
        meta = ft.finetune(stage2["model"], stage2["data"], out, unfreeze_last=3, epochs=2, batch_size=8,
                           lr=1e3)  # every step overshoots
    f = meta["finetune"]
    assert f["kept_starting_model"] is True and f["best_epoch"] == -1
    assert re.search(r"epoch 0 \(the starting model\): val_accuracy [\d.]+ val_loss [\d.]+", caplog.text)
    assert "no epoch beat the starting model on validation" in caplog.text
    assert meta["metrics"]["accuracy"] == pytest.approx(f["val_before"]["accuracy"], abs=1e-6)
    assert meta["metrics"]["val_loss"] == pytest.approx(f["val_before"]["loss"], rel=1e-5)
    # Unchanged: every weight of the written network is the starting one, and so are the head's statistics
    # (which fine-tuning would otherwise have tempered).
    start, *_ = stitch(stage2["model"])
    saved, _ = finetuned.load_finetuned(out)
    assert len(saved.get_weights()) == len(start.get_weights())
    for got, want in zip(saved.get_weights(), start.get_weights()):
        np.testing.assert_array_equal(got, want)
    norms = lambda m: [n.get_config()["variance"] for n in ft.normalization_layers(m.layers)]  # noqa: E731
    assert norms(saved) == norms(start) and norms(start)
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(saved(x)), np.asarray(start(x)), rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # seconds of TensorFlow/subprocess work; the slow stage runs it (issue 18: default suite <= 4 min)
def test_train_bn_updates_moving_statistics(stage2, tmp_path):
    # No validation rows: the trained epoch is kept whatever it scores (epoch 0 could otherwise win).
    meta = ft.finetune(stage2["model"], stage2["data"], str(tmp_path / "bn"), unfreeze_last=3, train_bn=True,
                       epochs=1, batch_size=8, augment=False, val_split=0)
    assert meta["finetune"]["monitor"] == "loss" and meta["finetune"]["best_epoch"] == 0
    assert meta["finetune"]["trainable_backbone_layers"] == ["conv_dw_2_bn", "conv_pw_2", "conv_pw_2_bn"]
    model, _ = finetuned.load_finetuned(str(tmp_path / "bn"))
    start = _backbone()
    moving = lambda m, n: m.get_layer(n).moving_mean.numpy()  # noqa: E731
    assert not np.allclose(moving(model.get_layer(BACKBONE), "conv_pw_2_bn"), moving(start, "conv_pw_2_bn"))
    # BN layers outside the unfrozen part stay frozen even with --train-bn.
    np.testing.assert_array_equal(moving(model.get_layer(BACKBONE), "conv_pw_1_bn"), moving(start, "conv_pw_1_bn"))


@pytest.mark.slow  # its fixture trains a model (~3 s); finetune's usage errors stay in test_cli_usage.py
def test_finetune_refuses_bad_requests(stage2, tmp_path):
    with pytest.raises(ValueError, match="choose what to unfreeze"):
        ft.finetune(stage2["model"], stage2["data"], str(tmp_path / "x"))
    other = tmp_path / "other"
    make_class_folder(other, classes=("a", "zebra"), per_class=2)
    with pytest.raises(ValueError, match="zebra"):
        ft.finetune(stage2["model"], str(other), str(tmp_path / "x"), unfreeze_last=1)
    assert not os.path.exists(tmp_path / "x")


@pytest.fixture(scope="module")
def keypoint_model(small_faces, tmp_path_factory):
    """A dense keypoint head trained one epoch on the session's 24 small faces."""
    model = tmp_path_factory.mktemp("km") / "km"
    meta = train(small_faces["features"], model, head="dense", params={"epochs": 1, "units": 8})
    return {"paths": small_faces["paths"], "model": str(model), "meta": meta}


@pytest.mark.slow  # ~10 s: a keypoint fine-tune
def test_keypoint_finetune(keypoint_model, tmp_path):
    paths = keypoint_model["paths"]
    meta = ft.finetune(keypoint_model["model"], paths["keypoints_training"], str(tmp_path / "kft"), unfreeze_last=1,
                       epochs=1, batch_size=8, val=paths["keypoints_validation"])
    assert meta["task"] == "regression" and meta["finetune"]["monitor"] == "val_loss"
    assert np.isfinite(meta["metrics"]["rmse_px"]) and meta["finetune"]["n_val"] == 6
    ev = evaluate_images.evaluate_on_images(str(tmp_path / "kft"), paths["keypoints_validation"])
    assert ev["rmse_px"] == pytest.approx(meta["metrics"]["rmse_px"], rel=1e-4)


def _upscaled_faces(kaggle_csv, folder, factor):
    """The Kaggle CSV's faces as PNG files ``factor`` times larger, in a path + targets CSV with rescaled targets."""
    from features.keypoints import rescale_targets

    folder.mkdir()
    with open(kaggle_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    names = [c for c in rows[0] if c != "Image"]
    with open(folder / "faces.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", *names])
        for i, row in enumerate(rows):
            pixels = np.array(row["Image"].split(), np.uint8).reshape(96, 96)
            Image.fromarray(pixels).resize((96 * factor, 96 * factor), Image.BICUBIC).save(folder / f"{i}.png")
            t = np.array([float(row[n]) if row[n] else np.nan for n in names])
            w.writerow([f"{i}.png", *rescale_targets(t, names, (96, 96), (96 * factor, 96 * factor))])
    return folder / "faces.csv"


@pytest.mark.slow  # ~10 s: a keypoint fine-tune
def test_keypoints_of_larger_photos_are_scored_in_their_own_pixels(keypoint_model, tmp_path):
    paths, meta = keypoint_model["paths"], keypoint_model["meta"]
    assert meta["target_frame"] == [96, 96]
    big = _upscaled_faces(paths["keypoints_validation"], tmp_path / "big", 2)
    small = evaluate_images.evaluate_on_images(keypoint_model["model"], paths["keypoints_validation"])
    large = evaluate_images.evaluate_on_images(keypoint_model["model"], big)
    # The same faces at twice the size: errors in pixels double (up to the resampling of the pictures).
    assert large["rmse_px"] == pytest.approx(2 * small["rmse_px"], rel=0.05)
    # Fine-tuning on the large photos keeps the head's 96x96 frame: its targets are moved into it first.
    out = ft.finetune(keypoint_model["model"], big, str(tmp_path / "kft"), unfreeze_last=1, epochs=1, batch_size=8,
                      val=big, augment=False)
    assert out["target_frame"] == [96, 96]
    ev = evaluate_images.evaluate_on_images(str(tmp_path / "kft"), big)
    assert ev["rmse_px"] == pytest.approx(out["metrics"]["rmse_px"], rel=1e-4)
    assert ev["rmse_px"] < 1.5 * large["rmse_px"]  # one epoch at a small LR: near where it started, not lost


def test_report_counts_the_kept_epoch_of_train_and_finetune_alike():
    from pipeline.tools.report_data import best_epoch

    assert best_epoch({"head": "dense", "training": {"best_epoch": 2}}) == 3  # history.csv's 1-based row
    assert best_epoch({"head": "finetuned", "finetune": {"best_epoch": 2, "kept_starting_model": False}}) == 3
    assert best_epoch({"head": "finetuned", "finetune": {"best_epoch": -1, "kept_starting_model": True}}) == 0
    assert best_epoch({"head": "finetuned", "finetune": {"best_epoch": 3}}) == 3  # written before the rule: 1-based
    assert best_epoch({"head": "svm", "training": {}}) is None

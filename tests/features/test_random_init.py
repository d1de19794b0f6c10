"""The seeded random init (issue 19): BatchNorm statistics calibrated on synthetic images, so every BatchNorm
entry's features at its default layer have a sane scale and survive the float16 store; deterministic;
recorded as ``none(seed=S,bn=calibrated)``, with the old init (``none-raw``) still reachable and never mixed up.
"""

import json
import os

import h5py
import numpy as np
import pytest

from features import backbones, weights
from features.mapper.batches import lost_rows
from features.random_init import batchnorm_layers, calibration_count, synthetic_images

BN_SPECS = [s for s in backbones.REGISTRY.values() if s.batchnorm]
# About a second each at 96 px; the other BatchNorm entries are `slow`.
FAST = {"mobilenet"}
SIZE = 96


def _images(n=8, size=SIZE):
    """What the features are checked on: smooth pink noise from another seed than the calibration's, uint8 like
    decoded images. (White noise, the test fixtures' pictures, is no photograph: deep EfficientNets answer it
    with features up to ~1e5, which the float16 store's overflow check reports.)"""
    return synthetic_images(n, size, size, seed=12345).round().astype(np.uint8)


def _features(spec, weights_choice, size=SIZE, seed=0):
    from features.mapper.tf_runtime import Extractor

    model, info = weights.build_backbone(spec, input_size=(size, size), weights=weights_choice, seed=seed)
    ex = Extractor(model, spec.preprocess_function, pooling="none", flip=False, batch_size=8, device=None)
    return ex(_images(size=size))[0], info


def _check_sane(spec, feats):
    assert np.isfinite(feats).all(), spec.name
    std = float(feats.std())
    assert 1e-2 < std < 1e4, f"{spec.name}: feature std {std:.3g} at {spec.default_layer}"
    assert float(np.abs(feats).max()) < 6e4, spec.name  # float16's largest finite value is 65504
    as16 = feats.astype(np.float16)
    assert lost_rows(as16) == 0, spec.name  # no row becomes all zeros or infinite in the float16 store
    # Rounding to float16 costs at most its relative precision (2**-11) of the features' scale. Values far below
    # that scale may flush to 0 (swish's tail: -20 * sigmoid(-20) = -4e-8), as they would in a pretrained model.
    err = float(np.abs(as16.astype(np.float32) - feats).max()) / float(np.abs(feats).max())
    assert err < 1e-3, f"{spec.name}: float16 changes the features by {err:.1%} of their largest value"


@pytest.mark.parametrize("spec", [pytest.param(s, id=s.name, marks=() if s.name in FAST else pytest.mark.slow)
                                  for s in BN_SPECS])
def test_calibrated_random_init_gives_features_of_sane_scale(spec):
    size = max(SIZE, spec.min_size)
    feats, info = _features(spec, "none", size=size)
    assert info.identity == "none(seed=0,bn=calibrated)"
    _check_sane(spec, feats)


def test_the_uncalibrated_init_is_still_reachable_and_is_why_this_exists():
    spec = backbones.get("mobilenet")
    raw, info = _features(spec, "none-raw")
    assert info.identity == "none(seed=0)"  # what every file made before the calibration records
    assert float(np.abs(raw).max()) < 1e-15  # ~6e-19: float16 keeps none of it
    assert lost_rows(raw.astype(np.float16)) == len(raw)
    calibrated, _ = _features(spec, "none")
    _check_sane(spec, calibrated)


def test_an_entry_without_batchnorm_keeps_its_init_and_identity():
    spec = backbones.get("vgg16")
    a, info = _features(spec, "none", size=32)
    b, raw_info = _features(spec, "none-raw", size=32)
    assert info.identity == raw_info.identity == "none(seed=0)" and not spec.batchnorm
    np.testing.assert_array_equal(a, b)  # old VGG16 files stay valid


@pytest.mark.slow  # four builds of a BatchNorm backbone (~4 s); the default suite checks what each init records
def test_same_seed_same_weights_bit_for_bit_in_every_precision():
    spec = backbones.get("mobilenetv2")
    m1, _ = weights.build_backbone(spec, input_size=(64, 64), weights="none", seed=3)
    m2, _ = weights.build_backbone(spec, input_size=(64, 64), weights="none", seed=3)
    m3, _ = weights.build_backbone(spec, input_size=(64, 64), weights="none", seed=4)
    mixed, _ = weights.build_backbone(spec, input_size=(64, 64), weights="none", seed=3, dtype_policy="mixed_bfloat16")
    w1 = m1.get_weights()
    for other in (m2, mixed):  # calibrated in float32 whatever the policy, then copied
        assert all(np.array_equal(a, b) for a, b in zip(w1, other.get_weights(), strict=True))
    bn = batchnorm_layers(m1)[-1]
    moving = bn.moving_variance.numpy()
    assert not np.allclose(moving, 1.0)  # calibrated, not the fresh layer's 1
    assert not np.array_equal(moving, batchnorm_layers(m3)[-1].moving_variance.numpy())
    assert bn.momentum == 0.999  # MobileNetV2's own setting, put back after the pass
    assert not m1.trainable


def test_known_weights_says_what_the_build_records():
    for name, choice, identity in (("mobilenet", "none", "none(seed=2,bn=calibrated)"),
                                   ("mobilenet", "none-raw", "none(seed=2)"), ("vgg16", "none", "none(seed=2)")):
        spec = backbones.get(name)
        known = weights.known_weights(spec, choice, seed=2)
        _, built = weights.build_backbone(spec, input_size=(32, 32), weights=choice, seed=2)
        assert known == built and built.identity == identity


def test_synthetic_images_are_seeded_pink_noise():
    a, b = synthetic_images(3, 40, 48, seed=1), synthetic_images(3, 40, 48, seed=1)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 40, 48, 3) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 255
    assert not np.array_equal(a, synthetic_images(3, 40, 48, seed=2))
    # Most of the energy at low frequencies, as in photographs: neighbours are strongly correlated.
    x = a - a.mean(axis=(1, 2), keepdims=True)
    assert np.mean(x[:, 1:] * x[:, :-1]) / np.mean(x * x) > 0.5  # white noise: 0
    assert calibration_count(32, 32) == 16 and calibration_count(224, 224) == 5 and calibration_count(600, 600) == 4


def test_stage_two_rebuilds_the_init_the_file_records(tmp_path):
    from pipeline.serve.backbone import random_weights_argument

    assert random_weights_argument("none(seed=3)") == "none-raw"
    assert random_weights_argument("none(seed=3,bn=calibrated)") == "none"
    with pytest.raises(weights.WeightsError, match="does not know"):
        random_weights_argument("none(seed=3,bn=lsuv)")


def _json_lines(text):
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return {"/".join(r["path"].replace(os.sep, "/").split("/")[-2:]): r for r in rows}  # class/name


@pytest.mark.slow
def test_old_and_new_random_features_are_never_mixed(tmp_path, capsys, caplog):
    """A model trained on features of the old init (none-raw = every file made before the calibration)
    predicts on images with that init, and stage two refuses to mix those features with calibrated ones."""
    from pipeline.cli.main import main
    from tests.imagefolders import make_class_folder

    make_class_folder(tmp_path / "d", per_class=6, size=(32, 32))
    flags = ["--backbone", "mobilenet", "--input-size", "32", "--layer", "conv_pw_3_relu", "--seed", "3",
             "--precision", "fp32", "--runtime", "tensorflow", "--store-dtype", "float32", "--no-progress"]
    old, new = tmp_path / "old.h5", tmp_path / "new.h5"
    assert main(["extract", str(tmp_path / "d"), "-o", str(old), *flags, "--weights", "none-raw"]) == 0
    assert main(["extract", str(tmp_path / "d"), "-o", str(new), *flags, "--weights", "none"]) == 0
    with h5py.File(old) as f, h5py.File(new) as g:
        assert f.attrs["weights"] == "none(seed=3)" and g.attrs["weights"] == "none(seed=3,bn=calibrated)"
        old_feats = f["features"][:]
        assert not np.allclose(old_feats, g["features"][:])
    assert main(["train", str(old), "-o", str(tmp_path / "m"), "--head", "logreg"]) == 0
    capsys.readouterr()
    # predict on images rebuilds the recorded (old) init: its scores equal those on the stored features.
    assert main(["predict", str(tmp_path / "m"), str(tmp_path / "d"), "--json"]) == 0
    from_images = _json_lines(capsys.readouterr().out)
    assert main(["predict", str(tmp_path / "m"), str(old), "--json"]) == 0
    from_file = _json_lines(capsys.readouterr().out)
    assert len(from_images) == 12 and {k: v["label"] for k, v in from_images.items()} == {
        k: v["label"] for k, v in from_file.items()}
    # Features of the other init are refused by name, by evaluate and by train --val alike.
    caplog.clear()
    assert main(["evaluate", str(tmp_path / "m"), str(new)]) == 1
    assert "weights is 'none(seed=3,bn=calibrated)', expected 'none(seed=3)'" in caplog.text
    caplog.clear()
    assert main(["train", str(old), "--val", str(new), "-o", str(tmp_path / "m2"), "--head", "logreg"]) == 1
    assert "weights is 'none(seed=3,bn=calibrated)', expected 'none(seed=3)'" in caplog.text

"""Weights resolution: none (seeded), local files by layer name, the offline ImageNet cache and its errors."""

import os

import h5py
import numpy as np
import pytest

from features import backbones, weights

SPEC = backbones.get("mobilenet")
SIZE = (32, 32)


def _out(model, seed=3):
    x = np.random.default_rng(seed).uniform(-1, 1, (2, *SIZE, 3)).astype("float32")
    return np.asarray(model(x, training=False))


def test_none_is_seeded_and_reproducible():
    m1, info = weights.build_backbone(SPEC, input_size=SIZE, weights="none", seed=5)
    m2, _ = weights.build_backbone(SPEC, input_size=SIZE, weights="none", seed=5)
    m3, _ = weights.build_backbone(SPEC, input_size=SIZE, weights="none", seed=6)
    assert info.kind == "none" and info.identity == "none(seed=5,bn=calibrated)"  # MobileNet has BatchNorm
    np.testing.assert_array_equal(_out(m1), _out(m2))
    assert not np.allclose(m1.weights[0].numpy(), m3.weights[0].numpy())


def test_keras3_weights_file_roundtrip(tmp_path):
    src, _ = weights.build_backbone(SPEC, input_size=SIZE, weights="none", seed=11)
    path = str(tmp_path / "mine.weights.h5")
    src.save_weights(path)
    loaded, info = weights.build_backbone(SPEC, input_size=SIZE, weights=path, seed=0)
    assert info.kind == "file" and info.sha256 == weights.sha256_file(path)
    np.testing.assert_allclose(_out(loaded), _out(src), rtol=1e-6, atol=1e-6)


def _save_legacy(model, path):
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


@pytest.mark.slow  # builds the full classifier (~2 s); the Keras 3 weights file stays in the default suite
def test_legacy_h5_by_name_ignores_the_top(tmp_path):
    # A full model with a classifier top: loading into the notop backbone must skip the top by name.
    import keras

    src, _ = weights.build_backbone(SPEC, input_size=SIZE, weights="none", seed=12)
    x = keras.layers.GlobalAveragePooling2D()(src.output)
    full = keras.Model(src.input, keras.layers.Dense(3, name="predictions")(x))
    path = str(tmp_path / "full_model.h5")
    _save_legacy(full, path)
    loaded, _ = weights.build_backbone(SPEC, input_size=SIZE, weights=path)
    np.testing.assert_allclose(_out(loaded), _out(src), rtol=1e-6, atol=1e-6)


def test_mismatched_file_lists_layers(tmp_path):
    other, _ = weights.build_backbone(backbones.get("vgg16"), input_size=SIZE, weights="none")
    path = str(tmp_path / "vgg.h5")
    _save_legacy(other, path)
    with pytest.raises(weights.WeightsError, match=r"model layers not in the file: conv1"):
        weights.build_backbone(SPEC, input_size=SIZE, weights=path)


def test_missing_file_and_bad_suffix(tmp_path):
    with pytest.raises(weights.WeightsError, match="no such file"):
        weights.build_backbone(SPEC, input_size=SIZE, weights=str(tmp_path / "nope.h5"))
    p = tmp_path / "w.bin"
    p.write_bytes(b"x")
    with pytest.raises(weights.WeightsError, match="expected a Keras"):
        weights.build_backbone(SPEC, input_size=SIZE, weights=str(p))


def test_imagenet_uses_offline_cache(tmp_path, monkeypatch):
    # A file the test saves under the Keras cache name stands in for the real ImageNet download.
    src, _ = weights.build_backbone(SPEC, input_size=SIZE, weights="none", seed=21)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    os.makedirs(tmp_path / "models")
    cached = str(tmp_path / "models" / SPEC.notop_file)
    _save_legacy(src, cached)
    model, info = weights.build_backbone(SPEC, input_size=SIZE, weights="imagenet")
    assert info.kind == "imagenet" and info.identity == "imagenet"
    assert info.sha256 == weights.sha256_file(cached)
    np.testing.assert_allclose(_out(model), _out(src), rtol=1e-6, atol=1e-6)


def _no_download(monkeypatch):
    def refuse(*a, **k):
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(backbones.BackboneSpec, "build", _wrap_build(refuse))


def _wrap_build(refuse):
    original = backbones.BackboneSpec.build

    def build(self, *, input_size=None, weights=None):
        if weights == "imagenet":
            refuse()
        return original(self, input_size=input_size, weights=weights)

    return build


def test_imagenet_offline_error_says_how_to_prefetch(monkeypatch):
    _no_download(monkeypatch)
    with pytest.raises(weights.WeightsError) as e:
        weights.build_backbone(SPEC, input_size=SIZE, weights="imagenet")
    msg = str(e.value)
    assert SPEC.notop_file in msg and "--weights /path/to" in msg and "KERAS_HOME" in msg


def test_auto_falls_back_loudly(monkeypatch, caplog):
    _no_download(monkeypatch)
    with caplog.at_level("WARNING", logger="bneck"):
        _, info = weights.build_backbone(SPEC, input_size=SIZE, weights="auto", seed=4)
    assert info.kind == "none" and info.seed == 4 and info.identity == "none(seed=4,bn=calibrated)"
    assert "FALLING BACK TO RANDOM WEIGHTS" in caplog.text


def test_unknown_layer_is_a_clear_error():
    with pytest.raises(ValueError, match="has no layer 'block9'"):
        weights.build_backbone(SPEC, input_size=SIZE, layer="block9", weights="none")


def test_layer_choice_truncates():
    model, _ = weights.build_backbone(SPEC, input_size=(64, 64), layer="conv_pw_11_relu", weights="none")
    assert model.output_shape[1:] == (4, 4, 512)

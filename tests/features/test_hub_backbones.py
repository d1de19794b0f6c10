"""KerasHub entries (extra ``[hub]``) on small random backbones the tests configure and save themselves.

Nothing is downloaded: the registry's presets are replaced by 2-layer configs, and the preset
directory a test loads is one it wrote with ``save_to_preset``.
"""

import dataclasses
import json
import os

import numpy as np
import pytest

from features import backbones

keras_hub = pytest.importorskip("keras_hub")

HUB_SPECS = [s for s in backbones.REGISTRY.values() if s.source == "keras-hub"]
TINY = dict(num_layers=2, hidden_dim=32, num_heads=2)
# (entry, tiny config, input size): SigLIP, CLIP and ViT take their preset's size only, so the tests
# shrink the entry's size too (a replaced spec), as a user's own small preset would.
TINY_SPECS = {
    "dinov2_small": (dict(TINY, intermediate_dim=64), 28),
    "siglip_base_patch16_224": (dict(TINY, intermediate_dim=64, patch_size=14), 28),
    "clip_vit_base_patch16": (dict(TINY, intermediate_dim=64, patch_size=14), 28),
    "vit_base_patch16_224_imagenet": (dict(TINY, mlp_dim=64, patch_size=14), 28),
}


def tiny(name):
    cfg, size = TINY_SPECS[name]
    spec = backbones.get(name)
    return dataclasses.replace(spec, config=tuple({**dict(spec.config), **cfg}.items()), input_size=(size, size),
                               patch_size=cfg.get("patch_size", spec.patch_size),
                               layers=tuple(x for x in spec.layers if x in ("stage1", "encoder_block_0")))


def _x(size, n=2, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_hub_entries_are_complete():
    names = {s.name for s in HUB_SPECS}
    assert {"dinov2_small", "dinov2_base", "dinov2_large", "siglip_base_patch16_224", "siglip2_base_patch16_224",
            "clip_vit_base_patch16", "vit_base_patch16_224_imagenet"} <= names
    for s in HUB_SPECS:
        assert s.preset in keras_hub.models.Backbone.presets, s.preset  # a preset KerasHub knows
        assert getattr(keras_hub.models, s.backbone_class)
        assert s.preprocessing in ("torch", "tf", "clip") and s.runtimes == ("tensorflow", "openvino")
        assert "mean" in s.poolings and "none" in s.poolings


@pytest.mark.parametrize("name", [n if n == "dinov2_small" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in TINY_SPECS])
def test_token_model_poolings_and_flip(name):
    from features.mapper.tf_runtime import Extractor
    from features.random_init import batchnorm_layers
    from features.weights import build_backbone

    spec = tiny(name)
    size = spec.input_size[0]
    grid = size // spec.patch_size
    x = _x(size)
    shapes = {}
    for pooling in [p for p in ("none", "mean", "cls") if p in spec.poolings]:  # avg and max: as for CNNs
        model, info = build_backbone(spec, input_size=(size, size), weights="none", pooling=pooling)
        # LayerNorm transformers: nothing for the BatchNorm calibration to do, and the identity says so.
        assert info.kind == "none" and info.identity == "none(seed=0)" and not spec.batchnorm
        assert not batchnorm_layers(model)
        ex = Extractor(model, spec.preprocess_function, pooling=pooling, flip=True, batch_size=2, device=None)
        orig, flipped = ex(x)
        mirrored, _ = ex(np.ascontiguousarray(x[:, :, ::-1]))
        np.testing.assert_allclose(flipped, mirrored, rtol=1e-4, atol=1e-5)
        shapes[pooling] = orig.shape[1:]
    assert shapes["none"] == (grid, grid, 32)  # the patch grid as a map
    assert shapes["mean"] == (32,)
    if "cls" in shapes:
        assert shapes["cls"] == (32,)


def test_mean_pooling_is_the_mean_patch_token_and_cls_is_token_zero():
    import keras

    from features.weights import build_backbone

    spec = tiny("dinov2_small")
    keras.utils.set_random_seed(3)
    full = spec.build(weights=None)
    x = spec.preprocess_input(_x(28).astype(np.float32))
    tokens = np.asarray(full({"images": x}))  # (B, 1 + 4, C): the class token, then 2x2 patches
    grid = np.asarray(spec.truncate(full, spec.default_layer, "none")(x))
    np.testing.assert_allclose(grid.reshape(2, 4, 32), tokens[:, 1:], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(spec.truncate(full, spec.default_layer, "cls")(x)), tokens[:, 0], atol=1e-5)
    model, _ = build_backbone(spec, input_size=(28, 28), weights="none", layer="stage1")
    assert model.output_shape == (None, 2, 2, 32)


@pytest.mark.parametrize("name", ["dinov2_small", "clip_vit_base_patch16", "vit_base_patch16_224_imagenet"])
def test_default_layer_is_the_models_own_output(name):
    """The default patch grid is the last tokens of the model's own call (CLIP's is not its pre_layer_norm)."""
    spec = tiny(name)
    full = spec.build(weights=None)
    x = spec.preprocess_input(_x(28).astype(np.float32))
    tokens = np.asarray(full({"images": x}) if isinstance(full.input, dict) else full(x))
    grid = np.asarray(spec.truncate(full, spec.default_layer, "none")(x))
    np.testing.assert_allclose(grid.reshape(2, 4, 32), tokens[:, -4:], rtol=1e-5, atol=1e-5)


def test_siglip_cls_is_its_attention_pooling_head_and_only_at_the_last_layer():
    spec = tiny("siglip_base_patch16_224")
    full = spec.build(weights=None)
    x = spec.preprocess_input(_x(28).astype(np.float32))
    np.testing.assert_allclose(np.asarray(spec.truncate(full, spec.default_layer, "cls")(x)),
                               np.asarray(full({"images": x})), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no class token"):
        spec.truncate(full, "encoder_block_0", "cls")


def test_preprocessing_is_the_image_converters():
    """The registry's mode computes what each family's KerasHub image converter does to 0..255 pixels."""
    x = np.random.default_rng(0).uniform(0, 255, (1, 4, 4, 3)).astype(np.float32)
    for spec in HUB_SPECS:
        kernel, bias = backbones.preprocess_affine(spec.preprocessing)
        conv = keras_hub.layers.ImageConverter(scale=list(np.diag(kernel)), offset=list(bias))
        np.testing.assert_allclose(np.asarray(spec.preprocess_input(x)), np.asarray(conv(x)), rtol=1e-5, atol=1e-5)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])  # DINOv2's converter
    np.testing.assert_allclose(backbones.get("dinov2_small").preprocess_input(x), (x / 255 - mean) / std, atol=1e-4)
    np.testing.assert_allclose(backbones.get("siglip").preprocess_input(x), x / 127.5 - 1, atol=1e-5)


def _save_preset(spec, path, *, scale=None, offset=None):
    """A preset directory as KerasHub writes one: the backbone, and the image converter of ``spec``."""
    import keras

    keras.utils.set_random_seed(7)
    model = spec.build(weights=None)
    model.save_to_preset(str(path))
    kernel, bias = backbones.preprocess_affine(spec.preprocessing)
    converter = keras_hub.layers.ImageConverter(image_size=spec.input_size,
                                                scale=scale if scale is not None else list(np.diag(kernel)),
                                                offset=offset if offset is not None else list(bias))
    converter.save_to_preset(str(path))
    return model


def test_preset_directory_is_loaded_hashed_and_matches_the_models_own_call(tmp_path):
    from features.mapper.tf_runtime import Extractor
    from features.weights import build_backbone, known_weights, sha256_dir

    spec = tiny("dinov2_small")
    saved = _save_preset(spec, tmp_path / "preset")
    assert {"config.json", "image_converter.json"} <= set(os.listdir(tmp_path / "preset"))
    model, info = build_backbone(spec, input_size=(42, 42), weights=str(tmp_path / "preset"))  # DINOv2: any size
    assert info.kind == "file" and info.identity == "file:preset" and info.sha256 == sha256_dir(tmp_path / "preset")
    assert known_weights(spec, str(tmp_path / "preset")) == info
    assert model.output_shape == (None, 3, 3, 32)
    # fp32 features equal the saved model's own call (at its size) within 1e-4.
    model28, _ = build_backbone(spec, input_size=(28, 28), weights=str(tmp_path / "preset"))
    x = _x(28)
    orig, _ = Extractor(model28, spec.preprocess_function, flip=False, batch_size=2, device=None)(x)
    want = np.asarray(saved({"images": spec.preprocess_input(x.astype(np.float32))}))[:, 1:].reshape(2, 2, 2, 32)
    np.testing.assert_allclose(orig, want, rtol=1e-4, atol=1e-4)
    # The hash is of the content: a copy elsewhere hashes the same, a changed file does not.
    import shutil

    shutil.copytree(tmp_path / "preset", tmp_path / "copy")
    assert sha256_dir(tmp_path / "copy") == info.sha256
    with open(tmp_path / "copy" / "metadata.json", "a") as f:
        f.write(" ")
    assert sha256_dir(tmp_path / "copy") != info.sha256


def test_a_preset_of_another_preprocessing_is_refused(tmp_path):
    from features.weights import WeightsError, build_backbone

    spec = tiny("dinov2_small")
    _save_preset(spec, tmp_path / "p", scale=1 / 127.5, offset=-1.0)
    with pytest.raises(WeightsError, match="image converter"):
        build_backbone(spec, input_size=(28, 28), weights=str(tmp_path / "p"))


def test_offline_without_a_preset_the_error_says_what_to_fetch_and_where(tmp_path, monkeypatch):
    from features.weights import WeightsError, build_backbone

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kaggle"))

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset", offline)  # never download in a test
    spec = tiny("dinov2_small")
    with pytest.raises(WeightsError) as err:
        build_backbone(spec, input_size=(28, 28), weights="imagenet")
    text = str(err.value)
    assert "dinov2_small" in text and "config.json" in text and "model.weights.h5" in text
    assert str(tmp_path / "keras" / "presets" / "dinov2_small") in text and "--weights" in text
    with pytest.raises(WeightsError, match="not a KerasHub preset directory"):
        build_backbone(spec, input_size=(28, 28), weights=str(tmp_path / "missing"))
    model, info = build_backbone(spec, input_size=(28, 28), weights="auto")  # auto falls back to random, loudly
    assert info.kind == "none"


def test_a_cached_preset_is_found_without_a_download(tmp_path, monkeypatch):
    from features.weights import build_backbone

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    spec = tiny("dinov2_small")
    _save_preset(spec, tmp_path / "presets" / "dinov2_small")
    real = keras_hub.models.Backbone.from_preset
    calls = []
    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset",
                        lambda preset, **kw: calls.append(preset) or real(preset, **kw))
    model, info = build_backbone(spec, input_size=(28, 28), weights="imagenet")
    assert info.kind == "imagenet" and info.path == str(tmp_path / "presets" / "dinov2_small")
    assert calls == [info.path]  # loaded from the directory, not by preset name


def test_fixed_size_entries_refuse_other_sizes_and_bad_poolings():
    from features.config import ExtractConfig

    with pytest.raises(ValueError, match="224x224 inputs only"):
        backbones.parse_input_size("256", backbones.get("siglip"))
    assert backbones.parse_input_size("56", backbones.get("dinov2_small")) == (56, 56)
    with pytest.raises(ValueError, match="does not apply"):
        ExtractConfig(data="d", output="o.h5", backbone="vgg16", pooling="cls").check()
    ExtractConfig(data="d", output="o.h5", backbone="dinov2_small", pooling="cls").check()


def test_auto_runtime_picks_tensorflow_for_an_entry_openvino_does_not_convert(monkeypatch):
    from features.mapper import device, runtimes

    monkeypatch.setattr(device, "openvino_available", lambda: True)
    monkeypatch.setattr(device, "has_gpu", lambda: False)
    tf_only = dataclasses.replace(backbones.get("dinov2_small"), runtimes=("tensorflow",))
    assert runtimes.resolve_runtime("auto", tf_only) == "tensorflow"
    assert runtimes.resolve_runtime("auto", backbones.get("dinov2_small")) == "openvino"
    with pytest.raises(ValueError, match="does not run dinov2_small"):
        runtimes.resolve_runtime("openvino", tf_only)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TINY_SPECS))
def test_openvino_matches_tensorflow(name, tmp_path):
    pytest.importorskip("openvino")
    from features.mapper.ov_runtime import OpenVINOExtractor
    from features.mapper.tf_runtime import Extractor
    from features.weights import build_backbone

    spec = tiny(name)
    size = spec.input_size[0]
    x = _x(size)
    for pooling in ("none", "cls") if "cls" in spec.poolings else ("none",):
        model, _ = build_backbone(spec, input_size=(size, size), weights="none", pooling=pooling)
        want = Extractor(model, spec.preprocess_function, pooling=pooling, flip=True, batch_size=2, device=None)(x)
        got = OpenVINOExtractor(model, spec.preprocess_function, pooling=pooling, flip=True, batch_size=2,
                                precision="fp32", cache_dir=str(tmp_path))(x)
        for a, b in zip(want, got):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("spec", [s for s in HUB_SPECS if s.params], ids=lambda s: s.name)
def test_registry_config_builds_the_presets_architecture(spec):
    model = spec.build(weights=None)
    assert model.count_params() == spec.params


def test_describe_carries_the_preset():
    row = next(r for r in backbones.describe() if r["name"] == "dinov2_small")
    assert row["keras_hub_preset"] == "dinov2_small" and row["source"] == "keras-hub"
    json.dumps(row)


@pytest.mark.slow
def test_precision_wins_over_the_dtype_a_preset_was_saved_with(tmp_path, caplog):
    """A preset saved in bfloat16 runs as --precision asks (weights cast on load), and the attrs record that;
    a quantized preset, which cannot be cast, is refused by name."""
    import h5py
    import keras

    from features.weights import WeightsError, build_backbone
    from pipeline.cli.main import main
    from tests.imagefolders import make_class_folder

    keras.utils.set_random_seed(5)
    cfg = dict(patch_size=14, num_layers=2, hidden_dim=32, num_heads=2, intermediate_dim=64, image_shape=(28, 28, 3))
    keras_hub.models.DINOV2Backbone(**cfg, dtype="bfloat16").save_to_preset(str(tmp_path / "bf16"))
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["config"]["dtype"]["config"]["name"] == \
        "bfloat16"
    spec = backbones.get("dinov2_small")
    x = _x(28).astype(np.float32)
    with caplog.at_level("INFO", logger="bneck"):
        fp32, _ = build_backbone(spec, input_size=(28, 28), weights=str(tmp_path / "bf16"))
    assert "saved as bfloat16; it runs as float32" in caplog.text
    assert {layer.dtype_policy.name for layer in fp32.layers} == {"float32"}
    y32 = np.asarray(fp32(spec.preprocess_input(x)))
    assert y32.dtype == np.float32
    bf16, _ = build_backbone(spec, input_size=(28, 28), weights=str(tmp_path / "bf16"), dtype_policy="mixed_bfloat16")
    y16 = np.asarray(keras.ops.cast(bf16(spec.preprocess_input(x)), "float32"))
    assert np.abs(y16 - y32).max() > 1e-4  # bf16 compute really ran: not the fp32 model again
    # Through the CLI: the file records the precision that ran.
    make_class_folder(tmp_path / "d", per_class=2, size=(28, 28))
    flags = ["--backbone", "dinov2_small", "--input-size", "28", "--runtime", "tensorflow", "--store-dtype",
             "float32", "--no-progress", "--weights", str(tmp_path / "bf16")]
    assert main(["-q", "extract", str(tmp_path / "d"), "-o", str(tmp_path / "f.h5"), *flags,
                 "--precision", "fp32"]) == 0
    with h5py.File(tmp_path / "f.h5") as f:
        assert f.attrs["precision"] == "fp32"
    # A quantized preset: its int8 layers would run whatever --precision says.
    q = keras_hub.models.DINOV2Backbone(**cfg)
    q.quantize("int8")
    q.save_to_preset(str(tmp_path / "int8"))
    with pytest.raises(WeightsError, match="saved quantized .*--precision int8"):
        build_backbone(spec, input_size=(28, 28), weights=str(tmp_path / "int8"))

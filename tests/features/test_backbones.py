"""Contract tests run over every registry entry: each builds, names real layers, preprocesses as Keras does,
and its flipped features are the features of the mirrored image.

Building 40 graphs takes minutes on two cores, so the default suite builds three light entries
(VGG16, MobileNet, MobileNetV3Small) and ``-m slow`` builds the rest. The checks that need no model run on all.
"""

import re

import numpy as np
import pytest

from features import backbones

KERAS_SPECS = [s for s in backbones.REGISTRY.values() if s.source == "keras.applications"]
# Built in the default suite (a few seconds each at 32 px); every other entry is `slow`.
FAST = {"vgg16", "mobilenet", "mobilenetv3small"}


def _param(spec):
    return pytest.param(spec, id=spec.name, marks=() if spec.name in FAST else pytest.mark.slow)


def test_every_keras_application_is_in_the_registry():
    import keras

    constructors = {n for n in dir(keras.applications) if n[:1].isupper()}
    assert {s.constructor for s in KERAS_SPECS} == constructors
    assert len(KERAS_SPECS) == 40


@pytest.mark.parametrize("spec", KERAS_SPECS, ids=[s.name for s in KERAS_SPECS])
def test_registry_preprocessing_is_the_keras_modules_own(spec):
    """The mode the registry records (and export's 1x1 conv uses) computes the module's preprocess_input."""
    import importlib

    module = importlib.import_module(f"keras.applications.{spec.module}")
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 5, 3)).astype(np.float32)
    want = np.asarray(module.preprocess_input(x.copy()))
    np.testing.assert_allclose(np.asarray(spec.preprocess_input(x.copy())), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(backbones.affine_function(spec.preprocessing)(x)), want, rtol=1e-5,
                               atol=1e-4)
    kernel, bias = backbones.preprocess_affine(spec.preprocessing)
    np.testing.assert_allclose(x @ kernel + bias, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("spec", KERAS_SPECS, ids=[s.name for s in KERAS_SPECS])
def test_entry_is_complete(spec):
    assert spec.notop_file.endswith(".h5") and spec.family and spec.params > 0
    assert spec.min_size <= min(spec.input_size)
    assert spec.all_layers[-1] == spec.default_layer and len(spec.all_layers) >= 3
    assert backbones.get(spec.name) is spec and backbones.get(spec.constructor) is spec


def _contract(spec, size):
    import keras

    from features.mapper.tf_runtime import Extractor
    from features.weights import build_backbone

    full, _ = build_backbone(spec, input_size=(size, size), weights="none")  # the default layer: the whole model
    names = [layer.name for layer in full.layers]
    for layer in spec.all_layers:
        assert layer in names, f"{spec.name}: layer {layer} not in the model"
    assert full.layers[-1].name == spec.default_layer  # default = last conv/pool block before the top
    assert full.count_params() == spec.params
    from features.random_init import batchnorm_layers

    assert spec.batchnorm == bool(batchnorm_layers(full))  # what `--weights none` calibrates and records
    # Feature shape at each named layer: a (h, w, c) map, shrinking with depth.
    outs = [full.get_layer(n).output for n in spec.all_layers]
    shapes = [tuple(o.shape[1:]) for o in outs]
    assert all(len(s) == 3 and min(s) >= 1 for s in shapes), shapes
    assert [s[0] for s in shapes] == sorted((s[0] for s in shapes), reverse=True)
    x = np.random.default_rng(1).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    got = keras.Model(full.input, outs)(spec.preprocess_input(x.astype(np.float32)))
    assert [tuple(np.shape(g)[1:]) for g in got] == shapes
    # The original/flipped relation: the flipped view of x is the original view of mirrored x.
    ex = Extractor(spec.truncate(full, spec.all_layers[0]), spec.preprocess_function, pooling="none", flip=True,
                   batch_size=2, device=None)
    orig, flipped = ex(x)
    mirrored, _ = ex(np.ascontiguousarray(x[:, :, ::-1]))
    assert orig.shape == (2, *shapes[0])
    scale = float(np.abs(orig).max()) or 1.0  # random weights: some entries' features are ~1e-17
    np.testing.assert_allclose(flipped / scale, mirrored / scale, rtol=1e-4, atol=1e-4)
    assert np.abs(orig - flipped).max() > 1e-3 * scale  # the flip is not a no-op on a random image


@pytest.mark.parametrize("spec", [_param(s) for s in KERAS_SPECS])
def test_registry_entry_contract(spec):
    _contract(spec, max(spec.min_size, 32))


# Seeded random weights with calibrated BatchNorm (features/random_init.py) keep each layer's scale, but a
# deep random EfficientNet is chaotic: activations grow ~10x every block past block 3 and amplify float32
# rounding differences with them. TF against OpenVINO fp32 at 32 px, max |diff| / max |a| (2026-12-07):
# B0 block4c 4e-6, block6d 1e-2; B7 block3g 8e-6, block4j 0.16, block5j 0.96; V2-M block3e 2e-6, block6r 1.08.
# ImageNet weights keep the activations bounded. So these families are compared at the end of block 3, where
# every op type of theirs (MBConv, squeeze-excite, swish) has already run.
CHAOTIC_PAST_BLOCK3 = ("EfficientNet", "EfficientNetV2")


def _compared_layer(spec, size) -> str:
    from features.weights import build_backbone

    if spec.family not in CHAOTIC_PAST_BLOCK3:
        return spec.all_layers[0]
    full, _ = build_backbone(spec, input_size=(size, size), layer=spec.default_layer, weights="none")
    return [layer.name for layer in full.layers if re.fullmatch(r"block3[a-z]+_add", layer.name)][-1]


def _runtimes_agree(spec, size, tmp_path):
    """fp32 OpenVINO features equal TensorFlow's (both original and flipped views) within 1e-4 of their scale."""
    pytest.importorskip("openvino")
    from features.mapper.ov_runtime import OpenVINOExtractor
    from features.mapper.tf_runtime import Extractor
    from features.weights import build_backbone

    layer = _compared_layer(spec, size)
    model, _ = build_backbone(spec, input_size=(size, size), layer=layer, weights="none")
    x = np.random.default_rng(2).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    want = Extractor(model, spec.preprocess_function, flip=True, batch_size=2, device=None)(x)
    got = OpenVINOExtractor(model, spec.preprocess_function, flip=True, batch_size=2, precision="fp32",
                            cache_dir=str(tmp_path))(x)
    for a, b in zip(want, got):
        scale = float(np.abs(a).max()) or 1.0
        np.testing.assert_allclose(b / scale, a / scale, atol=1e-4)


OV_FAST: set = set()  # tests/features/mapper/test_openvino_runtime.py covers the runtime itself in the default suite


@pytest.mark.parametrize("spec", [pytest.param(s, id=s.name, marks=() if s.name in OV_FAST else pytest.mark.slow)
                                  for s in KERAS_SPECS if "openvino" in s.runtimes])
def test_openvino_runs_what_the_registry_says(spec, tmp_path):
    _runtimes_agree(spec, max(spec.min_size, 32), tmp_path)


def test_required_backbones_present():
    for name in ["vgg16", "vgg19", "resnet50", "inceptionv3", "xception", "mobilenet", "mobilenetv2", "efficientnetb0",
                 "densenet121"]:
        assert backbones.get(name).name == name  # names recorded by existing feature files keep resolving


def test_get_is_case_insensitive_and_lists_choices():
    assert backbones.get("VGG16").name == "vgg16"
    assert backbones.get("EfficientNetV2S").name == "efficientnetv2s"
    with pytest.raises(KeyError, match="choose one of"):
        backbones.get("alexnet")


@pytest.mark.parametrize("text,expected", [(None, (224, 224)), ("96", (96, 96)), ("96x128", (96, 128)), (64, (64, 64))])
def test_parse_input_size(text, expected):
    assert backbones.parse_input_size(text, backbones.get("vgg16")) == expected


@pytest.mark.parametrize("text", ["abc", "1x2x3", "16"])
def test_parse_input_size_rejects(text):
    with pytest.raises(ValueError):
        backbones.parse_input_size(text, backbones.get("vgg16"))


def test_describe_is_json_ready():
    import json

    rows = json.loads(json.dumps(backbones.describe()))
    assert {r["name"] for r in rows} == set(backbones.REGISTRY)
    assert {r["source"] for r in rows} == {"keras.applications", "keras-hub"}


def test_classify_refuses_an_entry_without_a_classifier():
    from pipeline.tools import classify

    with pytest.raises(ValueError, match="without one"):
        list(classify.classify([], backbone="dinov2_small"))


@pytest.mark.slow
def test_a_keras_notop_file_loads_into_the_renamed_output_layer(tmp_path):
    """Keras' ConvNeXt notop file names its last LayerNormalization with a counter; it still loads by name."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    from features.weights import load_weights_file

    spec = backbones.get("convnexttiny")
    original = keras.applications.ConvNeXtTiny(include_top=False, weights=None, input_shape=(32, 32, 3))
    assert original.layers[-1].name.startswith("layer_normalization")
    original.layers[-1].set_weights([np.full(768, 2.0, np.float32), np.full(768, 0.5, np.float32)])
    path = str(tmp_path / "convnext_tiny_notop.h5")
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, original)
    model = spec.build(input_size=(32, 32))
    load_weights_file(model, path)
    np.testing.assert_array_equal(model.get_layer(spec.default_layer).get_weights()[0], 2.0)


def test_bneck_backbones_lists_the_whole_catalogue(capsys):
    import json

    from pipeline.cli.main import main

    assert main(["backbones"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(backbones.REGISTRY) + 2  # a header, one line per entry, the legend
    assert any(line.startswith("dinov2_small ") and " hub " in line for line in lines)
    assert main(["backbones", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(backbones.REGISTRY)
    for r in rows.values():
        assert {"source", "family", "params", "gflops", "input_size", "preprocessing", "layers", "runtimes"} <= set(r)


def test_flop_count_is_two_per_multiply_add_and_covers_einsum():
    import keras

    from features.backbones.flops import count_flops

    inp = keras.Input((8, 8, 3))
    conv = keras.Model(inp, keras.layers.Conv2D(4, 3, use_bias=False)(inp))
    assert count_flops(conv, (8, 8)) == 2 * 6 * 6 * 4 * 27
    x = keras.layers.Reshape((64, 3))(inp)
    einsum = keras.Model(inp, keras.layers.EinsumDense("btc,cd->btd", output_shape=(None, 5))(x))
    assert count_flops(einsum, (8, 8)) >= 2 * 64 * 3 * 5  # TF's profiler alone counts 0 for Einsum


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg16", "mobilenetv3large", "convnexttiny"])
def test_recorded_gflops_are_measured(name):
    from features.backbones.flops import count_flops

    spec = backbones.get(name)
    assert count_flops(spec.build(weights=None), spec.input_size) / 1e9 == pytest.approx(spec.gflops, abs=0.01)

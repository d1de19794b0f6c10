"""Contract tests run over every registry entry: each builds, names real layers and preprocesses."""

import numpy as np
import pytest

from features import backbones

SPECS = list(backbones.REGISTRY.values())


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_registry_entry_contract(spec):
    size = max(spec.min_size, 32)
    model = spec.build(input_size=(size, size), weights=None)
    names = {layer.name for layer in model.layers}
    for layer in spec.all_layers:
        assert layer in names, f"{spec.name}: layer {layer} not in the model"
    assert spec.all_layers[-1] == spec.default_layer
    assert model.layers[-1].name == spec.default_layer  # default = last conv/pool block before the top
    assert spec.notop_file.endswith(".h5")
    x = np.full((1, size, size, 3), 128.0, dtype=np.float32)
    y = np.asarray(spec.preprocess_input(x.copy()))
    assert y.shape == x.shape and np.isfinite(y).all()
    if spec.preprocessing == "tf":
        assert np.allclose(y, 128 / 127.5 - 1, atol=1e-5)
    elif spec.preprocessing == "caffe":  # BGR with ImageNet means removed, never a 1/255 rescale
        assert np.allclose(y[0, 0, 0], [128 - 103.939, 128 - 116.779, 128 - 123.68], atol=1e-3)
    elif spec.preprocessing == "torch":
        assert np.allclose(y[0, 0, 0, 0], (128 / 255 - 0.485) / 0.229, atol=1e-4)
    else:  # the model rescales inside itself
        assert np.allclose(y, x)


def test_required_backbones_present():
    for name in ["vgg16", "vgg19", "resnet50", "inceptionv3", "xception", "mobilenet", "mobilenetv2", "efficientnetb0"]:
        assert backbones.get(name).name == name


def test_get_is_case_insensitive_and_lists_choices():
    assert backbones.get("VGG16").name == "vgg16"
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

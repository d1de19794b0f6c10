"""bneck classify: the full ImageNet model offline: clear errors without the files, top-k labels with them."""

import json
import os

import h5py
import numpy as np
import pytest
from PIL import Image

from features import backbones
from features.weights import WeightsError
from pipeline.tools import classify as cl

SPEC = backbones.get("mobilenet")


def _refuse_downloads(monkeypatch):
    """Every Keras download path used by classify raises, as on an offline machine (never a real download)."""
    original = backbones.BackboneSpec.build_full

    def build_full(self, *, weights="imagenet"):
        if weights == "imagenet":
            raise OSError("network unreachable (test)")
        return original(self, weights=weights)

    def decode(self, preds, top=5):
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(backbones.BackboneSpec, "build_full", build_full)
    monkeypatch.setattr(backbones.BackboneSpec, "decode_predictions", decode)


@pytest.fixture(scope="module")
def full_weights(tmp_path_factory):
    """A with-top MobileNet saved with seeded random weights in the legacy .h5 layout Keras' cache uses."""
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(7)
    model = SPEC.build_full(weights=None)
    path = str(tmp_path_factory.mktemp("w") / cl.top_file(SPEC))
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    x = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), np.uint8)
    ref = np.asarray(model(SPEC.preprocess_input(x.astype(np.float32)), training=False))
    return path, x, ref


def _fake_index(models_dir):
    os.makedirs(models_dir, exist_ok=True)
    with open(os.path.join(models_dir, cl.CLASS_INDEX_FILE), "w") as f:
        json.dump({str(i): [f"n{i:08d}", f"thing_{i}"] for i in range(1000)}, f)


def test_top_file_names():
    assert cl.top_file(SPEC) == "mobilenet_1_0_224_tf.h5"
    assert cl.top_file(backbones.get("vgg16")) == "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    assert cl.top_file(backbones.get("efficientnetb0")) == "efficientnetb0.h5"
    assert cl.top_file(backbones.get("mobilenetv2")).endswith("_1.0_224.h5")


def test_offline_without_files_names_both_files(monkeypatch, tmp_path):
    _refuse_downloads(monkeypatch)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(WeightsError) as e:
        cl.classify([str(tmp_path / "a.png")], backbone="mobilenet")
    msg = str(e.value)
    home = os.path.join(os.environ["KERAS_HOME"], "models")
    assert cl.top_file(SPEC) in msg and "include_top" not in msg and "--weights /path/to" in msg
    assert cl.CLASS_INDEX_FILE in msg and home in msg and "KERAS_HOME" in msg
    assert "network unreachable" in msg


def test_offline_missing_class_index_only(monkeypatch, full_weights):
    _refuse_downloads(monkeypatch)
    with pytest.raises(WeightsError) as e:
        cl.classify([], backbone="mobilenet", weights=full_weights[0])
    msg = str(e.value)
    assert cl.CLASS_INDEX_FILE in msg and cl.top_file(SPEC) not in msg


@pytest.mark.slow  # seconds of TensorFlow/subprocess work; the slow stage runs it (issue 18: default suite <= 4 min)
def test_classify_with_cached_files(monkeypatch, tmp_path, full_weights, capsys):
    _refuse_downloads(monkeypatch)
    path, x, ref = full_weights
    models = os.path.join(os.environ["KERAS_HOME"], "models")
    _fake_index(models)
    os.link(path, os.path.join(models, cl.top_file(SPEC)))
    for i, im in enumerate(x):
        Image.fromarray(im).save(tmp_path / f"img{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    out = list(cl.classify([str(tmp_path)], backbone="mobilenet", top_k=3))
    assert [os.path.basename(r["path"]) for r in out] == ["broken.jpg", "img0.png", "img1.png"]
    assert out[0]["error"] == "not_image"
    for r, scores in zip(out[1:], ref):
        best = np.argsort(-scores)[:3]
        assert [p["label"] for p in r["predictions"]] == [f"thing_{i}" for i in best]
        assert r["predictions"][0]["wnid"] == f"n{best[0]:08d}"
        np.testing.assert_allclose([p["score"] for p in r["predictions"]], scores[best], atol=1e-5)
    # The same file passed explicitly gives the same answer.
    again = list(cl.classify([str(tmp_path / "img0.png")], backbone="mobilenet", top_k=3, weights=path))
    assert again[0]["predictions"] == out[1]["predictions"]
    # As a user runs it: every good image is printed, and the broken one makes the exit code 1.
    from pipeline.cli.main import main

    capsys.readouterr()
    assert main(["classify", str(tmp_path), "--backbone", "mobilenet", "--top-k", "2", "--json"]) == 1
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r.get("error") for r in lines] == ["not_image", None, None]
    assert [p["label"] for p in lines[1]["predictions"]] == [p["label"] for p in out[1]["predictions"][:2]]


def test_notop_file_is_refused_with_a_hint(monkeypatch, tmp_path):
    from keras.src.legacy.saving import legacy_h5_format

    notop = SPEC.build(input_size=(32, 32), weights=None)
    path = str(tmp_path / "notop.h5")
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, notop)
    with pytest.raises(WeightsError, match="classifier top: mobilenet_1_0_224_tf.h5"):
        cl.build_classifier(SPEC, path)

"""A KerasHub backbone through the whole CLI: extract on a preset directory, train, predict, export.

The preset is a 2-layer DINOv2 the test saves itself, so nothing is downloaded.
"""

import json

import h5py
import numpy as np
import pytest

from pipeline.cli.main import main
from tests.imagefolders import make_class_folder

keras_hub = pytest.importorskip("keras_hub")

FLAGS = ["--backbone", "dinov2_small", "--input-size", "28", "--precision", "fp32", "--runtime", "tensorflow",
         "--store-dtype", "float32", "--batch-size", "4", "--no-progress"]


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    import keras

    from features import backbones

    root = tmp_path_factory.mktemp("hub")
    keras.utils.set_random_seed(5)
    model = keras_hub.models.DINOV2Backbone(patch_size=14, num_layers=2, hidden_dim=32, num_heads=2,
                                            intermediate_dim=64, image_shape=(28, 28, 3))
    model.save_to_preset(str(root / "dinov2_tiny"))
    kernel, bias = backbones.preprocess_affine("torch")
    keras_hub.layers.ImageConverter(image_size=(28, 28), scale=list(np.diag(kernel)),
                                    offset=list(bias)).save_to_preset(str(root / "dinov2_tiny"))
    make_class_folder(root / "data", classes=("a", "b"), per_class=4, size=(40, 36))
    return root


@pytest.mark.parametrize("pooling, shape", [("none", (2, 2, 32)), pytest.param("cls", (32,), marks=pytest.mark.slow)])
def test_extract_train_predict_on_a_preset_directory(preset, tmp_path, capsys, pooling, shape):
    out = tmp_path / "f.h5"
    weights = str(preset / "dinov2_tiny")
    assert main(["extract", str(preset / "data"), "-o", str(out), *FLAGS, "--weights", weights,
                 "--pooling", pooling]) == 0
    with h5py.File(out) as f:
        assert f["features"].shape == (8, *shape) and f["features_flipped"].shape == (8, *shape)
        assert f.attrs["backbone"] == "dinov2_small" and f.attrs["weights"] == "file:dinov2_tiny"
        assert f.attrs["pooling"] == pooling and len(f.attrs["weights_sha256"]) == 64
    capsys.readouterr()
    assert main(["train", str(out), "-o", str(tmp_path / "m"), "--head", "logreg",
                 *(["--pooling", "avg"] if pooling == "none" else [])]) == 0
    capsys.readouterr()
    # predict rebuilds the backbone from the recorded provenance: the preset is found by its hash.
    assert main(["predict", str(tmp_path / "m"), str(preset / "data" / "a"), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(rows) == 4 and all(r["label"] in ("a", "b") for r in rows)


@pytest.mark.slow
def test_export_keras(preset, tmp_path, capsys):
    out = tmp_path / "f.h5"
    assert main(["extract", str(preset / "data"), "-o", str(out), *FLAGS, "--weights", str(preset / "dinov2_tiny"),
                 "--pooling", "mean"]) == 0
    assert main(["train", str(out), "-o", str(tmp_path / "m"), "--head", "logreg"]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "m"), "-o", str(tmp_path / "m.keras"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["max_abs_diff"] < 1e-4 and report["top1_agreement"] == 1.0


@pytest.mark.slow
def test_finetune_unfreezes_the_transformers_own_layers(preset, tmp_path, capsys):
    out = tmp_path / "f.h5"
    assert main(["extract", str(preset / "data"), "-o", str(out), *FLAGS, "--weights", str(preset / "dinov2_tiny"),
                 "--pooling", "cls"]) == 0
    assert main(["train", str(out), "-o", str(tmp_path / "m"), "--head", "dense", "--units", "8",
                 "--epochs", "1"]) == 0
    assert main(["finetune", str(tmp_path / "m"), str(preset / "data"), "-o", str(tmp_path / "ft"),
                 "--unfreeze-last", "1", "--epochs", "1", "--val-split", "0.25"]) == 0
    meta = json.loads((tmp_path / "ft" / "model.json").read_text())
    trained = json.dumps(meta)
    assert "layernorm" in trained  # the truncated model's layers are DINOv2's own, not one nested model
    assert len(_predict_scores(capsys, tmp_path / "ft", preset / "data")) == 8  # and it loads back to predict


def _predict_scores(capsys, model_dir, images):
    capsys.readouterr()
    assert main(["predict", str(model_dir), str(images), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    return {r["path"]: [r["scores"][c] for c in sorted(r["scores"])] for r in rows}


@pytest.mark.slow
@pytest.mark.parametrize("fmt, name", [("savedmodel", "m_saved"), ("tflite", "m.tflite")])
def test_export_savedmodel_and_tflite_match_predict(preset, tmp_path, capsys, fmt, name):
    """A user's round trip: extract -> train -> export, then the artefact loaded by TensorFlow alone scores the
    images as `bneck predict` does. Tolerance 1e-4 on probabilities: both run the same float32 graph (export's
    1x1-conv preprocessing and the folded head against NumPy's), so they differ by float32 rounding only
    (measured ~1e-5; the `.keras` export of the same model: < 1e-4)."""
    import tensorflow as tf

    from features.images import load_rgb

    out = tmp_path / "f.h5"
    assert main(["extract", str(preset / "data"), "-o", str(out), *FLAGS, "--weights", str(preset / "dinov2_tiny"),
                 "--pooling", "mean"]) == 0
    assert main(["train", str(out), "-o", str(tmp_path / "m"), "--head", "logreg"]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "m"), "-o", str(tmp_path / name), "--format", fmt, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["top1_agreement"] == 1.0 and report["max_abs_diff"] < 1e-4
    want = _predict_scores(capsys, tmp_path / "m", preset / "data")
    x = np.stack([load_rgb(p, (28, 28)) for p in sorted(want)]).astype(np.float32)
    if fmt == "savedmodel":
        loaded = tf.saved_model.load(str(tmp_path / name))  # kept referenced: its variables live in it
        got = np.asarray(loaded.serve(tf.constant(x)))
    else:
        interp = tf.lite.Interpreter(model_path=str(tmp_path / name))
        interp.allocate_tensors()
        inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
        got = []
        for row in x:  # the converted model's input is (1, H, W, 3)
            interp.set_tensor(inp["index"], row[None])
            interp.invoke()
            got.append(interp.get_tensor(outp["index"])[0])
        got = np.asarray(got)
    assert len(want) == 8
    np.testing.assert_allclose(got, np.array([want[p] for p in sorted(want)]), atol=1e-4)


# SigLIP, CLIP and ViT take their preset's own input size (224): a user's preset of the real size, made tiny
# (2 layers, width 32), goes through every command a KerasHub entry must support.
FIXED_SIZE = {"siglip_base_patch16_224": "intermediate_dim", "clip_vit_base_patch16": "intermediate_dim",
              "vit_base_patch16_224_imagenet": "mlp_dim"}


def _fixed_size_preset(name, path):
    import dataclasses

    import keras

    from features import backbones

    spec = backbones.get(name)
    tiny = dict(num_layers=2, hidden_dim=32, num_heads=2, **{FIXED_SIZE[name]: 64})
    spec = dataclasses.replace(spec, config=tuple({**dict(spec.config), **tiny}.items()))
    keras.utils.set_random_seed(7)
    spec.build(weights=None).save_to_preset(str(path))  # the vision encoder alone, as a user would keep it
    kernel, bias = backbones.preprocess_affine(spec.preprocessing)
    keras_hub.layers.ImageConverter(image_size=spec.input_size, scale=list(np.diag(kernel)),
                                    offset=list(bias)).save_to_preset(str(path))


@pytest.mark.slow  # three model builds at 224 px per entry
@pytest.mark.parametrize("name", list(FIXED_SIZE))
def test_fixed_size_entries_extract_train_predict_export_and_finetune(name, preset, tmp_path, capsys):
    _fixed_size_preset(name, tmp_path / "preset")
    flags = ["--backbone", name, "--weights", str(tmp_path / "preset"), "--precision", "fp32", "--runtime",
             "tensorflow", "--store-dtype", "float32", "--batch-size", "4", "--no-progress"]
    out = tmp_path / "f.h5"
    assert main(["extract", str(preset / "data"), "-o", str(out), *flags, "--pooling", "cls"]) == 0
    with h5py.File(out) as f:
        assert f["features"].shape == (8, 32) and f.attrs["backbone"] == name
        assert f.attrs["weights"] == "file:preset" and list(f.attrs["input_size"]) == [224, 224]
        assert np.abs(f["features"][()] - f["features_flipped"][()]).max() > 0  # the mirror is another view
    assert main(["train", str(out), "-o", str(tmp_path / "m"), "--head", "logreg"]) == 0
    rows = _predict_scores(capsys, tmp_path / "m", preset / "data")  # the backbone rebuilt from the preset
    assert len(rows) == 8
    assert main(["export", str(tmp_path / "m"), "-o", str(tmp_path / "m.keras"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["max_abs_diff"] < 1e-4 and report["top1_agreement"] == 1.0
    assert main(["train", str(out), "-o", str(tmp_path / "d"), "--head", "dense", "--units", "8", "--epochs",
                 "1"]) == 0
    assert main(["finetune", str(tmp_path / "d"), str(preset / "data"), "-o", str(tmp_path / "ft"),
                 "--unfreeze-last", "1", "--epochs", "1", "--val-split", "0.25"]) == 0
    assert json.loads((tmp_path / "ft" / "model.json").read_text())["head"] == "finetuned"
    # The fine-tuned network keeps KerasHub's layers and bneck's token layer: it loads back (the KerasHub ViT
    # layer only with bneck's fix of its config) and predicts.
    assert len(_predict_scores(capsys, tmp_path / "ft", preset / "data")) == 8

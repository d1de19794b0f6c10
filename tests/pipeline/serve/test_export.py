"""pipeline.serve.export: one stitched model (pixels -> scores/targets) that matches Predictor.

Tolerances asserted against ``Predictor(model_dir).predict_arrays`` on the same uint8 images
(features stored as float32, so predict has no storage rounding to differ by):

* keras / savedmodel, float32: max abs diff <= 1e-4 on class probabilities, relative 1e-4 on
  regression targets (measured ~3e-7 and ~7e-7: the same float32 arithmetic, different order);
* tflite float32: <= 1e-3 (measured ~4e-7; the converter fuses conv + batch norm);
* tflite float16 weights: <= 1e-2 (probabilities) / relative 1e-2 (targets) (measured ~1e-3);
* tflite int8: runs and gives finite probabilities; on these noise images with a random-weights
  backbone the features barely differ between images, so int8 keeps top-1 on only some of them
  (measured 0.1-0.9 agreement) and nothing tighter is asserted.

The backbone is MobileNet with random weights cut at ``conv_pw_1_relu`` (16x16x64 maps): its
deeper random layers shrink activations to ~1e-20, which would make folded scaler weights
overflow float16, and a 16x16 map also checks that Flatten orders features like the heads do.
"""

import csv
import os

import keras
import numpy as np
import pytest
from PIL import Image

from features import backbones
from features.config import ExtractConfig
from features.runner import extract
from pipeline.serve import artefact, stitch
from pipeline.serve import export as ex
from pipeline.serve.predictor import Predictor
from pipeline.train import train
from tests.imagefolders import make_class_folder

CFG = dict(backbone="mobilenet", layer="conv_pw_1_relu", input_size="32", weights="none", seed=3, precision="fp32",
           store_dtype="float32", batch_size=4, progress=False, flip=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Model dirs for every head kind, and the images (uint8) and predictions to check against."""
    d = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KERAS_HOME", str(d / "keras_home"))  # nothing cached is ever used
        pics = make_class_folder(d / "data", classes=("a", "b", "c"), per_class=6)
        make_class_folder(d / "bin", classes=("no", "yes"), per_class=5, seed=1)
        with open(d / "t.csv", "w", newline="") as f:  # interleaved groups a: [0, 2], b: [1, 3], c: [4]
            w = csv.writer(f)
            w.writerow(["path", "a_x", "b_x", "a_y", "b_y", "c"])
            rng = np.random.default_rng(1)
            w.writerows([os.path.join("data", p), *np.round(rng.uniform(0, 32, 5), 2)] for p in sorted(pics))
        extract(ExtractConfig(data=str(d / "data"), output=str(d / "f.h5"), **CFG))
        extract(ExtractConfig(data=str(d / "bin"), output=str(d / "b.h5"), **CFG))
        extract(ExtractConfig(data=str(d / "t.csv"), output=str(d / "r.h5"), **{**CFG, "pooling": "max"}))
        dense = {"epochs": 2, "units": 8}
        train(d / "f.h5", d / "dense", head="dense", params=dense)
        train(d / "f.h5", d / "logreg", head="logreg", pooling="avg")
        train(d / "f.h5", d / "svm", head="svm")
        train(d / "f.h5", d / "rbf", head="svm", pooling="avg", params={"kernel": "rbf"})
        train(d / "b.h5", d / "bin_logreg", head="logreg", pooling="max")
        train(d / "b.h5", d / "bin_dense", head="dense", params=dense)
        train(d / "r.h5", d / "specialists", head="specialists")
        x = np.concatenate([np.stack([pics[p] for p in sorted(pics)[::4]]),
                            np.random.default_rng(5).integers(0, 256, (2, 32, 32, 3), np.uint8)])
        names = ("dense", "logreg", "svm", "bin_logreg", "bin_dense", "specialists")
        yield {"dir": d, "x": x, "want": {m: Predictor(d / m).predict_arrays(x) for m in names}}


def _run(path, fmt, x):
    return artefact.open_artefact(str(path), fmt)[0](x)


def _close(got, want, tol, regression):
    got, want = got.reshape(want.shape[0], -1), want.reshape(want.shape[0], -1)
    scale = np.abs(want).max() if regression else 1.0
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * scale)


@pytest.mark.parametrize("mode,backbone", [("caffe", "vgg16"), ("tf", "mobilenet"), ("torch", "densenet121"),
                                           ("none (in model)", "efficientnetb0")])
def test_preprocess_layer_equals_preprocess_input(mode, backbone):
    spec = backbones.get(backbone)
    assert spec.preprocessing == mode
    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, stitch.preprocessing_layer(mode)(inp))
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    x[0, 0, 0] = [255, 0, 128]  # extremes, and channels that differ (catches a missing RGB->BGR)
    np.testing.assert_allclose(np.asarray(model(x)), spec.preprocess_input(x.copy()), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", ["dense", "logreg", "svm", "specialists",
                                  pytest.param("bin_logreg", marks=pytest.mark.slow),
                                  pytest.param("bin_dense", marks=pytest.mark.slow)])
def test_keras_export_matches_predict_and_loads_safely(models, name, tmp_path):
    out = tmp_path / "m.keras"
    report = ex.export(models["dir"] / name, out)
    regression = name == "specialists"
    assert report["format"] == "keras" and report["bytes"] == os.path.getsize(out) > 0
    assert report["input_shape"] == [None, 32, 32, 3]
    assert report["output_names"] == ["targets" if regression else "scores"]
    assert report.get("target_frame") == ([32, 32] if regression else None)  # the pixels its keypoints are in
    assert report["max_rel_diff" if regression else "max_abs_diff"] <= 1e-4
    assert os.listdir(tmp_path) == ["m.keras"]  # no temporary file left behind
    model = keras.saving.load_model(out, safe_mode=True, compile=False)  # built-in layers only
    assert model.get_layer("preprocess").trainable is False
    got, want = np.asarray(model(models["x"].astype("float32"))), models["want"][name]
    if regression:
        assert np.isfinite(got).all() and got.shape == (len(models["x"]), 5)
    _close(got, want, 1e-4, regression)


def test_an_export_that_does_not_load_back_is_refused_and_keeps_the_old_file(models, tmp_path, monkeypatch):
    # A KerasHub layer whose saved config its own constructor refuses was one such case (ViT, KerasHub 0.32).
    out = tmp_path / "m.keras"
    out.write_bytes(b"the export of yesterday")

    def unreadable(path, format):
        raise TypeError("Unrecognized keyword arguments passed to SomeLayer: {'num_patches': 196}")

    monkeypatch.setattr(artefact, "open_artefact", unreadable)
    with pytest.raises(ValueError, match=r"m\.keras: the exported keras model does not load back \(TypeError: "
                                         r"Unrecognized keyword.*nothing was written"):
        ex.export(models["dir"] / "logreg", out, overwrite=True)
    assert out.read_bytes() == b"the export of yesterday" and os.listdir(tmp_path) == ["m.keras"]


@pytest.mark.slow  # ~6 s per head: TFLite conversion (float16 stays default)
@pytest.mark.parametrize("name", ["dense", "logreg", "svm", "specialists"])
def test_tflite_float32_matches_predict(models, name, tmp_path):
    report = ex.export(models["dir"] / name, tmp_path / "m.tflite", format="tflite")
    assert report["max_abs_diff"] < 1e-2
    _close(_run(tmp_path / "m.tflite", "tflite", models["x"]), models["want"][name], 1e-3, name == "specialists")


@pytest.mark.slow  # a TFLite conversion each (~4 s); the float32 and Keras exports stay in the default suite
@pytest.mark.parametrize("name", ["logreg", "specialists"])
def test_tflite_float16_within_1e_2(models, name, tmp_path):
    report = ex.export(models["dir"] / name, tmp_path / "h.tflite", format="tflite", quantize="float16")
    full = ex.export(models["dir"] / name, tmp_path / "f.tflite", format="tflite", check=False)
    # ~3.5k weights next to ~8 KB of flatbuffer overhead: 0.77 measured with the calibrated random init (0.7 before).
    assert report["bytes"] < 0.8 * full["bytes"] and "max_abs_diff" not in full
    _close(_run(tmp_path / "h.tflite", "tflite", models["x"]), models["want"][name], 1e-2, name == "specialists")


@pytest.mark.slow  # int8 calibration and conversion
def test_tflite_int8_runs_on_images_found_under_source_root(models, tmp_path):
    report = ex.export(models["dir"] / "logreg", tmp_path / "q.tflite", format="tflite", quantize="int8",
                       n_representative=10)
    assert report["n_checked"] == 8 and 0 <= report["top1_agreement"] <= 1
    got = _run(tmp_path / "q.tflite", "tflite", models["x"])
    assert got.shape == models["want"]["logreg"].shape and np.isfinite(got).all()
    np.testing.assert_allclose(got.sum(axis=1), 1, atol=0.02)


def test_int8_without_images_is_a_clear_error(models, tmp_path, monkeypatch):

    monkeypatch.setattr(artefact, "find_images", lambda root, n: [])  # where calibration looks it up
    with pytest.raises(ValueError, match="representative images"):
        ex.export(models["dir"] / "logreg", tmp_path / "q.tflite", format="tflite", quantize="int8")
    assert not os.listdir(tmp_path)


@pytest.mark.slow  # a SavedModel export and load (~3 s); the Keras export stays in the default suite
def test_savedmodel_serves_the_same_scores_and_replaces_only_a_savedmodel(models, tmp_path):
    out = tmp_path / "sm"
    for again in (False, True):  # the second export replaces the first, when asked to
        report = ex.export(models["dir"] / "svm", out, format="savedmodel", overwrite=again)
        assert report["max_abs_diff"] <= 1e-4
    with pytest.raises(FileExistsError, match="already exists .*--overwrite"):
        ex.export(models["dir"] / "svm", out, format="savedmodel")
    _close(_run(out, "savedmodel", models["x"]), models["want"]["svm"], 1e-4, False)
    assert sorted(os.listdir(tmp_path)) == ["sm"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a SavedModel"):
        ex.export(models["dir"] / "svm", tmp_path / "other", format="savedmodel", overwrite=True)
    assert os.listdir(tmp_path / "other") == ["keep.txt"]


def test_representative_images_take_directories_and_bad_ones_are_named(models, tmp_path):
    from pipeline.serve.artefact import calibration_images

    root = tmp_path / "imgs"
    make_class_folder(root, classes=("a",), per_class=3, size=(40, 40))
    calib = calibration_images([root], (32, 32), 10, None, "")
    assert calib.shape == (3, 32, 32, 3) and calib.dtype == np.uint8
    (root / "a" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0junk")
    with pytest.raises(ValueError, match=r"zz_broken\.jpg: truncated"):
        calibration_images([root], (32, 32), 10, "int8", "")
    with pytest.raises(FileNotFoundError, match="nope: no such file"):
        calibration_images([tmp_path / "nope"], (32, 32), 10, None, "")


def test_rbf_svm_and_bad_arguments_are_refused(models, tmp_path):
    with pytest.raises(ValueError, match="only linear scikit-learn heads convert to a Dense layer"):
        ex.export(models["dir"] / "rbf", tmp_path / "m.keras")
    with pytest.raises(ValueError, match="format"):
        ex.export(models["dir"] / "svm", tmp_path / "m.onnx", format="onnx")
    with pytest.raises(ValueError, match="tflite.? only"):
        ex.export(models["dir"] / "svm", tmp_path / "m.keras", quantize="int8")
    with pytest.raises(ValueError, match=".keras"):
        ex.export(models["dir"] / "svm", tmp_path / "m.h5")
    assert not os.listdir(tmp_path)


def test_specialists_with_a_nonlinear_base_are_refused():
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVR

    from pipeline.heads import SpecialistsHead

    rng = np.random.default_rng(0)
    head = SpecialistsHead(base=make_pipeline(StandardScaler(), SVR()), groups={"p": [0]}).fit(
        rng.normal(size=(10, 4)), rng.normal(size=(10, 1)))
    with pytest.raises(ValueError, match="only linear scikit-learn heads convert to a Dense layer"):
        stitch._head_output(head, {"head": "specialists", "task": "regression"}, keras.Input((4,)))


def _photos(root, n=6):
    """Large JPEGs with photo-like structure (smooth shading, edges, fine texture) at several sizes and aspects."""
    rng = np.random.default_rng(11)
    sizes = [(240, 320), (480, 640), (150, 200), (333, 250), (96, 700), (512, 384)][:n]
    paths = []
    for i, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        img = np.stack([128 + 100 * np.sin(6 * xx + c + i) * np.cos(4 * yy - c) for c in range(3)], -1)
        for _ in range(12):  # hard-edged rectangles: what a resize filter gets wrong first
            y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
            img[y0:y0 + rng.integers(4, h // 3 + 5), x0:x0 + rng.integers(4, w // 3 + 5)] = rng.integers(0, 256, 3)
        img += rng.normal(0, 12, img.shape)  # sensor-like noise
        p = os.path.join(root, f"photo{i}.jpg")
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(p, quality=90)
        paths.append(p)
    return paths


@pytest.mark.slow  # ~4 s: four exports and their reloads
def test_large_jpegs_agree_with_predict_both_ways(models, tmp_path):
    """Predict vs an exported model fed (i) bneck-decoded pixels, (ii) with --any-size raw full-size pixels.

    (i) is the same pixels, so only float32 order differs (<= 1e-4 as above). (ii) has no libjpeg
    reduced-size decode (a 640x480 JPEG for this 32x32 model is decoded at 1/8 scale before bneck's
    resize). Measured on these 6 photos: the model's own resize equals plain Pillow BILINEAR within
    1 grey level (mean 0.05-0.12), and differs from bneck's pixels by 0.5-2.2 grey levels on average
    (max 50, on hard edges): the reduced-size decode is the whole gap. Scores differ by at most
    7.2e-3 (logreg) and 5.5e-2 (dense, random-weights features) with 6/6 top-1 labels kept.
    Pinned: mean grey <= 3, scores <= 0.02 / 0.1, top-1 >= 5/6, TF vs Pillow mean <= 0.25.
    """
    from features import images

    paths = _photos(tmp_path)
    bneck_px = np.stack([images.load_rgb(p, (32, 32)) for p in paths])  # what predict feeds its backbone
    for name, tol in (("logreg", 0.02), ("dense", 0.1)):
        want = Predictor(models["dir"] / name).predict_arrays(bneck_px)
        fixed = ex.export(models["dir"] / name, tmp_path / f"{name}.keras")
        anysize = ex.export(models["dir"] / name, tmp_path / f"{name}_any.keras", any_size=True)
        assert fixed["input_contract"]["dtype"] == "float32" and fixed["input_contract"]["size"] == [32, 32]
        assert anysize["input_contract"]["dtype"] == "uint8" and anysize["input_contract"]["resize_in_model"]
        assert anysize["input_shape"] == [None, None, None, 3] and anysize["max_abs_diff"] <= 1e-4
        run_fixed = artefact.open_artefact(str(tmp_path / f"{name}.keras"), "keras")[0]
        run_any = artefact.open_artefact(str(tmp_path / f"{name}_any.keras"), "keras")[0]
        _close(run_fixed(bneck_px), want, 1e-4, False)  # (i)
        _close(run_any(bneck_px), want, 1e-4, False)  # at the model's size the resize is the identity
        got = np.concatenate([run_any(images.load_rgb(p)[None]) for p in paths])  # (ii) full size, as decoded
        assert np.abs(got - want).max() <= tol, (name, np.abs(got - want).max())
        assert (got.argmax(1) == want.argmax(1)).sum() >= 5, name
    # The pixels themselves: the in-model resize of the full-size decode vs bneck's, and vs plain Pillow.
    resize = keras.layers.Resizing(32, 32, interpolation="bilinear", antialias=True)
    for p, bneck in zip(paths, bneck_px):
        full = images.load_rgb(p)
        tf_px = np.asarray(resize(full[None]))[0].astype(float)
        pil_px = np.asarray(Image.fromarray(full).resize((32, 32), Image.Resampling.BILINEAR), float)
        assert np.abs(tf_px - bneck).mean() <= 3.0, p
        assert np.abs(tf_px - pil_px).mean() <= 0.25 and np.abs(tf_px - pil_px).max() <= 2, p


def test_input_contract_in_dir_export_and_any_size_refusals(models, tmp_path, capsys):
    from pipeline.cli.main import main
    from pipeline.modeldir import read_model_json

    report = ex.export(models["dir"] / "logreg", tmp_path / "copy", format="dir")
    contract = read_model_json(tmp_path / "copy")["input_contract"]
    assert contract == report["input_contract"] and contract["size"] == [32, 32]
    assert contract["channel_order"] == "RGB" and contract["range"] == [0, 255] and "draft" in contract[
        "jpeg_reduced_decode"]
    with pytest.raises(ValueError, match="not a TFLite builtin"):
        ex.export(models["dir"] / "logreg", tmp_path / "m.tflite", format="tflite", any_size=True)
    assert main(["export", str(models["dir"] / "logreg"), "-o", str(tmp_path / "m.tflite"), "--format", "tflite",
                 "--any-size"]) == 2
    assert "--any-size applies to --format keras or savedmodel" in capsys.readouterr().err
    assert not (tmp_path / "m.tflite").exists()


@pytest.mark.slow  # ~4 s: a SavedModel export
def test_any_size_savedmodel_takes_uint8_of_any_size(models, tmp_path):
    report = ex.export(models["dir"] / "svm", tmp_path / "sm", format="savedmodel", any_size=True)
    assert report["max_abs_diff"] <= 1e-4 and report["input_contract"]["dtype"] == "uint8"
    run = artefact.open_artefact(str(tmp_path / "sm"), "savedmodel")[0]
    _close(run(models["x"]), models["want"]["svm"], 1e-4, False)
    big = np.repeat(np.repeat(models["x"][:2], 3, axis=1), 2, axis=2)  # 96x64: resized inside the model
    assert run(big).shape == models["want"]["svm"][:2].shape

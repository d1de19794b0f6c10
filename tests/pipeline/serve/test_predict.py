"""pipeline.serve.predict: --tta-flip averages the original and the mirror, and un-mirrors keypoints in the
frame the head predicts in (the training images' size); keypoints come back in the new image's pixels."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from PIL import Image

from features import images
from features.config import ExtractConfig
from features.keypoints import flip_targets, rescale_targets
from features.runner import extract
from pipeline.serve.predictor import Predictor
from pipeline.train import train
from tests.imagefolders import make_class_folder

CFG = dict(backbone="mobilenet", layer="conv_pw_1_relu", input_size="32", weights="none", seed=3, precision="fp32",
           store_dtype="float32", batch_size=4, progress=False)
NAMES = ["left_eye_x", "left_eye_y", "right_eye_x", "right_eye_y", "nose_x", "nose_y"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A classifier and a keypoint regressor trained on 32x32 images, and one 64x48 test picture."""
    d = tmp_path_factory.mktemp("predict")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KERAS_HOME", str(d / "keras_home"))
        pics = make_class_folder(d / "data", classes=("a", "b"), per_class=6)
        with open(d / "t.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", *NAMES])
            rng = np.random.default_rng(1)
            w.writerows([os.path.join("data", p), *np.round(rng.uniform(0, 32, len(NAMES)), 2)] for p in sorted(pics))
        extract(ExtractConfig(data=str(d / "data"), output=str(d / "c.h5"), **CFG))
        extract(ExtractConfig(data=str(d / "t.csv"), output=str(d / "r.h5"), **{**CFG, "pooling": "avg"}))
        train(d / "c.h5", d / "logreg", head="logreg", pooling="avg")
        meta = train(d / "r.h5", d / "ridge", head="specialists")
        big = d / "big.png"  # another size than the training images
        Image.fromarray(np.random.default_rng(7).integers(0, 256, (48, 64, 3), np.uint8)).save(big)
        yield {"dir": d, "meta": meta, "big": str(big)}


def _decoded(path):
    arr, size, reason = images.decode(path, (32, 32))
    assert reason in (None, "") and tuple(size) == (48, 64)
    return arr[None]


def test_tta_flip_averages_the_mirror_for_classifiers(models):
    x = _decoded(models["big"])
    plain, tta = Predictor(models["dir"] / "logreg"), Predictor(models["dir"] / "logreg", tta_flip=True)
    want = (plain.predict_arrays(x) + plain.predict_arrays(x[:, :, ::-1].copy())) / 2
    got = next(iter(tta.predict_files([models["big"]], top_k=2)))["scores"]
    names = plain.meta["class_names"]
    np.testing.assert_allclose([got[n] for n in names], want[0], atol=1e-5)
    assert not np.allclose(want, plain.predict_arrays(x), atol=1e-6)  # the mirror did change the scores


def test_keypoints_are_unmirrored_in_the_training_frame(models):
    assert models["meta"]["target_frame"] == [32, 32]
    x = _decoded(models["big"])
    plain, tta = Predictor(models["dir"] / "ridge"), Predictor(models["dir"] / "ridge", tta_flip=True)
    mirrored = flip_targets(plain.predict_arrays(x[:, :, ::-1].copy()), NAMES, 32)  # not 64, the new width
    want = rescale_targets((plain.predict_arrays(x) + mirrored) / 2, NAMES, (32, 32), (48, 64))
    got = next(iter(tta.predict_files([models["big"]])))["targets"]
    np.testing.assert_allclose([got[n] for n in NAMES], want[0], atol=1e-3)


def test_keypoints_come_back_in_the_new_images_own_pixels(models):
    plain = Predictor(models["dir"] / "ridge")
    in_frame = plain.predict_arrays(_decoded(models["big"]))[0]  # what the head says, in 32x32 training pixels
    result = next(iter(plain.predict_files([models["big"]])))
    assert result["image_size"] == [48, 64]
    got = np.array([result["targets"][n] for n in NAMES])
    # 64 wide, 48 high: x scale 2, y scale 1.5 about the pixel-centre convention's edges.
    np.testing.assert_allclose(got[[0, 2, 4]], (in_frame[[0, 2, 4]] + 0.5) * 2 - 0.5, atol=1e-3)
    np.testing.assert_allclose(got[[1, 3, 5]], (in_frame[[1, 3, 5]] + 0.5) * 1.5 - 0.5, atol=1e-3)


def test_other_weights_than_the_features_were_made_with_are_refused(models, tmp_path):
    import json
    import shutil

    from features.weights import WeightsError
    from pipeline.serve.export import export

    m = tmp_path / "m"
    shutil.copytree(models["dir"] / "logreg", m)
    meta = json.loads((m / "model.json").read_text())
    meta["features"]["weights_sha256"] = "0" * 64  # as if the weights file had changed since extraction
    (m / "model.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="differ from those the features were made with"):
        Predictor(m)
    with pytest.raises(WeightsError, match="differ from those the features were made with"):
        export(m, tmp_path / "x.keras", format="keras")


def test_which_inputs_predict_reads_as_dataset_sources(tmp_path):
    from pipeline.serve.predict import source_kind
    from tests.datafiles import png_bytes, write_tar

    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(png_bytes(0))
    write_tar(tmp_path / "photos" / "stray.tar", [("k", {"png": png_bytes(1)})])
    (tmp_path / "shards").mkdir()
    write_tar(tmp_path / "shards" / "0.tar", [("k", {"png": png_bytes(1)})])
    (tmp_path / "test.csv").write_text("ImageId,Image\n1,0 0 0 0\n")
    (tmp_path / "paths.csv").write_text("path\nphotos/a.png\n")
    (tmp_path / "list.txt").write_text("photos/a.png\n")
    (tmp_path / "f.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    make_class_folder(tmp_path / "classes", classes=("a", "b"), per_class=1)
    got = {name: source_kind(str(tmp_path / name)) for name in
           ["photos", "photos/a.png", "shards", "shards/{0..0}.tar", "test.csv", "paths.csv", "list.txt", "f.h5",
            "classes", "typo.csv"]}
    assert got == {"photos": None, "photos/a.png": None, "shards": "webdataset", "shards/{0..0}.tar": "webdataset",
                   "test.csv": "kaggle_keypoints", "paths.csv": "csv", "list.txt": "list", "f.h5": None,
                   "classes": None, "typo.csv": None}


def test_predict_goes_through_a_sources_rows_keeping_bad_ones_in_place(models, tmp_path):
    from pipeline.serve.predict import predict
    from tests.datafiles import png_bytes, write_tar

    write_tar(tmp_path / "a.tar", [("k0", {"png": png_bytes(0)}), ("k1", {"txt": "no image"}),
                                   ("k2", {"png": png_bytes(2)})])
    (tmp_path / "l.txt").write_text("gone.png\n")
    got = list(predict(models["dir"] / "logreg", [tmp_path / "a.tar", models["big"], tmp_path / "l.txt"], top_k=1))
    assert [(r.get("row"), r["path"], r.get("error")) for r in got] == [
        (0, "a.tar#k0", None), (1, "a.tar#k1", "not_image"), (2, "a.tar#k2", None), (None, models["big"], None),
        (0, "gone.png", "missing")]
    assert all(r["label"] in ("a", "b") for r in got if "error" not in r)

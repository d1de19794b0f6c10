"""`bneck extract` on the layouts users have (issue 22), run through the CLI's main on tiny files the test writes:
webdataset tars, parquet, an unlabelled folder; sharded, merged, resumed; info, train, evaluate and predict on them."""

import csv
import json
import os
import tarfile

import h5py
import numpy as np
import pytest

from PIL import Image

from features import faults
from pipeline.cli.main import main
from tests.datafiles import png_bytes, write_parquet, write_shards

FAST = ["--backbone", "mobilenet", "--input-size", "32", "--weights", "none", "--seed", "2", "--precision", "fp32",
        "--store-dtype", "float32", "--batch-size", "2", "--chunk-rows", "2", "--no-progress",
        "--max-bad-fraction", "0.5", "--json"]


def _json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _extract(capsys, data, out, *extra):
    capsys.readouterr()
    rc = main(["extract", str(data), "-o", str(out), *FAST, *extra])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return _json_lines(captured.out)[-1]


def _info(capsys, path):
    capsys.readouterr()
    assert main(["info", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _cut_shards(tmp_path):
    files = write_shards(tmp_path / "shards", n_shards=3, per_shard=3)
    data = open(files[2], "rb").read()
    with tarfile.open(files[2]) as tf:
        last_png = [x for x in tf.getmembers() if x.name.endswith(".png")][-1]
    open(files[2], "wb").write(data[:last_png.offset_data + 40])  # the last sample's image is cut off
    return tmp_path / "shards" / "{00000..00002}.tar"


def test_webdataset_shards_with_a_cut_off_tar(tmp_path, capsys):
    full = _extract(capsys, _cut_shards(tmp_path), tmp_path / "full.h5")
    assert full["rows"] == 9 and full["bad_reasons"] == {"truncated": 1}
    info = _info(capsys, tmp_path / "full.h5")
    assert info["task"] == "classification" and info["classes"] == {"0": 5, "1": 3}
    assert info["attrs"]["source_kind"] == "webdataset"
    assert info["bad_rows"] == [{"row": 8, "path": "00002.tar#s2k2", "reason": "truncated"}]


def test_webdataset_cut_off_in_a_label_json_loses_only_that_row(tmp_path, capsys):
    files = write_shards(tmp_path / "shards", n_shards=2, per_shard=3)
    data = open(files[0], "rb").read()
    with tarfile.open(files[0]) as tf:
        last_json = [x for x in tf.getmembers() if x.name.endswith(".json")][-1]
    open(files[0], "wb").write(data[:last_json.offset_data + 10])  # the image is whole, its .json is not
    summary = _extract(capsys, tmp_path / "shards", tmp_path / "f.h5", "--label-key", "name")
    assert summary["rows"] == 6 and summary["bad_reasons"] == {"truncated": 1}
    info = _info(capsys, tmp_path / "f.h5")
    assert info["classes"] == {"even": 3, "odd": 2}
    assert info["bad_rows"] == [{"row": 2, "path": "00000.tar#s0k2", "reason": "truncated"}]


@pytest.mark.slow  # three extracts and a merge
def test_webdataset_shards_merge_into_the_single_run(tmp_path, capsys):
    pattern = _cut_shards(tmp_path)
    _extract(capsys, pattern, tmp_path / "full.h5")
    parts = [_extract(capsys, pattern, tmp_path / "part.h5", "--shard", f"{i}/2")["output"] for i in range(2)]
    assert main(["merge", *parts, "-o", str(tmp_path / "merged.h5"), "--copy"]) == 0
    with h5py.File(tmp_path / "full.h5") as a, h5py.File(tmp_path / "merged.h5") as b:
        for name in ("features", "features_flipped", "labels", "valid"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
        assert list(a["paths"].asstr()[()]) == list(b["paths"].asstr()[()])


def test_parquet_extract_then_train_and_evaluate(tmp_path, capsys):
    write_parquet(tmp_path / "d.parquet", n=9, row_group_size=4)
    summary = _extract(capsys, tmp_path / "d.parquet", tmp_path / "p.h5")
    assert summary["rows"] == 9 and summary["bad"] == 0
    info = _info(capsys, tmp_path / "p.h5")
    assert info["classes"] == {"cat": 3, "dog": 3, "eel": 3} and info["attrs"]["source_kind"] == "parquet"
    assert main(["train", str(tmp_path / "p.h5"), "-o", str(tmp_path / "m"), "--head", "logreg",
                 "--val-split", "0"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "m"), str(tmp_path / "p.h5"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 9


def _photos(tmp_path):
    photos = tmp_path / "photos"
    (photos / "2024").mkdir(parents=True)
    for i in range(5):
        (photos / f"p{i}.png").write_bytes(png_bytes(i))
    (photos / "2024" / "q.png").write_bytes(png_bytes(9))
    (photos / ".thumb.png").write_bytes(png_bytes(8))
    return photos


def test_unlabelled_folder_extracts_to_task_none_and_train_refuses_it(tmp_path, capsys, caplog):
    out = tmp_path / "u.h5"
    summary = _extract(capsys, _photos(tmp_path), out)
    assert summary["rows"] == 5  # the top level only; .thumb.png is hidden
    info = _info(capsys, out)
    assert info["task"] == "none" and "classes" not in info and "targets_present" not in info
    assert set(info["datasets"]) >= {"features", "features_flipped", "valid", "reason", "paths", "image_size"}
    assert not {"labels", "targets"} & set(info["datasets"])
    assert main(["train", str(out), "-o", str(tmp_path / "m0")]) == 1
    assert "task none" in caplog.text and "bneck predict" in caplog.text and not (tmp_path / "m0").exists()


@pytest.mark.slow  # an interrupted extract, its resume, a second extract, train and predict
def test_unlabelled_folder_resumes_and_predicts_from_cached_features(tmp_path, capsys, caplog):
    photos = _photos(tmp_path)
    out = tmp_path / "u.h5"
    with faults.raising_at("batch", KeyboardInterrupt(), nth=2):
        assert main(["extract", str(photos), "-o", str(out), *FAST, "--recursive"]) == 130
    assert not out.exists()
    resumed = _extract(capsys, photos, out, "--recursive")
    assert resumed["rows"] == 6 and resumed["computed"] == 4  # one 2-row chunk was kept
    # evaluate refuses it; predict runs a head trained on a labelled file with the same settings
    write_parquet(tmp_path / "d.parquet", n=6)
    _extract(capsys, tmp_path / "d.parquet", tmp_path / "p.h5")
    assert main(["train", str(tmp_path / "p.h5"), "-o", str(tmp_path / "m"), "--head", "logreg",
                 "--val-split", "0"]) == 0
    assert main(["evaluate", str(tmp_path / "m"), str(out)]) == 1
    caplog.clear()
    assert main(["evaluate-images", str(tmp_path / "m"), str(photos)]) == 1
    assert main(["finetune", str(tmp_path / "m"), str(photos), "-o", str(tmp_path / "ft"), "--unfreeze-last", "1"]) == 1
    assert caplog.text.count("has no labels or targets (task none)") == 2 and not (tmp_path / "ft").exists()
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "m"), str(out), "--json", "--top-k", "2"]) == 0
    lines = _json_lines(capsys.readouterr().out)
    assert [r["row"] for r in lines] == list(range(6))
    assert [r["path"] for r in lines] == [f"p{i}.png" for i in range(5)] + [os.path.join("2024", "q.png")]
    assert all(r["label"] in ("cat", "dog", "eel") and len(r["scores"]) == 2 for r in lines)


@pytest.mark.slow  # two extracts and a training
def test_predict_refuses_features_that_do_not_fit_the_model(tmp_path, capsys, caplog):
    write_parquet(tmp_path / "d.parquet", n=4)
    _extract(capsys, tmp_path / "d.parquet", tmp_path / "p.h5")
    assert main(["train", str(tmp_path / "p.h5"), "-o", str(tmp_path / "m"), "--head", "logreg",
                 "--val-split", "0"]) == 0
    _extract(capsys, tmp_path / "d.parquet", tmp_path / "other.h5", "--seed", "3")  # other random weights
    assert main(["predict", str(tmp_path / "m"), str(tmp_path / "other.h5")]) == 1
    assert "other.h5" in caplog.text and "weights" in caplog.text


@pytest.mark.slow  # a training and three predicts (each builds the backbone)
def test_predict_reads_a_kaggle_test_csv_row_by_row(small_faces, tmp_path, capsys, caplog):
    model = tmp_path / "m"
    assert main(["train", small_faces["features"], "-o", str(model), "--head", "specialists", "--pooling", "avg",
                 "--val-split", "0"]) == 0
    with open(small_faces["paths"]["keypoints_validation"], newline="") as f:
        faces = [row["Image"] for row in csv.DictReader(f)][:3]
    test = tmp_path / "test.csv"  # Kaggle's test.csv: ImageId, Image (96x96 grey pixels as text)
    test.write_text("ImageId,Image\n" + "".join(f"{i + 1},{px}\n" for i, px in enumerate(faces)))
    Image.fromarray(np.array(faces[1].split(), np.uint8).reshape(96, 96)).save(tmp_path / "face.png")
    capsys.readouterr()
    assert main(["predict", str(model), str(test), str(tmp_path / "face.png"), "--json"]) == 0
    lines = _json_lines(capsys.readouterr().out)
    assert [r.get("row") for r in lines] == [0, 1, 2, None]
    assert [r["path"] for r in lines] == ["test.csv#row=0", "test.csv#row=1", "test.csv#row=2",
                                          str(tmp_path / "face.png")]
    assert all(r["image_size"] == [96, 96] and len(r["targets"]) == 30 for r in lines)
    # The same face as a PNG file: the same keypoints (up to float sums in another batch).
    kp = np.array([list(r["targets"].values()) for r in lines])
    np.testing.assert_allclose(kp[1], kp[3], atol=1e-3)
    assert np.abs(kp[0] - kp[1]).max() > 0.01  # and another face, other keypoints
    assert main(["predict", str(model), str(test)]) == 0  # plain text: each row named by its id
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == \
        ["test.csv#row=0", "test.csv#row=1", "test.csv#row=2"]
    (tmp_path / "bad.csv").write_text("ImageId,Image\n1,1 2 3\n")  # 3 pixels: not a square image
    caplog.clear()
    assert main(["predict", str(model), str(tmp_path / "bad.csv")]) == 1
    assert "bad.csv:2: Image has 3 pixels" in caplog.text and "bneck extract" in caplog.text


@pytest.mark.parametrize("text", ["path\n", "path,label\n"])
def test_a_source_error_exits_1_before_any_backbone_work(tmp_path, caplog, text):
    (tmp_path / "d.csv").write_text(text)
    assert main(["extract", str(tmp_path / "d.csv"), "-o", str(tmp_path / "o.h5"), *FAST]) == 1
    assert "d.csv" in caplog.text and not os.path.exists(f"{tmp_path / 'o.h5'}.partial")


def test_a_csv_and_its_images_on_an_fsspec_filesystem(tmp_path, capsys):
    fsspec = pytest.importorskip("fsspec")
    mem = fsspec.filesystem("memory")
    root = "/bneck-e2e-datasets"
    for i in range(3):
        mem.pipe(f"{root}/img/{i}.png", png_bytes(i))
    mem.pipe(f"{root}/l.csv", b"path,label\n0.png,a\n1.png,b\n2.png,a\n")
    try:
        args = (f"memory://{root}/l.csv", tmp_path / "m.h5", "--image-root", f"memory://{root}/img")
        first = _extract(capsys, *args)
        assert first["rows"] == 3 and first["bad"] == 0
        assert _extract(capsys, *args)["skipped_existing"] is True  # the fingerprint (sizes) is stable
        assert _info(capsys, tmp_path / "m.h5")["attrs"]["source_root"] == f"memory://{root}/img"
    finally:
        mem.rm(root, recursive=True)

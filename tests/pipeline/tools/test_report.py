"""bneck report: drawn keypoints where they belong, evaluate's counts, galleries ranked, bounded pages, safe reruns."""

import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from pipeline.evaluate import evaluate, regression_metrics
from pipeline.tools import report_html
from pipeline.tools.report_data import (Run, collect, keypoint_errors, keypoint_pairs, normalised_confusion,
                                        row_rmse, typical_and_worst, worst_misclassified)
from pipeline.tools.report_gallery import PRED_RGB, TRUE_RGB, draw_keypoints, thumbnail, to_thumb_xy
from pipeline.tools.report_plots import MissingPlots, require_matplotlib
from pipeline.train import train
from tests.feature_files import write_feature_file

NAMES = ["left_eye_center_x", "left_eye_center_y", "right_eye_center_x", "right_eye_center_y",
         "nose_tip_x", "nose_tip_y"]


def _blobs(img, colour):
    """Centroids (x, y) and pixel counts of the pixels of exactly ``colour``, split by 4-connected blobs."""
    a = np.asarray(img)
    mask = (a == np.array(colour, np.uint8)).all(axis=2)
    seen, out = np.zeros_like(mask), []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, pix = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            pix.append((y, x))
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                v, u = y + dy, x + dx
                if 0 <= v < mask.shape[0] and 0 <= u < mask.shape[1] and mask[v, u] and not seen[v, u]:
                    seen[v, u] = True
                    stack.append((v, u))
        ys, xs = np.array(pix).T
        out.append((xs.mean(), ys.mean(), len(pix)))
    return sorted(out)


def test_drawn_keypoints_sit_on_their_pixels_and_tell_left_from_right():
    # A synthetic 48x40 "face": a bright oval on a dark ground; keypoints in its own pixels.
    face = np.full((40, 48, 3), 40, np.uint8)
    yy, xx = np.mgrid[:40, :48]
    face[((xx - 24) / 16) ** 2 + ((yy - 20) / 14) ** 2 < 1] = 200
    truth = np.array([31.0, 14.0, 17.0, 14.0, 24.0, 24.0])  # the subject's left eye is on the image's right
    img, s = thumbnail(face, 192)
    assert s == 4 and img.size == (192, 160)
    points = keypoint_pairs(NAMES)
    only_truth = draw_keypoints(img, s, truth, np.full(6, np.nan), points)
    blobs = _blobs(only_truth, TRUE_RGB)
    assert not _blobs(only_truth, PRED_RGB) and len(blobs) == 3
    want = sorted(to_thumb_xy(truth[i], truth[i + 1], s) for i in (0, 2, 4))
    for (x, y, _n), (wx, wy) in zip(blobs, want):
        assert abs(x - wx) <= 0.5 and abs(y - wy) <= 0.5
    # Pixel-centre convention: image pixel 31 spans thumbnail pixels 124..127, centre 125.5.
    assert to_thumb_xy(31, 14, 4) == (125.5, 57.5)
    right, nose, left = (n for _x, _y, n in blobs)  # sorted by x: right eye, nose, left eye
    assert right == 81 and left < right and nose < right  # square (9x9) vs disc vs diamond
    # Predictions alone: orange, at their own positions, nothing blue.
    pred = truth + np.array([3, -2, 0, 0, -4, 5])
    only_pred = draw_keypoints(img, s, np.full(6, np.nan), pred, points)
    got = _blobs(only_pred, PRED_RGB)
    assert not _blobs(only_pred, TRUE_RGB)
    for (x, y, _n), (wx, wy) in zip(got, sorted(to_thumb_xy(pred[i], pred[i + 1], s) for i in (0, 2, 4))):
        assert abs(x - wx) <= 0.5 and abs(y - wy) <= 0.5


def test_large_photos_are_downscaled_small_digits_enlarged():
    img, s = thumbnail(np.zeros((900, 1200, 3), np.uint8), 128)
    assert img.size == (128, 96) and s == pytest.approx(128 / 1200)
    img, s = thumbnail(np.zeros((32, 32, 3), np.uint8), 128)
    assert img.size == (128, 128) and s == 4


def test_worst_misclassified_ranks_by_margin_and_skips_correct_rows():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.5, 0.1, 0.4], [0.3, 0.3, 0.4]])
    truth = np.array([0, 0, 1, 2, 2])
    got = worst_misclassified(truth, scores, 10)
    assert [g["i"] for g in got] == [2, 1, 3]  # margins 0.7, 0.5, 0.1; row 4 is right
    assert got[0] == {"i": 2, "true": 1, "pred": 2, "score_pred": 0.8, "score_true": 0.1}
    assert [g["i"] for g in worst_misclassified(truth, scores, 1)] == [2]


def test_typical_and_worst_faces():
    err = np.array([5.0, 1.0, np.nan, 3.0, 9.0, 2.9, 3.1, 0.5])
    typical, worst = typical_and_worst(err, 2)
    assert worst == [4, 0]
    assert sorted(typical) == [3, 5]  # nearest the median of all known errors (3.0), the worst left out
    np.testing.assert_allclose(row_rmse([[0, 0], [1, np.nan]], [[3, 4], [2, 9]]), [np.sqrt(12.5), 1.0])


def test_keypoint_errors_pool_back_into_evaluates_rmse():
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 96, (30, 6))
    t[rng.random((30, 6)) < 0.2] = np.nan
    p = t + rng.normal(0, 2, (30, 6))
    r = regression_metrics(t, p, NAMES)
    errs = keypoint_errors(r, NAMES)
    assert [x["name"] for x in errs] == ["left_eye_center", "right_eye_center", "nose_tip"]
    pooled = np.sqrt(sum(x["rmse_px"] ** 2 * x["n"] for x in errs) / sum(x["n"] for x in errs))
    assert pooled == pytest.approx(r["rmse_px"])
    assert errs[2]["mean_distance_px"] == r["per_keypoint"]["nose_tip"]["mean_distance_px"]


def _images(root, n, size=(40, 60), missing=()):
    rng = np.random.default_rng(1)
    for i in range(n):
        if i not in missing:
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, f"img_{i:04d}.jpg"))


@pytest.fixture
def classified(tmp_path):
    _images(tmp_path, 30, missing=(5,))
    h5 = tmp_path / "a.h5"
    write_feature_file(h5, n=30, shape=(6,), invalid=(3,), source_root=str(tmp_path), seed=1,
                       class_names=["cat", "dog", "owl"])
    train(h5, tmp_path / "m_log", head="logreg", pooling="avg")
    train(h5, tmp_path / "m_svm", head="svm", pooling="avg", grid={"C": [0.01, 1]})
    return tmp_path, h5


def test_the_report_counts_what_evaluate_counts(classified):
    tmp, h5 = classified
    run = collect(tmp / "m_log", h5)
    assert run.result == evaluate(tmp / "m_log", h5)
    cm = np.zeros((3, 3), int)
    np.add.at(cm, (run.truth, run.outputs.argmax(axis=1)), 1)
    assert run.result["confusion_matrix"] == cm.tolist() and cm.sum() == 29  # the invalid row is not scored
    norm = normalised_confusion(cm)
    np.testing.assert_allclose(norm.sum(axis=1), 1.0)
    np.testing.assert_allclose(norm[1], cm[1] / cm[1].sum())
    assert run.bad_rows == [(3, "img_0003.jpg", "unreadable")]
    assert [g["params"] for g in collect(tmp / "m_svm", h5).grid] == [{"C": 0.01}, {"C": 1}]


def test_one_model_page_and_a_comparison(classified):
    tmp, h5 = classified
    out = tmp / "rep"
    runs = report_html.write_report([(tmp / "m_log", h5)], out, progress=False)
    doc = json.loads((out / "report.json").read_text())
    page = (out / "index.html").read_text()
    assert doc["models"][0]["accuracy"] == runs[0].result["accuracy"]
    assert "confusion_matrix.png" in doc["images"] and "image missing" in page and "img_0003.jpg" in page
    assert "<script" not in page and "http" not in page.replace(str(tmp), "")  # nothing fetched at view time
    for rel, (w, h) in doc["images"].items():
        assert Image.open(out / rel).size == (w, h) and f'width="{w}" height="{h}"' in page
    # Several models: a comparison page, each model in its own folder; the single-model files are gone.
    report_html.write_report([(tmp / "m_log", h5), (tmp / "m_svm", h5)], out, progress=False)
    doc = json.loads((out / "report.json").read_text())
    assert [m["page"] for m in doc["models"]] == ["m_log/index.html", "m_svm/index.html"]
    assert not (out / "confusion_matrix.png").exists() and (out / "m_svm" / "grid_scores.png").is_file()
    assert "m_svm/index.html" in (out / "index.html").read_text()
    assert sorted(os.listdir(out)) == sorted({f.split("/")[0] for f in doc["files"]})


def test_a_folder_that_is_not_a_report_is_left_alone(classified, tmp_path):
    tmp, h5 = classified
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(report_html.ReportError, match="not a bneck report"):
        report_html.write_report([(tmp / "m_log", h5)], mine, progress=False)
    assert os.listdir(mine) == ["notes.txt"]


def test_without_matplotlib_the_report_says_how_to_install_it(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_mpl(name, *a, **k):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("no matplotlib")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    with pytest.raises(MissingPlots, match=r"pip install 'bneck\[plots\]'"):
        require_matplotlib()
    with pytest.raises(MissingPlots):
        report_html.write_report([], "unused", progress=False)


def test_keypoint_page_from_a_run(tmp_path):
    _images(tmp_path, 12, size=(48, 64), missing=(4,))
    rng = np.random.default_rng(2)
    truth = np.array([40, 20, 24, 20, 32, 30], float) + rng.normal(0, 2, (12, 6))
    pred = truth + rng.normal(0, 1.5, (12, 6))
    result = {"rmse_px": 0.0, "task": "regression", "head": "dense", **regression_metrics(truth, pred, NAMES)}
    meta = {"head": "dense", "task": "regression", "target_names": NAMES, "params": {}, "features": {},
            "training": {"best_epoch": 1, "seconds": 1.0}, "pooling": "avg"}
    run = Run(name="faces", model_dir="m", features="f.h5", meta=meta, result=result,
              attrs={"source_root": str(tmp_path), "n_rows": 12}, rows=np.arange(12), truth=truth, outputs=pred,
              sizes=np.tile([48, 64], (12, 1)), paths=[f"img_{i:04d}.jpg" for i in range(12)], bad_rows=[],
              history={"loss": [3.0, 2.0, 2.5], "val_loss": [3.5, 2.2, 2.6], "mae": [1, 0.8, 0.9]}, best_epoch=2)
    report_html.write_report([run], tmp_path / "rep", gallery=6, progress=False)
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    faces = [k for k in doc["images"] if k.startswith("face_")]
    assert len(faces) == 5 and all(doc["images"][k] == [192, 144] for k in faces)  # 6 shown, row 4's file missing
    assert {"keypoint_rmse.png", "error_cdf.png", "learning_curves.png"} <= set(doc["images"])


def test_a_report_of_10000_rows_stays_small_and_quick(tmp_path):
    # 20 distinct 640x480 photos behind 10,000 rows: what a page holds must not grow with the rows.
    rng = np.random.default_rng(3)
    for i in range(20):
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(tmp_path / f"p{i}.jpg", quality=90)
    n = 10_000
    h5 = tmp_path / "big.h5"
    write_feature_file(h5, n=n, shape=(16,), n_classes=10, invalid=range(0, n, 37), source_root=str(tmp_path),
                       labels=rng.integers(0, 10, n))
    import h5py

    with h5py.File(h5, "r+") as f:
        f["paths"][...] = [f"p{i % 20}.jpg" for i in range(n)]
    train(h5, tmp_path / "m", head="logreg", pooling="avg")
    t0 = time.perf_counter()
    report_html.write_report([(tmp_path / "m", h5)], tmp_path / "rep", progress=False)
    seconds = time.perf_counter() - t0
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _s, fs in os.walk(tmp_path / "rep") for f in fs)
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    thumbs = [v for k, v in doc["images"].items() if k.startswith("wrong_")]
    assert len(thumbs) == report_html.GALLERY and all(max(v) <= report_html.THUMB_SIDE for v in thumbs)
    assert total < 20e6 and seconds < 30, (total, seconds)
    page = (tmp_path / "rep" / "index.html").read_text()
    assert f"the first {report_html.MAX_BAD_ROWS_LISTED} listed" in page


def test_webdataset_rows_show_their_tar_member(tmp_path):
    from pipeline.tools.report_gallery import load_images, row_sources
    from tests.datafiles import png_bytes, write_tar

    (tmp_path / "shards").mkdir()
    write_tar(tmp_path / "shards" / "00001.tar", [("k0", {"png": png_bytes(0), "cls": "0"}),
                                                  ("k1", {"png": png_bytes(1), "cls": "1"})])
    attrs = {"source_root": str(tmp_path), "source_kind": "webdataset"}
    got = load_images(row_sources(attrs, ["shards/00001.tar#k1", "shards/00001.tar#gone", "shards/9.tar#k0"],
                                  [0, 1, 2]))
    from features import images

    np.testing.assert_array_equal(got[0][0], images.load_rgb(png_bytes(1)))
    assert [g[1] for g in got[1:]] == ["missing", "missing"]

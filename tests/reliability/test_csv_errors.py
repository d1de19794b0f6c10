"""Malformed CSV / Kaggle / Places365 list files: refused up front, or kept as invalid rows.

Structural errors (missing columns, unparsable numbers, unknown label ids, a wrong pixel
count...) end ``bneck extract`` with exit 1 and a message naming the file and the line (and
the column where there is one) BEFORE any backbone work: the backbone builder is replaced by
a tripwire, and no partial directory appears. Per-row problems (an image file that does not
exist, a row without any target value) are not fatal: the row stays, invalid, with its reason.
"""

from __future__ import annotations

import logging
import os
import time

import h5py
import numpy as np
import pytest
from PIL import Image

from features.keypoints import flip_targets
from tests.reliability.helpers import FAST, bneck

KP = ["left_eye_center_x", "left_eye_center_y", "right_eye_center_x", "right_eye_center_y"]


def _pixels(n=64, value=100):
    return " ".join([str(value)] * n)


def _kaggle(rows):
    head = ",".join(KP + ["Image"])
    return head + "\n" + "\n".join(",".join(r) for r in rows) + "\n"


_GOOD_KP = ["10.5", "20", "30", "20.25"]

#: name -> (files {name: text}, DATA file, extra CLI args, substrings the message must contain).
STRUCTURAL = {
    "csv: no path column": (
        {"l.csv": "name,label\na.png,cat\n"}, "l.csv", [], ["l.csv", "no path column", "columns are name, label"]),
    "csv: named label column missing": (
        {"l.csv": "path,label\na.png,cat\n"}, "l.csv", ["--label-column", "species"], ["l.csv", "'species'"]),
    "csv: non-numeric target": (
        {"t.csv": "path,x,y\na.png,1.5,2\nb.png,1.5,abc\n"}, "t.csv", [], ["t.csv:3", "column 'y'", "'abc'"]),
    "csv: wrong number of fields": (
        {"f.csv": "path,label\na.png,cat\nb.png,dog,extra\n"}, "f.csv", [], ["f.csv:3", "3 fields, header has 2"]),
    "csv: empty path cell": (
        {"e.csv": "path,label\na.png,cat\n ,dog\n"}, "e.csv", [], ["e.csv:3", "empty value in path column"]),
    "csv: header but no rows": ({"h.csv": "path,label\n"}, "h.csv", [], ["h.csv", "no data rows"]),
    "csv: duplicate column": ({"d.csv": "path,label,label\na.png,x,y\n"}, "d.csv", [], ["d.csv:1", "duplicate"]),
    "kaggle: non-numeric keypoint": (
        {"k.csv": _kaggle([_GOOD_KP + [_pixels()], ["1", "oops", "3", "4", _pixels()]])}, "k.csv", [],
        ["k.csv:3", "column 'left_eye_center_y'", "'oops'"]),
    "kaggle: wrong pixel count": (
        {"k.csv": _kaggle([_GOOD_KP + [_pixels()], _GOOD_KP + [_pixels(63)]])}, "k.csv", [],
        ["k.csv:3", "63 pixels, expected 64"]),
    "kaggle: not a square image": ({"k.csv": _kaggle([_GOOD_KP + [_pixels(60)]])}, "k.csv", [],
                                   ["k.csv:2", "not a square image"]),
    "kaggle: pixel out of range": ({"k.csv": _kaggle([_GOOD_KP + [_pixels(64, 300)]])}, "k.csv", [],
                                   ["k.csv:2", "0..255"]),
    "kaggle: non-integer pixel": ({"k.csv": _kaggle([_GOOD_KP + [_pixels(63) + " 1.5"]])}, "k.csv", [],
                                  ["k.csv:2", "not an integer pixel"]),
    "places365: unknown label id": (
        {"cat.txt": "/a/airfield 0\n/b/bakery 1\n", "list.txt": "/a/airfield/1.jpg 0\n/b/bakery/2.jpg 7\n"},
        "list.txt", ["--categories", "{dir}/cat.txt"], ["list.txt:2", "unknown label id 7"]),
    "places365: malformed line": (
        {"cat.txt": "/a/airfield 0\n", "list.txt": "/a/airfield/1.jpg 0\n/a/airfield/2.jpg zero\n"},
        "list.txt", ["--categories", "{dir}/cat.txt"], ["list.txt:2", "expected '<name> <integer>'"]),
    "places365: duplicate category index": (
        {"cat.txt": "/a/airfield 0\n/b/bakery 0\n", "list.txt": "/a/airfield/1.jpg 0\n"},
        "list.txt", ["--categories", "{dir}/cat.txt"], ["cat.txt:2", "given twice"]),
    "places365: no categories file": (
        {"list.txt": "/a/airfield/1.jpg 0\n"}, "list.txt", [], ["list.txt", "needs its categories file: --categories"]),
    "option that does not apply": (
        {"l.csv": "path,label\na.png,cat\n", "cat.txt": "/a/x 0\n"}, "l.csv", ["--categories", "{dir}/cat.txt"],
        ["l.csv", "do not apply"]),
}


def _write(tmp_path, files):
    for name, text in files.items():
        (tmp_path / name).write_text(text)


@pytest.fixture
def tripwire(monkeypatch):
    """Replace the backbone builder: any call is recorded and aborts the run."""
    from features import weights

    calls = []

    def build_backbone(*a, **k):
        calls.append(a)
        raise AssertionError("a backbone was built before the source was validated")

    monkeypatch.setattr(weights, "build_backbone", build_backbone)
    return calls


@pytest.fixture(scope="module")
def warm_cli():
    """The CLI imports TensorFlow up front; pay that once so per-case timings mean something."""
    from features.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()


@pytest.mark.parametrize("case", list(STRUCTURAL))
def test_structural_error_before_backbone(case, tmp_path, tripwire, warm_cli, caplog):
    from pipeline.cli.main import main

    files, data, extra, needles = STRUCTURAL[case]
    _write(tmp_path, files)
    out = tmp_path / "out.h5"
    extra = [a.format(dir=tmp_path) for a in extra]
    caplog.set_level(logging.ERROR, logger="bneck")
    t0 = time.time()
    rc = main(["extract", str(tmp_path / data), "-o", str(out), *FAST, *extra])
    elapsed = time.time() - t0
    msg = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert rc == 1, (case, msg)
    for needle in needles:
        assert needle in msg, (case, needle, msg)
    assert tripwire == [], f"{case}: the backbone was built before the error"
    assert not os.path.exists(f"{out}.partial") and not out.exists()
    assert elapsed < 5, f"{case}: {elapsed:.1f} s to report a malformed source"


def test_structural_error_through_the_real_cli(tmp_path):
    """The same, as a user sees it: a separate process, stderr, exit status 1, no traceback."""
    files, data, extra, needles = STRUCTURAL["places365: unknown label id"]
    _write(tmp_path, files)
    out = tmp_path / "out.h5"
    r = bneck("extract", tmp_path / data, "-o", out, *FAST, *[a.format(dir=tmp_path) for a in extra])
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    for needle in needles:
        assert needle in r.stderr
    assert not os.path.exists(f"{out}.partial") and not out.exists()


def _cfg(data, out, **kw):
    from features.config import ExtractConfig

    return ExtractConfig(data=str(data), output=str(out), backbone="mobilenet", input_size="32", weights="none",
                         seed=3, precision="fp32", store_dtype="float32", batch_size=4, max_bad_fraction=0.9,
                         progress=False, runtime="tensorflow", **kw)


#: Per-row problems: (source kind, row, reason) — kept as invalid rows, counted in the summary.
PER_ROW = [("csv (labels)", "gone.png", "missing"), ("csv (targets)", "gone.png", "missing"),
           ("csv (targets)", "c.png with no target values", "no_targets"),
           ("kaggle", "row 2 with no keypoints", "no_targets")]


@pytest.mark.slow  # seconds of TensorFlow/subprocess work; the slow stage runs it (issue 18: default suite <= 4 min)
def test_per_row_problems_are_kept_as_invalid_rows(tmp_path):
    from features.runner import extract

    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "labels.csv").write_text("path,label\na.png,cat\ngone.png,dog\nb.png,dog\n")
    (tmp_path / "targets.csv").write_text("path,x,y\na.png,1,2\ngone.png,3,4\nc.png,,\nb.png,5,\n")
    (tmp_path / "kaggle.csv").write_text(_kaggle([_GOOD_KP + [_pixels()], ["", "", "", "", _pixels()],
                                                  ["1", "", "", "", _pixels(64, 7)]]))
    expect = {
        "labels.csv": (["a.png", "gone.png", "b.png"], ["", "missing", ""]),
        "targets.csv": (["a.png", "gone.png", "c.png", "b.png"], ["", "missing", "no_targets", ""]),
        "kaggle.csv": (["kaggle.csv#row=0", "kaggle.csv#row=1", "kaggle.csv#row=2"], ["", "no_targets", ""]),
    }
    for src, (paths, reasons) in expect.items():
        out = tmp_path / f"{src}.h5"
        s = extract(_cfg(tmp_path / src, out))
        bad = [r for r in reasons if r]
        assert s.rows == len(paths) and s.bad == len(bad), (src, s)
        assert s.bad_reasons == {r: bad.count(r) for r in set(bad)}, (src, s.bad_reasons)
        with h5py.File(out) as f:
            assert list(f["paths"].asstr()[()]) == paths, src
            assert list(f["reason"].asstr()[()]) == reasons, src
            assert list(f["valid"][()]) == [not r for r in reasons], src
            if "targets" in f:  # the partial row keeps its one value, the empty one stays all-NaN
                t = f["targets"][()]
                assert np.isnan(t[[i for i, r in enumerate(reasons) if r == "no_targets"]]).all()
                assert np.isfinite(t[0]).all()
                partial = {"targets.csv": 3, "kaggle.csv": 2}[src]
                assert t[partial, 0] == (5 if src == "targets.csv" else 1) and np.isnan(t[partial, 1:]).all()
                # The mirror's targets come from each row's own width; invalid rows stay NaN.
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["targets"].attrs["target_names"]]
                widths = f["image_size"][()][:, 1]
                tf = f["targets_flipped"][()]
                ok = [i for i, r in enumerate(reasons) if not r]
                np.testing.assert_allclose(tf[ok], flip_targets(t[ok], names, widths[ok]), rtol=1e-6)
                assert np.isnan(tf[[i for i, r in enumerate(reasons) if r]]).all()

"""Hostile and odd files mixed into class folders with good images, extracted in ONE run.

Each kind is either decoded or kept as an invalid row with the expected reason code (HDF5
``reason`` dataset and the ``--json`` summary's ``bad_reasons``); hidden files, hidden
folders and special files give no row; no other file is lost; every row's path, label and
features stay aligned (each valid row equals an extraction of that image on its own); the
decompression bombs are refused from their headers (the child's peak RSS stays small); and
``--max-bad-fraction`` stops the run with exit 3, after which a rerun with a higher fraction
finishes without recomputing anything.
"""

from __future__ import annotations

import collections
import os
import sys

import h5py
import numpy as np
import pytest

from tests.imagefolders import make_class_folder
from tests.reliability import badcorpus
from tests.reliability.helpers import FAST, bneck, bneck_cmd, child_env, json_line, leftovers, run_with_rusage

# One extract over a corpus of hostile files (~30 s here): the slow stage runs it.
pytestmark = pytest.mark.slow

CASES = badcorpus.build(np.random.default_rng(7))
#: Every case tried, for README/summary.py: (path, expected outcome, description).
BAD_INPUT_KINDS = [(rel, "no row" if reason is None else reason or "valid", desc) for rel, _, reason, desc in CASES]
N_GOOD = 6
ARGS = FAST + ["--batch-size", "4", "--chunk-rows", "8"]
#: A TensorFlow process doing this extraction peaks well under 2 GiB; decoding either bomb
#: would need 30 GB (PNG: 10^10 RGB pixels) or 10.8 GB (JPEG: 60000^2 x 3).
MAX_EXTRACT_RSS_MIB = 2048
#: A process that only imports the decoder and opens both bombs.
MAX_DECODE_RSS_MIB = 200


def _stored(rel: str) -> str:
    """How bneck stores a path: UTF-8, with undecodable file-name bytes as \\xNN escapes."""
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("badinputs") / "data"
    make_class_folder(root, classes=("good",), per_class=N_GOOD, seed=11)
    badcorpus.write(root, CASES)
    expected = {_stored(os.path.join("good", f"img{i:03d}.png")): "" for i in range(N_GOOD)}
    expected.update({_stored(rel): reason for rel, _, reason, _ in CASES if reason is not None})
    return root, expected


@pytest.fixture(scope="module")
def extracted(corpus, tmp_path_factory):
    root, expected = corpus
    out = tmp_path_factory.mktemp("badout") / "mixed.h5"
    n_bad = sum(1 for r in expected.values() if r)
    assert n_bad / len(expected) > 0.1
    # Run 1: too many bad images for --max-bad-fraction 0.1 -> exit 3, chunks kept.
    rc, stdout, stderr, rss = run_with_rusage(bneck_cmd("extract", root, "-o", out, *ARGS, "--max-bad-fraction",
                                                        "0.1", "--json"), child_env())
    first = {"rc": rc, "stderr": stderr, "rss_mib": rss}
    # Run 2: same settings, a higher fraction: finishes from the kept chunks.
    second = bneck("extract", root, "-o", out, *ARGS, "--max-bad-fraction", "0.5", "--json")
    return out, first, second


def test_max_bad_fraction_exit_3_then_finish_without_recomputing(extracted, corpus):
    out, first, second = extracted
    assert first["rc"] == 3, first["stderr"]
    assert "--max-bad-fraction" in first["stderr"] and "Traceback" not in first["stderr"]
    assert second.returncode == 0, second.stderr
    summary = json_line(second.stdout)
    assert summary["computed"] == 0, "the rerun recomputed rows the first run had committed"
    expected = corpus[1]
    assert summary["rows"] == len(expected)
    assert summary["bad_reasons"] == dict(collections.Counter(r for r in expected.values() if r))
    assert summary["bad"] == sum(1 for r in expected.values() if r)
    assert leftovers(out) == []


def test_every_file_one_row_with_its_reason(extracted, corpus):
    out, _, _ = extracted
    root, expected = corpus
    with h5py.File(out) as f:
        paths = list(f["paths"].asstr()[()])
        reasons = list(f["reason"].asstr()[()])
        valid = f["valid"][()]
        labels = f["labels"][()]
        classes = [c.decode() if isinstance(c, bytes) else c for c in f["labels"].attrs["class_names"]]
        sizes = f["image_size"][()]
        feats = f["features"][()]
    # Rows lost = 0: every non-hidden regular file (or link) has exactly one row, nothing else has one.
    assert len(paths) == len(set(paths)) == len(expected)
    assert set(paths) == set(expected)
    on_disk = set()
    for dirpath, dirnames, files in os.walk(os.fsencode(root)):
        dirnames[:] = [d for d in dirnames if not d.startswith(b".")]
        for name in files:
            full = os.path.join(dirpath, name)
            if not name.startswith(b".") and (os.path.isfile(full) or os.path.islink(full)):
                on_disk.add(_stored(os.fsdecode(os.path.relpath(full, os.fsencode(root)))))
    assert set(paths) == on_disk
    for i, p in enumerate(paths):
        assert reasons[i] == expected[p], (p, reasons[i], expected[p])
        assert bool(valid[i]) == (expected[p] == ""), p
        assert classes[labels[i]] == p.split("/")[0], p  # label <-> path
        if not valid[i]:
            assert not feats[i].any() and tuple(sizes[i]) == (0, 0), p
    # The empty class is a class (so label ids do not depend on what happens to be empty), with no rows.
    assert "empty_class" in classes and classes.index("empty_class") not in set(labels.tolist())
    assert ".hidden_class" not in classes
    got = dict(zip(paths, map(tuple, sizes)))
    assert got["odd/tall.png"] == (2000, 1) and got["odd/wide.png"] == (1, 2000) and got["odd/one.png"] == (1, 1)
    assert got["odd/exif6.jpg"] == (40, 20)  # as displayed: EXIF rotation applied


def test_valid_rows_equal_each_image_extracted_alone(extracted, corpus):
    """Path <-> features: every valid row is the features of its own file, nothing shifted."""
    from features import backbones, images, weights
    from features.mapper import tf_runtime

    out, _, _ = extracted
    root, expected = corpus
    spec = backbones.get("mobilenet")
    model, _ = weights.build_backbone(spec, input_size=(32, 32), layer=spec.default_layer, weights="none", seed=3)
    ex = tf_runtime.Extractor(model, spec.preprocess_function, pooling="none", flip=True, batch_size=4)
    with h5py.File(out) as f:
        paths = list(f["paths"].asstr()[()])
        valid = f["valid"][()]
        feats, flipped = f["features"][()], f["features_flipped"][()]
    rows = [i for i in range(len(paths)) if valid[i]]
    raw = {p: rel for rel, _, _, _ in CASES for p in [_stored(rel)]}
    alone, alone_flipped = [], []
    for i in rows:
        rel = raw.get(paths[i], paths[i])
        arr = images.load_rgb(os.path.join(os.fsencode(root), os.fsencode(rel)), (32, 32))
        o, fl = ex(arr[None])  # that image on its own (the batch is zero-padded, as in a run)
        alone.append(o[0])
        alone_flipped.append(fl[0])
    alone, alone_flipped = np.stack(alone), np.stack(alone_flipped)
    stored, stored_flipped = feats[rows], flipped[rows]
    # In-process TensorFlow may use several threads, and oneDNN picks kernels by CPU and batch:
    # equal up to float rounding, judged against each row's own scale (random weights leave
    # values of 1e-25 beside 1e-21, where rounding alone moves the small ones by 10%)...
    for got, want in ((stored, alone), (stored_flipped, alone_flipped)):
        scale = np.abs(want).reshape(len(rows), -1).max(axis=1).reshape(-1, *[1] * (want.ndim - 1))
        np.testing.assert_allclose(got / scale, want / scale, rtol=1e-4, atol=1e-5)
    # ...and each row is nearer its own image than any other (a shifted row cannot pass).
    a = stored.reshape(len(rows), -1).astype(np.float64)
    b = alone.reshape(len(rows), -1).astype(np.float64)
    a, b = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    dist = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    assert (dist.argmin(axis=1) == np.arange(len(rows))).all()


def test_bombs_rejected_without_allocating(extracted, corpus):
    _, first, _ = extracted
    assert first["rss_mib"] < MAX_EXTRACT_RSS_MIB, f"extraction peaked at {first['rss_mib']:.0f} MiB"
    root, _ = corpus
    code = ("import resource, sys; from features.images import decode; "
            "r = [decode(p, (32, 32))[2] for p in sys.argv[1:]]; "
            "print(r, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)")
    bombs = [os.path.join(root, "bad", n) for n in ("bomb.png", "bomb.jpg")]
    rc, stdout, stderr, rss = run_with_rusage([sys.executable, "-c", code, *bombs], child_env())
    assert rc == 0, stderr
    assert stdout.startswith("['too_large', 'too_large']"), stdout
    assert rss < MAX_DECODE_RSS_MIB, f"decoding two bomb headers peaked at {rss:.0f} MiB"

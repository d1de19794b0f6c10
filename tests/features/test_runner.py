"""Stage one end to end through the Python API: correct features, alignment, resume, bad rows."""

import json
import os

import h5py
import numpy as np
import pytest

from features import backbones, faults, weights
from features.config import ExtractConfig, TooManyBadImages
from features.mapper import device
from features.mapper.runtimes import resolve_runtime
from features.runner import extract
from features.writer import partial
from features.writer.finished import StoreError, partial_dir
from tests.imagefolders import make_class_folder

SPEC = backbones.get("mobilenet")


def _cfg(data, out, **kw):
    base = dict(backbone="mobilenet", input_size="32", weights="none", seed=7, batch_size=4, progress=False,
                precision="fp32", store_dtype="float32", max_bad_fraction=0.5)
    base.update(kw)
    return ExtractConfig(data=str(data), output=str(out), **base)


def _reference(pictures, rels, precision="fp32", layer=None):

    model, _ = weights.build_backbone(SPEC, input_size=(32, 32), weights="none", seed=7, layer=layer,
                                      dtype_policy=device.dtype_policy(precision))
    x = np.stack([pictures[r] for r in rels]).astype("float32")
    orig = np.asarray(model(SPEC.preprocess_input(x.copy()), training=False), dtype="float32")
    flip = np.asarray(model(SPEC.preprocess_input(x[:, :, ::-1].copy()), training=False), dtype="float32")
    return orig, flip


def _rel_err(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)


@pytest.fixture
def dataset(tmp_path):
    bad = [("cat", "zz_html.jpg", b"<html><body>not an image</body></html>"), ("dog", "aa_empty.png", b"")]
    pics = make_class_folder(tmp_path / "data", per_class=5, bad=bad)
    return tmp_path / "data", pics


def test_features_match_the_backbone_and_rows_stay_aligned(dataset, tmp_path):
    data, pics = dataset
    s = extract(_cfg(data, tmp_path / "f.h5"))
    assert s.rows == 12 and s.bad == 2 and s.bad_reasons == {"not_image": 1, "empty": 1}
    with h5py.File(tmp_path / "f.h5") as f:
        paths = [p.decode() for p in f["paths"][()]]
        assert paths[0] == os.path.join("cat", "img000.png") and "cat/zz_html.jpg" in paths
        assert list(f["labels"].attrs["class_names"]) == ["cat", "dog"]
        labels, valid = f["labels"][()], f["valid"][()]
        for p, lab, ok, reason in zip(paths, labels, valid, f["reason"][()]):
            assert lab == (0 if p.startswith("cat") else 1)
            assert ok == (p in pics) and (reason == b"") == ok
        good = [i for i, p in enumerate(paths) if p in pics]
        orig, flip = _reference(pics, [paths[i] for i in good])
        feats, featsf = f["features"][()], f["features_flipped"][()]
        for j, i in enumerate(good):
            assert _rel_err(feats[i], orig[j]) <= 1e-4
            assert _rel_err(featsf[i], flip[j]) <= 1e-4
        assert not feats[~valid].any() and not featsf[~valid].any()
        assert f.attrs["complete"] and f.attrs["backbone"] == "mobilenet" and f.attrs["preprocessing"] == "tf"
        assert f.attrs["weights"] == "none(seed=7,bn=calibrated)" and f.attrs["precision"] == "fp32"


def test_bf16_features_within_tolerance(dataset, tmp_path):
    data, pics = dataset
    # An early layer: with random weights MobileNet's last block gives ~1e-19, which float16 stores as
    # zeros (the run now refuses that) and which once made this comparison pass on zeros alone.
    extract(_cfg(data, tmp_path / "b.h5", precision="bf16", store_dtype="float16", layer="conv_pw_1_relu"))
    with h5py.File(tmp_path / "b.h5") as f:
        paths = [p.decode() for p in f["paths"][()]]
        good = [i for i, p in enumerate(paths) if p in pics]
        orig, _ = _reference(pics, [paths[i] for i in good], layer="conv_pw_1_relu")
        feats = f["features"][()].astype("float32")
        assert np.abs(orig).max() > 1e-3  # real activations, not zeros compared with zeros
        for j, i in enumerate(good):
            assert _rel_err(feats[i], orig[j]) <= 3e-2
        # OpenVINO on a CPU without bf16 runs fp32, and the attrs say so (TensorFlow emulates bf16).
        runtime = f.attrs["runtime"]
        honest = "bf16" if runtime == "tensorflow" or device.cpu_has_bf16() else "fp32"
        assert f.attrs["precision"] == honest and f["features"].dtype == np.float16


def test_rerun_is_noop_and_changed_settings_are_refused(dataset, tmp_path):
    data, _ = dataset
    out = tmp_path / "f.h5"
    extract(_cfg(data, out))
    mtime = os.path.getmtime(out)
    again = extract(_cfg(data, out))
    assert again.skipped_existing and os.path.getmtime(out) == mtime
    with pytest.raises(StoreError, match="seed"):
        extract(_cfg(data, out, seed=8))
    redo = extract(_cfg(data, out, seed=8, overwrite=True))
    assert redo.computed == 12


@pytest.mark.slow  # seconds of TensorFlow/subprocess work; the slow stage runs it (issue 18: default suite <= 4 min)
def test_resume_after_interrupt_equals_uninterrupted_run(dataset, tmp_path, monkeypatch):
    data, _ = dataset
    full = tmp_path / "full.h5"
    extract(_cfg(data, full, chunk_rows=4))
    out = tmp_path / "resumed.h5"
    with faults.raising_at("batch", KeyboardInterrupt(), nth=3), pytest.raises(KeyboardInterrupt):
        extract(_cfg(data, out, chunk_rows=4))
    assert not out.exists()
    committed = sorted(n for n in os.listdir(partial_dir(str(out))) if n.startswith("chunk-"))
    assert committed == ["chunk-0000000.npz", "chunk-0000001.npz"]  # the two finished chunks are kept
    s = extract(_cfg(data, out, chunk_rows=4))
    assert s.computed == 4  # only the missing chunk was recomputed
    with h5py.File(full) as a, h5py.File(out) as b:
        for name in a:
            np.testing.assert_array_equal(a[name][()], b[name][()])
    assert not os.path.exists(partial_dir(str(out)))


@pytest.mark.slow  # seconds of TensorFlow/subprocess work; the slow stage runs it (issue 18: default suite <= 4 min)
def test_partial_run_with_other_settings_is_refused(dataset, tmp_path, monkeypatch):
    data, _ = dataset
    out = tmp_path / "f.h5"
    with faults.raising_at("batch", KeyboardInterrupt()), pytest.raises(KeyboardInterrupt):
        extract(_cfg(data, out))
    monkeypatch.undo()
    # Killed before its first chunk: no valid row to keep, so the changed command simply starts again.
    assert extract(_cfg(data, out, pooling="max", chunk_rows=4)).computed == 12
    os.remove(out)
    with faults.raising_at("batch", KeyboardInterrupt(), nth=2), pytest.raises(KeyboardInterrupt):
        extract(_cfg(data, out, chunk_rows=4))
    with pytest.raises(StoreError, match=r"other settings or another source: pooling: none -> avg\. Rerun"):
        extract(_cfg(data, out, pooling="avg", chunk_rows=4))


@pytest.mark.slow  # ~3 s; tests/reliability/test_bad_inputs.py covers bad images in depth
def test_too_many_bad_images_keeps_chunks(dataset, tmp_path):
    data, _ = dataset
    out = tmp_path / "f.h5"
    with pytest.raises(TooManyBadImages, match="2 of 12") as err:
        extract(_cfg(data, out, max_bad_fraction=0.1))
    assert "zz_html.jpg (not_image)" in str(err.value) and "aa_empty.png (empty)" in str(err.value)
    assert not out.exists()
    s = extract(_cfg(data, out, max_bad_fraction=0.2))
    assert s.computed == 0 and out.exists()


@pytest.mark.slow  # ~6 s: one extract per shard
def test_shards_partition_the_manifest(dataset, tmp_path):
    data, _ = dataset
    full = tmp_path / "all.h5"
    extract(_cfg(data, full))
    rows = []
    for i in range(3):
        s = extract(_cfg(data, tmp_path / "part.h5", shard=f"{i}/3"))
        assert s.output.endswith(f"part.shard-{i:05d}-of-00003.h5")
        with h5py.File(s.output) as f:
            rows.append(f["features"][()])
            assert f.attrs["shard"] == f"{i}/3"
    with h5py.File(full) as f:
        np.testing.assert_array_equal(np.concatenate(rows), f["features"][()])


def test_pooling_and_no_flip(dataset, tmp_path):
    data, _ = dataset
    extract(_cfg(data, tmp_path / "p.h5", pooling="avg", flip=False))
    with h5py.File(tmp_path / "p.h5") as f:
        assert f["features"].shape == (12, 1024) and "features_flipped" not in f
        assert f.attrs["pooling"] == "avg" and not f.attrs["flip"]


def test_second_writer_is_refused(tmp_path):
    s1 = partial.PartialStore(str(tmp_path / "x.h5"), {"a": 1}, n_rows=4, chunk_rows=2).open()
    try:
        with pytest.raises(StoreError, match="another bneck process"):
            partial.PartialStore(str(tmp_path / "x.h5"), {"a": 1}, n_rows=4, chunk_rows=2).open()
    finally:
        s1.close()


def test_openvino_runtime_end_to_end(dataset, tmp_path, monkeypatch):
    pytest.importorskip("openvino")  # the [openvino] extra
    data, pics = dataset
    monkeypatch.setenv("BNECK_RUNTIME", "auto")
    assert resolve_runtime("auto") == "openvino"
    extract(_cfg(data, tmp_path / "tf.h5", runtime="tensorflow"))
    extract(_cfg(data, tmp_path / "ov.h5", runtime="auto"))
    with h5py.File(tmp_path / "tf.h5") as a, h5py.File(tmp_path / "ov.h5") as b:
        assert b.attrs["runtime"] == "openvino" and a.attrs["runtime"] == "tensorflow"
        for name in ("features", "features_flipped"):
            for x, y in zip(a[name][()], b[name][()]):
                assert _rel_err(y, x) <= 1e-4
        np.testing.assert_array_equal(a["valid"][()], b["valid"][()])


def test_runtime_choice_errors():
    with pytest.raises(ValueError, match="--runtime must be one of"):
        resolve_runtime("onnx")


@pytest.mark.slow  # ~1.5 s of extraction for a signal detail
def test_extract_gives_the_caller_its_sigterm_handler_back(tmp_path):
    import signal

    make_class_folder(tmp_path / "data", classes=("a",), per_class=2)

    def mine(signum, frame):
        pass
    previous = signal.signal(signal.SIGTERM, mine)
    try:
        extract(_cfg(tmp_path / "data", tmp_path / "o.h5"))
        # Otherwise a notebook or Ray actor that ran extract() would ignore SIGTERM from then on.
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow  # seconds of TensorFlow/subprocess work; the slow stage runs it (issue 18: default suite <= 4 min)
def test_rerun_of_a_finished_extract_does_not_build_the_backbone(dataset, tmp_path, monkeypatch):
    data, _ = dataset
    out = tmp_path / "f.h5"
    extract(_cfg(data, out))
    wfile = tmp_path / "w.weights.h5"
    model, _ = weights.build_backbone(backbones.get("mobilenet"), input_size=(32, 32), weights="none", seed=7)
    model.save_weights(wfile)
    extract(_cfg(data, tmp_path / "g.h5", weights=str(wfile)))

    def no_build(*a, **kw):
        raise AssertionError("a finished file's rerun built the backbone")

    monkeypatch.setattr(weights, "build_backbone", no_build)
    for name, kw in [("f.h5", {}), ("g.h5", {"weights": str(wfile)})]:
        s = extract(_cfg(data, tmp_path / name, **kw))
        assert s.skipped_existing and s.computed == 0 and s.bad == 2
    # Other settings still fail before any build, with the usual message.
    with pytest.raises(StoreError, match="other settings or another source .*seed: 7 -> 8"):
        extract(_cfg(data, out, seed=8))


@pytest.mark.slow
def test_device_oom_backs_off_without_losing_or_repeating_a_row(dataset, tmp_path):
    """A card too small for --batch-size: the compute batch halves until it fits; the file equals a plain run."""
    import subprocess
    import sys

    data, _ = dataset
    plain = extract(_cfg(data, tmp_path / "plain.h5", batch_size=8, runtime="tensorflow"))
    assert plain.compute_batch == 8 and plain.device and plain.decode_workers >= 1
    env = dict(os.environ, BNECK_TEST_OOM_ABOVE="2", TF_CPP_MIN_LOG_LEVEL="3")
    out = tmp_path / "oom.h5"
    r = subprocess.run([sys.executable, "-m", "pipeline", "extract", str(data), "-o", str(out), "--backbone",
                        "mobilenet", "--input-size", "32", "--weights", "none", "--seed", "7", "--batch-size", "8",
                        "--precision", "fp32", "--store-dtype", "float32", "--runtime", "tensorflow",
                        "--max-bad-fraction", "0.5", "--no-progress", "--json"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["compute_batch"] == 2 and summary["computed"] == summary["rows"] == plain.rows
    assert "backing off to batch 4" in r.stderr and "backing off to batch 2" in r.stderr
    with h5py.File(plain.output) as a, h5py.File(out) as b:
        assert b.attrs["run_compute_batch"] == 2 and a.attrs["run_compute_batch"] == 8
        for name in ("features", "features_flipped", "valid", "paths"):
            x, y = a[name][()], b[name][()]
            assert (x == y).all() if x.dtype.kind in "OSUb" else np.allclose(x, y, rtol=1e-5, atol=1e-7), name

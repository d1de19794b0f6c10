"""features.mapper.tf_runtime: the TensorFlow extractor (padding, flip, device staging, XLA, OOM back-off)."""

import logging

import numpy as np
import pytest

from features import backbones, weights
from features.mapper import batches, device, tf_runtime

SPEC = backbones.get("mobilenet")


@pytest.fixture(scope="module")
def model():
    m, _ = weights.build_backbone(SPEC, input_size=(32, 32), weights="none", seed=3)
    return m


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(0).integers(0, 256, size=(7, 32, 32, 3), dtype=np.uint8)


def _reference(model, x):
    f = lambda a: np.asarray(model(SPEC.preprocess_input(a.astype("float32")), training=False))  # noqa: E731
    return f(x), f(x[:, :, ::-1].copy())


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_features_equal_the_backbone_on_a_short_padded_batch(model, batch):
    ex = tf_runtime.Extractor(model, SPEC.preprocess_function, batch_size=8, device=None)
    orig, flipped = ex(batch)
    ref_o, ref_f = _reference(model, batch)
    assert orig.shape == (7,) + ex.feature_shape and flipped.shape == orig.shape
    assert _rel(orig, ref_o) < 1e-5 and _rel(flipped, ref_f) < 1e-5


def test_submit_keeps_two_batches_in_flight_in_order(model, batch):
    ex = tf_runtime.Extractor(model, SPEC.preprocess_function, batch_size=8, flip=False, device=None)
    first, second = ex.submit(batch[:4]), ex.submit(batch[4:])
    assert np.allclose(second.result()[0], ex(batch[4:])[0]) and np.allclose(first.result()[0], ex(batch[:4])[0])
    assert first.result()[1] is None


@pytest.mark.slow  # a second graph (~2 s)
def test_staging_on_an_explicit_device_gives_the_same_features(model, batch):
    plain = tf_runtime.Extractor(model, SPEC.preprocess_function, batch_size=8, device=None)
    staged = tf_runtime.Extractor(model, SPEC.preprocess_function, batch_size=8, device="/CPU:0")
    for a, b in zip(plain(batch), staged(batch)):
        np.testing.assert_array_equal(a, b)


def test_out_of_memory_halves_the_compute_batch_and_redoes_the_batch(model, batch, monkeypatch, caplog):
    import tensorflow as tf

    ex = tf_runtime.Extractor(model, SPEC.preprocess_function, batch_size=8, device=None)
    want = ex(batch)
    real, seen = ex._launch, []

    def small_device(x):  # a device that only fits 2 images: what an OOM on a GPU looks like
        seen.append(ex.compute_batch)
        if ex.compute_batch > 2:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return real(x)

    monkeypatch.setattr(ex, "_launch", small_device)
    with caplog.at_level(logging.WARNING, logger="bneck"):
        got = ex(batch)
    assert seen == [8, 4, 2] and ex.compute_batch == 2 and ex.batch_size == 8
    assert "backing off to batch 4" in caplog.text and "backing off to batch 2" in caplog.text
    for a, b in zip(got, want):
        assert a.shape == b.shape and _rel(a, b) < 1e-5


def test_out_of_memory_at_batch_one_is_a_clear_error(model, batch, monkeypatch):
    import tensorflow as tf

    ex = tf_runtime.Extractor(model, SPEC.preprocess_function, batch_size=2, device=None)
    monkeypatch.setattr(ex, "_launch", lambda x: (_ for _ in ()).throw(
        tf.errors.ResourceExhaustedError(None, None, "OOM")))
    with pytest.raises(MemoryError, match="even at batch 1"):
        ex(batch[:2])


def test_other_errors_are_not_mistaken_for_out_of_memory(model, batch, monkeypatch):
    ex = tf_runtime.Extractor(model, SPEC.preprocess_function, batch_size=8, device=None)
    monkeypatch.setattr(ex, "_launch", lambda x: (_ for _ in ()).throw(ValueError("broken graph")))
    with pytest.raises(ValueError, match="broken graph"):
        ex(batch)
    assert ex.compute_batch == 8


@pytest.mark.slow  # an XLA compile (~2.5 s)
def test_xla_compiled_features_match(model, batch):
    ex = tf_runtime.Extractor(model, SPEC.preprocess_function, batch_size=8, xla=True, device=None)
    for a, b in zip(ex(batch), _reference(model, batch)):
        assert _rel(a, b) < 1e-4


def test_xla_and_precision_choices(monkeypatch):
    monkeypatch.setattr(device, "has_gpu", lambda: False)
    assert device.xla_default("auto") is False and device.xla_default("on") is True
    assert device.resolve_precision("auto") in ("bf16", "fp32")
    monkeypatch.setattr(device, "has_gpu", lambda: True)
    assert device.xla_default("auto") is True and device.xla_default("off") is False
    assert device.resolve_precision("auto") == "fp16"
    with pytest.raises(ValueError, match="--xla"):
        device.xla_default("yes")


def test_bad_batches_are_refused(model):
    ex = tf_runtime.Extractor(model, SPEC.preprocess_function, batch_size=4, device=None)
    with pytest.raises(ValueError, match="exceeds"):
        ex(np.zeros((5, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="expects"):
        ex(np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        ex(np.zeros((2, 32, 32, 3), np.float32))


def test_mirror_batch_reverses_whole_pixels():
    rng = np.random.default_rng(1)
    for channels in (3, 1):
        x = rng.integers(0, 256, size=(2, 5, 7, channels), dtype=np.uint8)
        m = batches.mirror_batch(x)
        assert m.flags.c_contiguous and m.dtype == np.uint8
        np.testing.assert_array_equal(m, x[:, :, ::-1])
    np.testing.assert_array_equal(batches.mirror_batch(x[:, :, 1:]), x[:, :, 1:][:, :, ::-1])  # non-contiguous in


def test_cpu_features_are_read_from_the_flags_lines(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC avx512_bf16 in a name is not a flag\n"
                    "flags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n")
    flags = device.cpu_flags(str(info))
    assert {"avx512_vnni", "avx2", "fpu"} <= flags and "avx512_bf16" not in flags
    assert device.cpu_flags(str(tmp_path / "absent")) == set()
    monkeypatch.setattr(device, "cpu_flags", lambda: flags)
    assert device.cpu_has_int8_dot() and not device.cpu_has_bf16()
    monkeypatch.setattr(device, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert device.cpu_has_bf16() and not device.cpu_has_int8_dot()

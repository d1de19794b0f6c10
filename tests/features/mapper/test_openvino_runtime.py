"""The OpenVINO runtime against the TensorFlow mapper: same features (fp32), close features (bf16).

OpenVINO is an optional extra (``pip install bneck[openvino]``), so this module is skipped
when it is not installed. Backbones use seeded random weights (``weights="none"``) at 64x64.
"""

import numpy as np
import pytest

from features.mapper import device

ov = pytest.importorskip("openvino")

from features import backbones, weights  # noqa: E402
from features.mapper import ov_runtime, tf_runtime  # noqa: E402
from tests.runtime_images import SIZE, cosine, smooth_images  # noqa: E402

BATCH = 4


@pytest.fixture(scope="module")
def models():
    return {name: weights.build_backbone(backbones.get(name), input_size=SIZE, weights="none", seed=7)[0]
            for name in ("mobilenet", "vgg16")}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("ov_cache"))


def _rel_err(a, b):
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


def _both(models, name, pooling, precision, cache, flip=True):
    spec = backbones.get(name)
    tf_ex = tf_runtime.Extractor(models[name], spec.preprocess_input, pooling=pooling, flip=flip, batch_size=BATCH)
    ov_ex = ov_runtime.OpenVINOExtractor(models[name], spec.preprocess_input, pooling=pooling, flip=flip,
                                               batch_size=BATCH, precision=precision, cache_dir=cache)
    return tf_ex, ov_ex


def test_available():
    assert device.openvino_available()


# MobileNet without pooling in the default suite; VGG16 and the other poolings (seconds each) with the slow tests.
@pytest.mark.parametrize("name,pooling", [("mobilenet", "none"),
                                          pytest.param("mobilenet", "avg", marks=pytest.mark.slow),
                                          pytest.param("mobilenet", "max", marks=pytest.mark.slow),
                                          pytest.param("vgg16", "none", marks=pytest.mark.slow),
                                          pytest.param("vgg16", "avg", marks=pytest.mark.slow),
                                          pytest.param("vgg16", "max", marks=pytest.mark.slow)])
def test_fp32_matches_tensorflow(models, cache, name, pooling):
    tf_ex, ov_ex = _both(models, name, pooling, "fp32", cache)
    assert ov_ex.feature_shape == tf_ex.feature_shape and ov_ex.input_size == tf_ex.input_size
    for x in (smooth_images(BATCH, 1), smooth_images(BATCH - 1, 2)):  # a full batch, then a short last batch
        ref_o, ref_f = tf_ex(x)
        got_o, got_f = ov_ex(x)
        assert got_o.dtype == np.float32 and got_o.shape == (len(x),) + tf_ex.feature_shape
        assert got_f.shape == got_o.shape
        assert np.all(np.linalg.norm(ref_o.reshape(len(x), -1), axis=1) > 0)
        assert _rel_err(got_o, ref_o).max() <= 1e-4
        assert _rel_err(got_f, ref_f).max() <= 1e-4
        assert _rel_err(got_f, got_o).min() > 1e-3  # the flipped view really is another view


@pytest.mark.slow  # the fp32 comparison above stays in the default suite
@pytest.mark.parametrize("name,pooling", [("mobilenet", "avg"), pytest.param("vgg16", "none", marks=pytest.mark.slow)])
def test_bf16_close_to_tensorflow_fp32(models, cache, name, pooling):
    from features.mapper.device import cpu_has_bf16

    if not cpu_has_bf16():
        pytest.skip("this CPU has no bf16 (AMX or AVX512_BF16): OpenVINO runs f32 instead, see test_runner")
    tf_ex, ov_ex = _both(models, name, pooling, "bf16", cache)
    assert ov_ex.describe()["inference_precision"] == "bf16"
    x = smooth_images(BATCH - 1, 3)
    ref_o, ref_f = tf_ex(x)
    got_o, got_f = ov_ex(x)
    # bf16 keeps 8 bits of mantissa, and a random net with calibrated BatchNorm amplifies its rounding with
    # depth (MobileNet, 2026-12-07: cosine to fp32 0.9997 at conv_pw_6, 0.94-0.97 at conv_pw_13, for
    # TensorFlow's own bf16 too). So OpenVINO's bf16 must be as close to fp32 as TensorFlow's bf16 is
    # (or within 0.99), not closer than bf16 can be.
    spec = backbones.get(name)
    tf_bf16 = tf_runtime.Extractor(weights.build_backbone(spec, input_size=SIZE, weights="none", seed=7,
                                                          dtype_policy="mixed_bfloat16")[0],
                                   spec.preprocess_input, pooling=pooling, flip=True, batch_size=BATCH)
    own_o, own_f = tf_bf16(x)
    assert (cosine(got_o, ref_o) >= np.minimum(0.99, cosine(own_o, ref_o) - 0.01)).all()
    assert (cosine(got_f, ref_f) >= np.minimum(0.99, cosine(own_f, ref_f) - 0.01)).all()
    assert cosine(got_o, ref_o).min() >= 0.9  # far from unrelated features (cosine ~0)


@pytest.mark.slow  # ~10 s: an OpenVINO compile per case (issue 18: default suite <= 4 min)
def test_flip_is_the_mirror_image_and_no_flip_splits_requests(models, cache):
    spec = backbones.get("mobilenet")
    kw = dict(pooling="avg", batch_size=BATCH, precision="fp32", cache_dir=cache)
    with_flip = ov_runtime.OpenVINOExtractor(models["mobilenet"], spec.preprocess_input, flip=True, **kw)
    no_flip = ov_runtime.OpenVINOExtractor(models["mobilenet"], spec.preprocess_input, flip=False, **kw)
    x = smooth_images(BATCH, 4)
    orig, flipped = with_flip(x)
    mirrored, none = no_flip(x[:, :, ::-1])
    assert none is None
    assert _rel_err(mirrored, flipped).max() <= 1e-5
    # Every stream gets a request: without flip the batch is split when there are >= 2 streams.
    d = no_flip.describe()
    assert d["requests_per_call"] * d["request_batch"] >= BATCH
    assert d["requests_per_call"] >= min(d["streams"], BATCH)
    short, _ = no_flip(x[:1])
    assert _rel_err(short, no_flip(x)[0][:1]).max() <= 1e-5


@pytest.mark.slow  # seconds of TensorFlow/subprocess work; the slow stage runs it (issue 18: default suite <= 4 min)
def test_a_mirrored_batch_from_the_caller_gives_the_same_features(models, cache):
    spec = backbones.get("mobilenet")
    ex = ov_runtime.OpenVINOExtractor(models["mobilenet"], spec.preprocess_input, pooling="avg",
                                            batch_size=BATCH, precision="fp32", cache_dir=cache)
    assert ex.takes_mirrored
    x = smooth_images(BATCH - 1, 5)  # short: both views are padded the same way
    own = ex.submit(x).result()
    given = ex.submit(x, np.ascontiguousarray(x[:, :, ::-1])).result()
    for got, want in zip(given, own):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="mirrored batch"):
        ex.submit(x, x[:2])


@pytest.mark.slow  # ~10 s: an OpenVINO compile per case (issue 18: default suite <= 4 min)
def test_compiled_model_cache_is_written(models, tmp_path):
    spec = backbones.get("mobilenet")
    ov_runtime.OpenVINOExtractor(models["mobilenet"], spec.preprocess_input, pooling="avg",
                                       batch_size=2, precision="fp32", cache_dir=str(tmp_path / "c"))
    assert any(p.suffix == ".blob" for p in (tmp_path / "c").iterdir())
    # An unusable cache directory (here: a file) only disables the cache.
    (tmp_path / "f").write_text("")
    ex = ov_runtime.OpenVINOExtractor(models["mobilenet"], spec.preprocess_input, pooling="avg",
                                            batch_size=2, precision="fp32", cache_dir=str(tmp_path / "f"))
    assert ex.cache_dir is None and ex(np.zeros((1, *SIZE, 3), np.uint8))[0].shape == (1, 1024)


@pytest.mark.slow  # error paths; ~2 s of OpenVINO compiles (issue 18: default suite <= 4 min)
def test_rejects_bad_inputs(models, cache):
    spec = backbones.get("mobilenet")
    ex = ov_runtime.OpenVINOExtractor(models["mobilenet"], spec.preprocess_input, pooling="avg",
                                            batch_size=2, precision="fp32", cache_dir=cache)
    with pytest.raises(ValueError, match="exceeds"):
        ex(smooth_images(3))
    with pytest.raises(TypeError, match="uint8"):
        ex(smooth_images(2).astype(np.float32))
    with pytest.raises(ValueError, match="expects"):
        ex(np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="precision"):
        ov_runtime.OpenVINOExtractor(models["mobilenet"], spec.preprocess_input, precision="fp16")


@pytest.mark.slow  # builds a bf16 Keras model (~2 s)
def test_rejects_mixed_precision_keras_model():
    spec = backbones.get("mobilenet")
    model, _ = weights.build_backbone(spec, input_size=SIZE, weights="none", dtype_policy="mixed_bfloat16")
    with pytest.raises(ValueError, match="float32 backbone"):
        ov_runtime.OpenVINOExtractor(model, spec.preprocess_input, cache_dir=None)


@pytest.mark.slow  # five conversions of MobileNet to OpenVINO
def test_converted_model_cache_is_reused_and_keyed(models, tmp_path, caplog):
    spec = backbones.get("mobilenet")
    kw = dict(pooling="avg", batch_size=2, precision="fp32", cache_dir=str(tmp_path / "c"))
    x = smooth_images(2, 5)
    first = ov_runtime.OpenVINOExtractor(models["mobilenet"], spec.preprocess_input, model_key="k1", **kw)
    again = ov_runtime.OpenVINOExtractor(models["mobilenet"], spec.preprocess_input, model_key="k1", **kw)
    assert not first.converted_from_cache and again.converted_from_cache
    for a, b in zip(first(x), again(x)):
        np.testing.assert_array_equal(a, b)
    # Another key (other weights or layer), or other pooling: converted afresh, never the cached graph.
    other = ov_runtime.OpenVINOExtractor(models["mobilenet"], spec.preprocess_input, model_key="k2", **kw)
    maps = ov_runtime.OpenVINOExtractor(models["mobilenet"], spec.preprocess_input, model_key="k1",
                                              **{**kw, "pooling": "none"})
    assert not other.converted_from_cache and not maps.converted_from_cache and maps(x)[0].ndim == 4
    # No key: nothing cached, converted each time.
    plain = ov_runtime.OpenVINOExtractor(models["mobilenet"], spec.preprocess_input, **kw)
    assert not plain.converted_from_cache
    converted = tmp_path / "c" / "converted"
    assert len(list(converted.iterdir())) == 3 and not [p for p in converted.iterdir() if ".tmp-" in p.name]
    # A damaged entry is converted again (with a warning) and replaced.
    digest = ov_runtime.model_key_digest("k1", "avg", "float32", SIZE)
    (converted / digest / "model.xml").write_text("<not xml")
    with caplog.at_level("WARNING", logger="bneck"):
        healed = ov_runtime.OpenVINOExtractor(models["mobilenet"], spec.preprocess_input, model_key="k1", **kw)
    assert "unreadable" in caplog.text and not healed.converted_from_cache
    np.testing.assert_array_equal(healed(x)[0], first(x)[0])


@pytest.mark.slow  # seconds of TensorFlow/subprocess work; the slow stage runs it (issue 18: default suite <= 4 min)
def test_submitted_batches_complete_in_order(models, cache):
    spec = backbones.get("mobilenet")
    ex = ov_runtime.OpenVINOExtractor(models["mobilenet"], spec.preprocess_input, pooling="avg",
                                            batch_size=BATCH, precision="fp32", cache_dir=cache)
    a, b = smooth_images(BATCH, 8), smooth_images(BATCH - 1, 9)
    pa, pb = ex.submit(a), ex.submit(b)
    rb, ra = pb.result(), pa.result()
    for got, want in zip(ra + rb, ex(a) + ex(b)):
        np.testing.assert_array_equal(got, want)
    assert rb[0].shape[0] == BATCH - 1
    ex.submit(a).cancel()  # waits for its requests; the extractor stays usable
    np.testing.assert_array_equal(ex(a)[0], ra[0])

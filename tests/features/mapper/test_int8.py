"""int8 stage one: calibration rows, NNCF quantization against TensorFlow fp32, and the quantized-model cache.

Needs the optional extras OpenVINO and NNCF (``pip install bneck[int8]``); skipped without them.
"""

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from features import backbones, weights  # noqa: E402
from features.mapper import int8, ov_runtime, tf_runtime
from features.reader.manifest import Manifest  # noqa: E402
from tests.runtime_images import SIZE, cosine, smooth_images  # noqa: E402


class _Calibration:
    """A calibration set held in memory, counting how often its images are asked for."""

    def __init__(self, x, key="test-calibration"):
        self.x, self.key, self.loads = x, key, 0

    def images(self):
        self.loads += 1
        return self.x


def test_calibration_rows_cover_the_whole_source():
    rows = int8.calibration_rows(1000, 5)
    assert rows.tolist() == [0, 250, 500, 749, 999]
    assert int8.calibration_rows(3, 300).tolist() == [0, 1, 2]  # fewer rows than asked: all of them
    with pytest.raises(ValueError, match="--calibration-images must be positive"):
        int8.calibration_rows(10, 0)


def test_calibration_id_names_rows_and_source():
    key = int8.calibration_id("abc123", 480, 300)
    assert "300 of 480 rows" in key and "abc123" in key
    assert int8.calibration_id("abc123", 100, 300) != key


def test_calibration_for_refuses_tensorflow_and_passes_other_precisions():
    m = Manifest(kind="folder", root="/data", paths=["a.png"])
    assert int8.calibration_for("bf16", "tensorflow", m, 300, SIZE) is None
    with pytest.raises(ValueError, match="needs --runtime openvino"):
        int8.calibration_for("int8", "tensorflow", m, 300, SIZE)


def test_calibration_images_skip_rows_that_cannot_be_decoded(tmp_path, caplog):
    from PIL import Image

    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.png"
        Image.fromarray(smooth_images(1, seed=i)[0]).save(p)
        paths.append(p.name)
    (tmp_path / "3.png").write_bytes(b"not an image")
    m = Manifest(kind="folder", root=str(tmp_path), paths=paths, row_errors={1: "missing"})
    x = int8.calibration_images(m, 4, SIZE)
    assert x.shape == (2, *SIZE, 3) and x.dtype == np.uint8  # rows 0 and 2
    assert "1 of 3 rows could not be decoded" in caplog.text


@pytest.fixture(scope="module")
def vgg():
    spec = backbones.get("vgg16")
    return spec, weights.build_backbone(spec, input_size=SIZE, weights="none", seed=7)[0]


@pytest.mark.slow  # ~12 s: NNCF calibration
def test_int8_features_are_close_to_tensorflow_fp32_and_cached(vgg, tmp_path):
    spec, model = vgg
    x = smooth_images(8, seed=1)
    ref, ref_flip = tf_runtime.Extractor(model, spec.preprocess_input, pooling="none", flip=True, batch_size=8)(x)
    cal = _Calibration(smooth_images(32, seed=0))
    kw = dict(pooling="none", flip=True, batch_size=8, precision="int8", cache_dir=str(tmp_path),
              model_key="vgg16|test", calibration=cal)
    ex = ov_runtime.OpenVINOExtractor(model, spec.preprocess_input, **kw)
    got, got_flip = ex(x)
    assert ex.describe()["precision"] == "int8" and ex.quantized_from_cache is False
    assert cosine(got, ref).min() >= 0.98 and cosine(got_flip, ref_flip).min() >= 0.98
    # A second run (another shard, a rerun) reads the quantized model back: same features, no calibration.
    again = ov_runtime.OpenVINOExtractor(model, spec.preprocess_input, **kw)
    assert again.quantized_from_cache is True and cal.loads == 1
    np.testing.assert_array_equal(again(x)[0], got)
    # Another calibration set is another model.
    other = ov_runtime.OpenVINOExtractor(model, spec.preprocess_input,
                                               **{**kw, "calibration": _Calibration(smooth_images(8, seed=5), "other")})
    assert other.quantized_from_cache is False


def test_int8_needs_a_calibration_set_and_only_int8_takes_one(vgg, tmp_path):
    spec, model = vgg
    with pytest.raises(ValueError, match="needs a calibration set"):
        ov_runtime.OpenVINOExtractor(model, spec.preprocess_input, precision="int8", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="only int8 takes one"):
        ov_runtime.OpenVINOExtractor(model, spec.preprocess_input, precision="bf16", cache_dir=str(tmp_path),
                                           calibration=_Calibration(smooth_images(2)))

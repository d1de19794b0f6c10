"""The float16 store never silently destroys features (issue 19): lost rows are counted, and a run whose
first batch is lost entirely stops with a clear message instead of writing a file of zeros."""

import os

import numpy as np
import pytest

from features.config import ExtractConfig
from features.mapper.batches import LostRows, StoreRangeError, lost_rows
from features.runner import extract
from tests.imagefolders import make_class_folder


def test_lost_rows_counts_zeros_and_infinities_in_float16_only():
    x = np.ones((4, 3, 3, 2), np.float16)
    x[1] = np.float32(1e-19)  # underflows to exact zeros
    x[2, 0, 0, 0] = np.float32(1e6)  # overflows to inf
    assert lost_rows(x) == 2
    assert lost_rows(x.astype(np.float32)) == 0  # a float32 row of zeros is a real feature row
    assert lost_rows(np.zeros((0, 5), np.float16)) == 0


def test_rows_mostly_below_the_float16_range_count_as_lost():
    # ReLU maps are mostly exact zeros, which is fine; values of 1e-6 are float16 subnormals kept with a few
    # bits, and their neighbours below 6e-8 became zeros: such a row has lost its information.
    x = np.zeros((3, 100), np.float32)
    x[:, :10] = 0.5  # a healthy sparse row
    x[1, :10] = 1e-6  # every non-zero value subnormal
    x[2, :4], x[2, 4:10] = 0.5, 1e-6  # 6 of its 10 non-zero values subnormal
    assert lost_rows(x.astype(np.float16)) == 2
    x[2, :6], x[2, 6:10] = 0.5, 1e-6  # 4 of 10: most of the row is intact
    assert lost_rows(x.astype(np.float16)) == 1


def test_lost_rows_stop_a_run_that_kept_nothing_and_are_counted_once_some_were_kept():
    watch = LostRows()
    watch.add(0, good=0)  # a first batch of undecodable images keeps nothing, loses nothing
    assert watch.warning() is None
    with pytest.raises(StoreRangeError, match=r"every feature row so far \(4\).*--store-dtype float32 --overwrite"):
        watch.add(4, good=4)
    later = LostRows()
    later.add(1, good=8)
    later.add(8, good=8)  # rows were kept before: the run goes on, and says so at the end
    assert later.lost == 9 and later.kept == 7
    assert later.warning().startswith("9 of 16 feature rows were lost in the float16 store")
    assert "--store-dtype float32 --overwrite" in later.warning()


def test_a_first_batch_lost_in_float16_stops_with_the_fix_named(tmp_path):
    # MobileNet at 96 px with the uncalibrated random init (none-raw) gives activations near 1e-19 at its last block.
    make_class_folder(tmp_path / "d", per_class=4, size=(96, 96))
    cfg = dict(data=str(tmp_path / "d"), output=str(tmp_path / "f.h5"), backbone="mobilenet", input_size="96",
               weights="none-raw", precision="fp32", runtime="tensorflow", progress=False, batch_size=8)
    with pytest.raises(StoreRangeError, match="--store-dtype float32 --overwrite"):
        extract(ExtractConfig(**cfg))
    assert not os.path.exists(tmp_path / "f.h5")
    s = extract(ExtractConfig(**cfg, store_dtype="float32", overwrite=True))
    assert s.rows == 8 and s.bad == 0


def test_auto_precision_is_fp32_for_regression_and_the_file_says_it_was_auto(monkeypatch):
    from features.mapper import device

    monkeypatch.setattr(device, "has_gpu", lambda: False)
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    monkeypatch.delenv("BNECK_NO_BF16", raising=False)
    assert device.resolve_precision("auto", task="regression") == "fp32"
    assert device.resolve_precision("auto", task="classification") == "bf16"
    assert device.resolve_precision("bf16", task="regression") == "bf16"  # a value the user gives is kept
    monkeypatch.setattr(device, "has_gpu", lambda: True)
    assert device.resolve_precision("auto", task="regression") == "fp32"
    assert device.resolve_precision("auto", task="classification") == "fp16"

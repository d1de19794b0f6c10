"""The float16 store never silently destroys features (issue 19): lost rows are counted, and a run whose
first batch is lost entirely stops with a clear message instead of writing a file of zeros."""

import os

import numpy as np
import pytest

from features.config import ExtractConfig
from features.mapper.batches import lost_rows
from features.runner import StoreRangeError, extract
from tests.imagefolders import make_class_folder


def test_lost_rows_counts_zeros_and_infinities_in_float16_only():
    x = np.ones((4, 3, 3, 2), np.float16)
    x[1] = np.float32(1e-19)  # underflows to exact zeros
    x[2, 0, 0, 0] = np.float32(1e6)  # overflows to inf
    assert lost_rows(x) == 2
    assert lost_rows(x.astype(np.float32)) == 0  # a float32 row of zeros is a real feature row
    assert lost_rows(np.zeros((0, 5), np.float16)) == 0


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

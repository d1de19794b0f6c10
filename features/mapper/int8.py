"""int8 stage one: post-training quantization of the OpenVINO model, calibrated on the dataset itself.

Why: on CPUs without AMX, bf16 is only about 2x fp32, while int8 (VNNI) runs VGG16 about 1.9x
faster than bf16 (bench/). NNCF (the optional ``[int8]`` extra) inserts the quantizers from
activation statistics of a calibration set; ops it leaves in floating point run in bf16 where
the CPU has it.

The calibration set is ``n`` rows spread evenly over the *whole* source, never over one shard:
every shard of a dataset is then quantized from the same images and produces comparable
features. Which rows, how many and the source fingerprint are recorded in the HDF5 attrs
(``calibration``), so a merge refuses shards calibrated differently.
"""

from __future__ import annotations

import logging

import numpy as np

from features.mapper import device

log = logging.getLogger("bneck")

#: Calibration images when --calibration-images is not given (NNCF's own default subset size).
DEFAULT_IMAGES = 300
# Bumped when the row choice or the quantization settings change, so old cached models are not reused.
RULE_VERSION = "1"


def require() -> None:
    """Raise a clear error when int8 cannot run here."""

    if not device.openvino_available() or not device.nncf_available():
        raise ValueError("--precision int8 needs OpenVINO and NNCF: pip install 'bneck[int8]'")


def calibration_for(precision: str, runtime: str, manifest, n: int, input_size, fingerprint: str | None = None):
    """The :class:`Calibration` of an int8 run, None for other precisions; checks int8 can run."""
    if precision != "int8":
        return None
    if runtime != "openvino":
        raise ValueError(f"--precision int8 quantizes the OpenVINO model; it needs --runtime openvino (or auto "
                         f"on a CPU), not --runtime {runtime}")
    require()
    return Calibration(manifest, n, input_size, fingerprint)


def calibration_rows(n_rows: int, n: int) -> np.ndarray:
    """``min(n, n_rows)`` row indices spread evenly over ``range(n_rows)`` (first and last included)."""
    if n < 1:
        raise ValueError(f"--calibration-images must be positive, got {n}")
    k = min(n, n_rows)
    return np.unique(np.linspace(0, n_rows - 1, k).round().astype(np.int64)) if k else np.empty(0, np.int64)


def calibration_id(fingerprint: str, n_rows: int, n: int) -> str:
    """What identifies a calibration set: the rule, the source fingerprint and the rows taken."""
    return f"{min(n, n_rows)} of {n_rows} rows, evenly spaced (rule v{RULE_VERSION}, source {fingerprint})"


def calibration_images(manifest, n: int, input_size) -> np.ndarray:
    """Decode the calibration rows of ``manifest`` as stage one does: uint8 (k, H, W, 3); bad rows are skipped."""
    from features import images

    rows = [int(r) for r in calibration_rows(len(manifest), n) if int(r) not in manifest.row_errors]
    decoded = [d[0] for d in images.decode_all([manifest.source(r) for r in rows], input_size)]
    good = [a for a in decoded if a is not None]
    if not good:
        raise ValueError(f"--precision int8: none of the {len(rows)} calibration rows of {manifest.root} "
                         "could be decoded")
    if len(good) < len(rows):
        log.warning("int8 calibration: %d of %d rows could not be decoded; calibrating on %d images",
                    len(rows) - len(good), len(rows), len(good))
    return np.stack(good)


def quantize(ov_model, calibration: np.ndarray):
    """The int8 ``ov.Model`` of float ``ov_model`` (uint8 NHWC input), calibrated on ``calibration`` images."""
    import contextlib
    import sys

    import nncf

    log.info("int8: calibrating on %d images (once per dataset and model; the result is cached)", len(calibration))
    items = [calibration[i:i + 1] for i in range(len(calibration))]  # one image per item: batch-free statistics
    # NNCF draws its progress bar on stdout, which belongs to `--json` summaries and bench JSON.
    with contextlib.redirect_stdout(sys.stderr):
        return nncf.quantize(ov_model, nncf.Dataset(items), subset_size=len(items))


class Calibration:
    """Where an int8 model's calibration images come from; they are decoded only on a cache miss."""

    def __init__(self, manifest, n: int, input_size, fingerprint: str | None = None):
        self.manifest, self.n, self.input_size = manifest, int(n), tuple(input_size)
        self.key = calibration_id(fingerprint or manifest.fingerprint(), len(manifest), self.n)

    def images(self) -> np.ndarray:
        """The decoded calibration images, uint8 (k, H, W, 3)."""
        return calibration_images(self.manifest, self.n, self.input_size)

    def __repr__(self) -> str:  # stable, so per-actor caches (engines.ray) recognise the same calibration
        return f"Calibration({self.key!r}, {self.input_size})"

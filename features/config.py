"""What ``bneck extract`` is asked to do and what it reports: the config, the summary and the bad-images error.

Kept apart from :mod:`features.runner` so callers (the CLI, the Ray engine, benches) can build a
config or read a summary without the runner's machinery.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from features.mapper import int8
from features.mapper.runtimes import default_runtime
from features.reader.fs import is_url
from features.reader.manifest import parse_shard


class TooManyBadImages(RuntimeError):
    """More than --max-bad-fraction of the rows could not be decoded; chunks are kept."""


@dataclass
class ExtractConfig:
    """Every setting of ``bneck extract`` (the CLI maps its flags one to one onto these)."""

    data: str
    output: str
    backbone: str = "vgg16"
    layer: str | None = None
    input_size: str | None = None
    pooling: str = "none"
    weights: str = "imagenet"
    seed: int = 0
    precision: str = "auto"
    store_dtype: str = "float16"
    flip: bool = True
    batch_size: int | str = 32  # or "auto": 256 with a GPU, else 32 (features.mapper.device.resolve_batch_size)
    chunk_rows: int | None = None
    shard: str | None = None
    overwrite: bool = False
    max_bad_fraction: float = 0.05
    workers: int | None = None
    runtime: str = field(default_factory=lambda: default_runtime())
    xla: str = "auto"  # auto = on with a GPU only (on this CPU it made VGG16 slower)
    calibration_images: int = int8.DEFAULT_IMAGES  # --precision int8 only
    calibrate_on: str | None = None  # --precision int8 only: another source to calibrate on (e.g. the train set)
    progress: bool = True
    source: dict = field(default_factory=dict)  # kind, categories, image_root, path_column, ...

    def _check_batching(self) -> None:
        if self.batch_size == "auto":  # resolved by the runner on the machine that runs it
            if self.chunk_rows is not None:
                raise ValueError("--chunk-rows needs a fixed --batch-size (it must be a multiple of it), not auto")
            return
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"--batch-size must be auto or at least 1, got {self.batch_size}")
        if self.chunk_rows is not None and (self.chunk_rows < 1 or self.chunk_rows % self.batch_size):
            raise ValueError(f"--chunk-rows must be a multiple of --batch-size (so resumed batches line up), "
                             f"got {self.chunk_rows} with batch size {self.batch_size}")

    def check(self) -> None:
        """Raise ValueError for settings that are wrong on their face, before any file is read.

        What needs the dataset or the model (a layer name, a missing file) is checked later, by
        the stage that reads it; ``bneck extract`` maps this error to exit 2.
        """
        from features import backbones

        if is_url(self.output):
            # The writer preallocates the file and writes rows in place (pwrite, fsync, atomic renames).
            raise ValueError(f"-o/--output {self.output}: the HDF5 output must be a local path, not a URL; it is "
                             "written in place with fsync and atomic renames, which an object store cannot do. "
                             "Write it locally, then copy it up")
        try:
            spec = backbones.get(self.backbone)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        backbones.parse_input_size(self.input_size, spec)
        if self.pooling not in spec.poolings:
            raise ValueError(f"--pooling {self.pooling} does not apply to {spec.name}; choose one of "
                             f"{', '.join(spec.poolings)}")
        if self.shard:
            parse_shard(self.shard)
        if self.store_dtype not in ("float16", "float32"):
            raise ValueError("--store-dtype must be float16 or float32")
        self._check_batching()
        if self.calibrate_on and self.precision != "int8":
            raise ValueError("--calibrate-on applies to --precision int8 only")
        if self.runtime == "openvino" and self.precision == "fp16":
            raise ValueError("--precision fp16 is a GPU setting; with --runtime openvino use bf16 or fp32")
        if not 0 <= self.max_bad_fraction <= 1:
            raise ValueError(f"--max-bad-fraction must be between 0 and 1, got {self.max_bad_fraction}")


@dataclass
class ExtractSummary:
    """What one run did (printed as the one-line summary, and as JSON with --json)."""

    output: str
    rows: int
    computed: int
    bad: int
    seconds: float
    bytes_written: int
    skipped_existing: bool = False
    bad_reasons: dict = field(default_factory=dict)
    startup_seconds: float = 0.0  # manifest, weights, model build/conversion: before the first batch
    # How the run ran (also in the file's attrs): where the model ran, its batch after any OOM
    # back-off, XLA, and the decode threads. A cluster job's log then says why it was fast or slow.
    device: str = ""
    compute_batch: int = 0
    xla: bool = False
    decode_workers: int = 0

    @property
    def images_per_s(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        if self.skipped_existing:
            return f"{self.output} is already complete ({self.rows} rows); nothing to do (use --overwrite to redo)"
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.bad_reasons.items()))
        return (f"{self.rows} images ({self.computed} computed now), {self.bad} bad"
                + (f" [{reasons}]" if reasons else "")
                + f", {self.seconds:.1f} s, {self.images_per_s:.1f} img/s, "
                f"{self.bytes_written / 1e6:.1f} MB written -> {self.output}"
                + (f" [{self.device}, batch {self.compute_batch}, XLA {'on' if self.xla else 'off'}, "
                   f"{self.decode_workers} decode threads]" if self.device else ""))

    def as_dict(self) -> dict:
        d = asdict(self)
        d["images_per_s"] = round(self.images_per_s, 2)
        steady = self.seconds - self.startup_seconds
        d["images_per_s_after_startup"] = round(self.computed / steady, 2) if steady > 0 else 0.0
        return d


def shard_output(output: str, shard: str | None) -> str:
    """The predictable file name of shard I/N: ``OUT.shard-0000I-of-0000N.h5``."""
    if not shard:
        return output
    i, n = parse_shard(shard)
    root, ext = os.path.splitext(output)
    return f"{root}.shard-{i:05d}-of-{n:05d}{ext or '.h5'}"

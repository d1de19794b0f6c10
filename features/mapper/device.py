"""What this machine can run: CPU instruction sets, GPUs, optional runtimes, and the precision and XLA
choices that follow from them. Probes only; no extractor lives here, so every runtime can ask.
"""

from __future__ import annotations

import os

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")  # int8: OpenVINO + NNCF only (features.mapper.int8)
XLA_CHOICES = ("auto", "on", "off")
_POLICY = {"fp32": None, "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            return {flag for line in f if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:  # not Linux: no native bf16 assumed, which only costs speed
        return set()


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 (AMX or AVX512_BF16), where bf16 inference is several times faster."""
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})


def cpu_has_int8_dot() -> bool:
    """True when the CPU has int8 dot-product instructions (VNNI or AMX), where int8 inference pays off."""
    return bool(cpu_flags() & {"amx_int8", "avx512_vnni", "avx_vnni"})


def has_gpu() -> bool:
    """True when TensorFlow sees a GPU."""
    from features.quiet import import_tensorflow_quietly

    tf = import_tensorflow_quietly()  # the first device probe prints CUDA noise on CPU machines

    return bool(tf.config.list_physical_devices("GPU"))


#: ``--batch-size auto``: a GPU wants large batches to fill its cores (the OOM back-off halves the
#: compute batch if the card cannot hold it, rows unchanged); on a CPU a batch above ~32 only
#: costs memory (bench/model_ceiling.py).
AUTO_BATCH = {"gpu": 256, "cpu": 32}


def resolve_batch_size(requested) -> int:
    """``--batch-size``: an integer as given, or ``auto`` -> :data:`AUTO_BATCH` for this machine."""
    if requested == "auto":
        return AUTO_BATCH["gpu" if has_gpu() else "cpu"]
    return int(requested)


def resolve_precision(requested: str = "auto", task: str | None = None) -> str:
    """``auto`` -> fp32 for regression targets; else fp16 on a GPU, bf16 on a bf16-capable CPU, else fp32.

    Regression (keypoints) gets fp32 because its metric is a distance that a linear head reads from
    every feature: issue 19 measured bf16 features 48% worse in RMSE on ImageNet VGG16 faces, and
    bench/quality.py 1.5% worse even on seeded random weights, while classification lost nothing.
    The speed cost is the bf16 speed-up (2.5x on the faces of that bench) on small keypoint sets.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return requested
    if task == "regression":
        return "fp32"
    if has_gpu():
        return "fp16"
    if os.environ.get("BNECK_NO_BF16") != "1" and cpu_has_bf16():
        return "bf16"
    return "fp32"


def dtype_policy(precision: str) -> str | None:
    """The Keras dtype policy that implements ``precision`` (None = float32)."""
    return _POLICY[precision]


def xla_default(requested: str = "auto") -> bool:
    """``--xla auto`` -> on with a GPU only: on this CPU XLA made VGG16 slower (bench/model_ceiling.py --xla)."""
    if requested not in XLA_CHOICES:
        raise ValueError(f"--xla must be one of {', '.join(XLA_CHOICES)}, got {requested!r}")
    return has_gpu() if requested == "auto" else requested == "on"


def is_out_of_memory(exc: BaseException) -> bool:
    """True for TensorFlow's device out-of-memory error (what the batch back-off reacts to)."""
    import tensorflow as tf

    return isinstance(exc, tf.errors.ResourceExhaustedError)


def openvino_available() -> bool:
    """True when the optional ``openvino`` package (``pip install bneck[openvino]``) is importable."""
    try:
        import openvino  # noqa: F401
    except Exception:  # noqa: BLE001  (ImportError, or a broken native library)
        return False
    return True


def nncf_available() -> bool:
    """True when NNCF (``pip install 'bneck[int8]'``) is importable."""
    try:
        import nncf  # noqa: F401
    except Exception:  # noqa: BLE001  (ImportError, or a broken dependency)
        return False
    return True

"""Stage-one inference runtimes: which one ``--runtime`` means, and the extractor it builds.

``auto`` picks OpenVINO on a CPU when the ``[openvino]`` extra is installed (3-7x faster than
TensorFlow there for all but VGG, see bench/), and TensorFlow with mixed precision on a GPU.
"""

from __future__ import annotations

import os

from features.mapper import device

RUNTIMES = ("auto", "tensorflow", "openvino")


def default_runtime() -> str:
    """``$BNECK_RUNTIME`` or ``auto`` (the default of ``--runtime``)."""
    return os.environ.get("BNECK_RUNTIME", "auto") or "auto"


def resolve_runtime(runtime: str, spec=None) -> str:
    """``auto`` -> OpenVINO on a CPU when the [openvino] extra is installed and ``spec`` converts, else TensorFlow."""

    if runtime not in RUNTIMES:
        raise ValueError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    works = tuple(getattr(spec, "runtimes", RUNTIMES[1:]))  # the registry says which runtimes an entry runs on
    if runtime == "openvino" and "openvino" not in works:
        raise ValueError(f"--runtime openvino does not run {spec.name} (its conversion is not supported); "
                         f"use --runtime tensorflow")
    if runtime == "openvino" and not device.openvino_available():
        raise ValueError("--runtime openvino needs the optional extra: pip install 'bneck[openvino]'")
    if runtime == "auto":
        # On a CPU OpenVINO is 3-7x faster than TensorFlow for all but VGG (bench/); on a GPU,
        # TensorFlow with mixed precision is the fast path.
        ov = "openvino" in works and device.openvino_available() and not device.has_gpu()
        return "openvino" if ov else "tensorflow"
    return runtime


def make_extractor(runtime, model, spec, cfg, precision, winfo, xla: bool = False, calibration=None):
    """The extractor of ``runtime`` for an ExtractConfig ``cfg`` (features cast to its store dtype in-graph)."""
    from features.mapper import tf_runtime

    if runtime == "openvino":
        from features.mapper.ov_runtime import DEFAULT_CACHE_DIR, OpenVINOExtractor

        # Compiled blobs live next to the weights file they were made from, when there is one.
        cache = os.path.join(os.path.dirname(winfo.path), "bneck-openvino-cache") if winfo.path else DEFAULT_CACHE_DIR
        return OpenVINOExtractor(model, spec.preprocess_function, pooling=cfg.pooling, flip=cfg.flip,
                                 batch_size=cfg.batch_size, precision=precision, cache_dir=cache,
                                 out_dtype=cfg.store_dtype, model_key=_model_key(spec, cfg, winfo),
                                 calibration=calibration)
    return tf_runtime.Extractor(model, spec.preprocess_function, pooling=cfg.pooling, flip=cfg.flip,
                            batch_size=cfg.batch_size, out_dtype=cfg.store_dtype, xla=xla)


def _model_key(spec, cfg, winfo) -> str:
    """What identifies a truncated backbone's graph and weights, for the converted-model cache."""
    import keras

    return "|".join([spec.name, cfg.layer or spec.default_layer, winfo.identity, winfo.sha256, keras.__version__])


def resolve_xla(requested: str, runtime: str) -> bool:
    """``--xla auto|on|off`` for ``runtime`` (an already resolved runtime): XLA is a TensorFlow option."""

    if runtime == "openvino":
        if requested == "on":
            raise ValueError("--xla on applies to --runtime tensorflow; OpenVINO compiles the model itself")
        return False
    return device.xla_default(requested)

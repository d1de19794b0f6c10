"""``bneck info --system``: what stage one will run on here, and what its ``auto`` choices resolve to.

A cluster job's first question is whether TensorFlow sees the GPU, with which CUDA and cuDNN, and
which precision and runtime ``auto`` will pick; asking it here costs one TensorFlow import, not a
failed run.
"""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 - not installed, or broken metadata
        return None


def system_info() -> dict:
    """A JSON-ready description of this machine as stage one sees it."""
    from features import __version__
    from features.images import default_workers
    from features.mapper import device, runtimes
    from features.quiet import import_tensorflow_quietly

    tf = import_tensorflow_quietly()
    build = dict(tf.sysconfig.get_build_info())
    gpus = []
    for i, gpu in enumerate(tf.config.list_physical_devices("GPU")):
        details = tf.config.experimental.get_device_details(gpu)
        gpus.append({"id": i, "name": details.get("device_name", gpu.name),
                     "compute_capability": ".".join(map(str, details.get("compute_capability", ()))) or None})
    flags = device.cpu_flags()
    runtime = runtimes.resolve_runtime("auto")
    return {
        "bneck": __version__, "python": platform.python_version(), "platform": platform.platform(),
        "tensorflow": tf.__version__, "keras": _version("keras"), "openvino": _version("openvino"),
        "nncf": _version("nncf"), "keras_hub": _version("keras-hub"),
        "cuda_build": bool(build.get("is_cuda_build")), "cuda": build.get("cuda_version"),
        "cudnn": build.get("cudnn_version"), "gpus": gpus,
        "cpu": cpu_model(), "cores": os.cpu_count(),
        "cpu_bf16": device.cpu_has_bf16(), "cpu_int8_dot": device.cpu_has_int8_dot(),
        "cpu_amx": bool(flags & {"amx_bf16", "amx_int8", "amx_tile"}),
        "auto": {"runtime": runtime, "precision": device.resolve_precision("auto"),
                 "xla": runtimes.resolve_xla("auto", runtime), "decode_workers": default_workers()},
    }


def format_system_info(info: dict) -> str:
    """The human-readable form of :func:`system_info`."""
    gpus = "; ".join(f"{g['id']}: {g['name']} (sm {g['compute_capability']})" for g in info["gpus"]) or "none"
    cpu_bits = [name for name, on in (("bf16", info["cpu_bf16"]), ("int8-dot", info["cpu_int8_dot"]),
                                      ("AMX", info["cpu_amx"])) if on]
    auto = info["auto"]
    return "\n".join([
        f"bneck {info['bneck']}, Python {info['python']}, {info['platform']}",
        f"TensorFlow {info['tensorflow']} (CUDA build: {'yes' if info['cuda_build'] else 'no'}"
        + (f", CUDA {info['cuda']}, cuDNN {info['cudnn']}" if info["cuda_build"] else "") + f"), Keras {info['keras']}",
        f"OpenVINO {info['openvino'] or 'not installed'}, NNCF {info['nncf'] or 'not installed'}, "
        f"KerasHub {info['keras_hub'] or 'not installed'}",
        f"GPUs: {gpus}",
        f"CPU: {info['cpu']}, {info['cores']} cores" + (f" ({', '.join(cpu_bits)})" if cpu_bits else ""),
        f"auto picks: --runtime {auto['runtime']}, --precision {auto['precision']} (fp32 for keypoint/regression "
        "data), "
        f"--xla {'on' if auto['xla'] else 'off'}, {auto['decode_workers']} decode threads",
    ])

"""Import TensorFlow without its native start-up chatter on stderr.

TF 2.21 prints absl/oneDNN/CUDA-probe lines (``I0000 ... port.cc``, ``cuInit`` failures on CPU
machines) from C++ before ``TF_CPP_MIN_LOG_LEVEL`` takes effect, burying bneck's own messages.
"""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def native_stderr_silenced():
    """Point file descriptor 2 at /dev/null for the block (Python-level errors still propagate)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow_quietly():
    """Import TensorFlow and probe devices once with native stderr silenced; returns the module.

    ``BNECK_TF_LOGS=1`` (set by ``bneck -v``) keeps TensorFlow's own output.
    """
    if "tensorflow" in sys.modules or os.environ.get("BNECK_TF_LOGS") == "1":
        import tensorflow as tf

        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with native_stderr_silenced():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
    return tf

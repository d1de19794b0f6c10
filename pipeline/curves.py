"""Training histories as files a model directory keeps: ``history.csv`` and ``learning_curve.png``.

``train`` (dense heads) and ``finetune`` both write them, so both directories read the same way.
"""

from __future__ import annotations

import csv
import io

import numpy as np


def history_csv(history: dict) -> bytes:
    """One row per epoch: ``epoch`` (1-based) then every logged value, blank where an epoch lacks one."""
    keys = list(history)
    n = max((len(v) for v in history.values()), default=0)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["epoch", *keys])
    for i in range(n):
        w.writerow([i + 1, *[history[k][i] if i < len(history[k]) else "" for k in keys]])
    return buf.getvalue().encode()


def learning_curve_png(history: dict) -> bytes | None:
    """A loss/metric plot when the [plots] extra (matplotlib) is installed, else None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("loss", "val_loss"):
        if key in history:
            ax.plot(np.arange(1, len(history[key]) + 1), history[key], label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    ax.set_title("learning curve")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()

"""The report's plots as PNG bytes: learning curves, grid scores, confusion matrix, per-class and per-keypoint bars.

Every function takes one or several models' series, so a model's page and the comparison page draw
with the same code: on the comparison page the models are overlaid, one colour each. Figures have
fixed sizes (capped for many classes) at 100 dpi, so a page's weight does not grow with its rows.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np

from pipeline.tools.report_data import normalised_confusion

INSTALL_HINT = "bneck report draws its plots with matplotlib: pip install 'bneck[plots]' (or: pip install matplotlib)"
DPI = 100
#: Above this many classes the confusion matrix drops its tick labels and the bars show the worst classes only.
MAX_LABELLED_CLASSES = 40


class MissingPlots(RuntimeError):
    """matplotlib (the ``[plots]`` extra) is not installed."""


def require_matplotlib():
    """Return ``matplotlib.pyplot`` on the Agg backend, or raise :class:`MissingPlots` saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: never open a window, work without a display
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingPlots(INSTALL_HINT) from None
    return plt


def _png(fig) -> bytes:
    plt = require_matplotlib()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def _colours(n: int):
    plt = require_matplotlib()
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return [cycle[i % len(cycle)] for i in range(n)]


def _metric_key(history: dict) -> str | None:
    """The per-epoch metric beside the loss: accuracy for classifiers, mae for keypoints, else the first one."""
    for k in ("accuracy", "mae", "mse"):
        if k in history or f"val_{k}" in history:
            return k
    others = [k for k in history if not k.startswith("val_") and k not in ("loss", "lr")]
    return others[0] if others else None


def learning_curves(series) -> bytes:
    """Loss and metric per epoch, train solid and validation dashed, the kept epoch marked with a star.

    ``series`` is a list of ``(label, history, best_epoch)``; best_epoch is 1-based or None.
    """
    plt = require_matplotlib()
    metric = next((m for _l, h, _b in series if (m := _metric_key(h))), None)
    panels = ["loss"] + ([metric] if metric else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False, layout="constrained")
    for ax, key in zip(axes[0], panels):
        for colour, (label, h, best) in zip(_colours(len(series)), series):
            for name, style in ((key, "-"), (f"val_{key}", "--")):
                if name not in h:
                    continue
                y = np.asarray(h[name], float)
                x = np.arange(1, len(y) + 1)
                ax.plot(x, y, style, color=colour, label=f"{label} {'validation' if name != key else 'train'}")
                if best and 1 <= best <= len(y) and (name != key or f"val_{key}" not in h):
                    ax.plot([best], [y[best - 1]], "*", color=colour, markersize=13, markeredgecolor="black",
                            label=f"{label} kept epoch {best}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _png(fig)


def grid_scores(grid: list[dict], title: str = "grid search") -> bytes:
    """Cross-validated score per grid value with its spread; the best one marked.

    One numeric parameter gives a line over its values (a log axis when they span 10x or more);
    anything else a bar per combination.
    """
    plt = require_matplotlib()
    keys = sorted({k for g in grid for k in g["params"]})
    mean = np.array([g["mean"] for g in grid])
    std = np.array([g["std"] for g in grid])
    best = int(np.argmax(mean))
    fig, ax = plt.subplots(figsize=(5.2, 3.6), layout="constrained")
    values = [g["params"].get(keys[0]) for g in grid] if len(keys) == 1 else []
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        order = np.argsort(values)
        x = np.asarray(values, float)[order]
        ax.errorbar(x, mean[order], yerr=std[order], marker="o", capsize=3)
        ax.plot([values[best]], [mean[best]], "*", markersize=15, color="tab:red", label="best")
        if x.min() > 0 and x.max() / x.min() >= 10:
            ax.set_xscale("log")
        ax.set_xlabel(keys[0])
    else:
        labels = [", ".join(f"{k}={json.dumps(g['params'].get(k))}" for k in keys) for g in grid]
        colours = ["tab:red" if i == best else "tab:blue" for i in range(len(grid))]
        ax.bar(range(len(grid)), mean, yerr=std, color=colours, capsize=3)
        ax.set_xticks(range(len(grid)), labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("mean cross-validated score")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if values:
        ax.legend(fontsize=8)
    return _png(fig)


def confusion_matrix(cm, class_names, title: str = "confusion matrix") -> bytes:
    """The confusion matrix normalised per true class, class names on both axes, counts in the cells."""
    plt = require_matplotlib()
    cm = np.asarray(cm)
    norm = normalised_confusion(cm)
    n = len(class_names)
    side = min(3.0 + 0.45 * n, 11.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side), layout="constrained")
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    if n <= MAX_LABELLED_CLASSES:
        ax.set_xticks(range(n), class_names, rotation=45 if n > 6 else 0, ha="right" if n > 6 else "center",
                      fontsize=8)
        ax.set_yticks(range(n), class_names, fontsize=8)
    if n <= 15:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, f"{cm[i, j]}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    return _png(fig)


def per_class_bars(series, class_names) -> bytes:
    """Precision and recall per class; ``series`` is ``[(label, per_class dict)]``, one bar group per model.

    With more than :data:`MAX_LABELLED_CLASSES` classes only the ones with the lowest mean recall are shown.
    """
    plt = require_matplotlib()
    names = list(class_names)
    title = "precision and recall per class"
    if len(names) > MAX_LABELLED_CLASSES:
        recall = np.mean([[pc[c]["recall"] for c in names] for _l, pc in series], axis=0)
        names = [names[i] for i in np.argsort(recall, kind="stable")[:MAX_LABELLED_CLASSES]]
        title += f" (the {MAX_LABELLED_CLASSES} classes with the lowest recall)"
    fig, axes = plt.subplots(1, 2, figsize=(min(4 + 0.35 * len(names) * len(series), 14), 3.6), sharey=True,
                             layout="constrained")
    width = 0.8 / len(series)
    x = np.arange(len(names))
    for ax, key in zip(axes, ("precision", "recall")):
        for k, (colour, (label, pc)) in enumerate(zip(_colours(len(series)), series)):
            ax.bar(x + (k - (len(series) - 1) / 2) * width, [pc[c][key] for c in names], width, color=colour,
                   label=label)
        ax.set_xticks(x, names, rotation=45 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center",
                      fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(key)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def keypoint_bars(series) -> bytes:
    """RMSE per keypoint (px), one bar per model: ``series`` is ``[(label, keypoint_errors list)]``."""
    plt = require_matplotlib()
    names = [e["name"] for e in series[0][1]]
    height = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(6.4, 1.2 + 0.28 * len(names) * max(1, len(series) * 0.6)),
                           layout="constrained")
    y = np.arange(len(names))
    for k, (colour, (label, errs)) in enumerate(zip(_colours(len(series)), series)):
        by = {e["name"]: e["rmse_px"] for e in errs}
        ax.barh(y + (k - (len(series) - 1) / 2) * height, [by.get(n, math.nan) for n in names], height,
                color=colour, label=label)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("RMSE (pixels of each image)")
    ax.set_title("error per keypoint")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def error_cdf(series) -> bytes:
    """The share of faces whose RMSE is at most x, per model: ``series`` is ``[(label, per-row RMSE array)]``."""
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(5.2, 3.6), layout="constrained")
    for colour, (label, err) in zip(_colours(len(series)), series):
        e = np.sort(np.asarray(err, float)[np.isfinite(err)])
        if len(e):
            ax.step(e, np.arange(1, len(e) + 1) / len(e), where="post", color=colour, label=label)
    ax.set_xlabel("RMSE of one face (px)")
    ax.set_ylabel("fraction of faces")
    ax.set_ylim(0, 1.02)
    ax.set_title("error distribution")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)

"""What a model's report shows, gathered and ranked without drawing anything.

:func:`collect` scores a model directory on a feature file with the code ``bneck evaluate`` runs
(:func:`pipeline.evaluate.evaluate_rows`), so the report's figures are evaluate's figures, and keeps
the per-row outputs the galleries rank. The other functions turn a :class:`Run` into the tables
and rankings the page lays out; none of them needs matplotlib.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from pipeline.data.featurefile import FeatureFile
from pipeline.evaluate import evaluate_rows

#: Feature-file attrs the model card shows first, in this order; the rest follow in a fold.
PROVENANCE_FIRST = ("backbone", "layer", "weights", "weights_sha256", "weights_path", "precision", "store_dtype",
                    "input_size", "pooling", "preprocessing", "flip", "runtime", "source_kind", "source_root",
                    "source_fingerprint", "n_rows", "package_version", "format_version")


@dataclass
class Run:
    """One model scored on one feature file, with everything its page shows.

    ``rows`` are the feature file's valid rows that were scored; ``truth`` and ``outputs`` are aligned
    with them: class labels (N,) and class scores (N, C), or keypoint targets and predictions (N, K) in
    each image's own pixels. ``history`` maps each logged quantity to its per-epoch values (dense
    heads), ``best_epoch`` is 1-based like history.csv's ``epoch`` column, ``grid`` the grid search's
    rows (params, mean and std of the cross-validated score, rank).
    """

    name: str
    model_dir: str
    features: str
    meta: dict
    result: dict
    attrs: dict
    rows: np.ndarray
    truth: np.ndarray
    outputs: np.ndarray
    sizes: np.ndarray
    paths: list[str]
    bad_rows: list[tuple[int, str, str]]
    history: dict[str, list[float]] | None = None
    best_epoch: int | None = None
    grid: list[dict] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def task(self) -> str:
        """``"classification"`` or ``"regression"``."""
        return self.result["task"]

    @property
    def names(self) -> list[str]:
        """Class names (classification) or target names (keypoints)."""
        return list(self.meta["class_names"] if self.task == "classification" else self.meta["target_names"])


def collect(model_dir, features, *, top_k: int = 5, name: str | None = None, trust_pickle: bool = False) -> Run:
    """Score ``model_dir`` on ``features`` and gather its card, curves, grid and bad rows into a :class:`Run`."""
    result, meta, rows, outputs = evaluate_rows(model_dir, features, top_k=top_k, trust_pickle=trust_pickle)
    with FeatureFile(features) as ff:
        attrs = ff.attrs
        paths = ff.paths
        valid = ff.valid
        reasons = ff.reasons
        truth = ff.labels[rows] if meta["task"] == "classification" else ff.targets[rows].astype(np.float64)
        sizes = ff.image_size
    bad = [(int(i), paths[i], reasons[i] or "unreadable") for i in np.flatnonzero(~valid)]
    return Run(name=name or os.path.basename(os.path.normpath(str(model_dir))), model_dir=str(model_dir),
               features=str(features), meta=meta, result=result, attrs=attrs, rows=np.asarray(rows), truth=truth,
               outputs=np.asarray(outputs, dtype=np.float64), sizes=sizes, paths=paths, bad_rows=bad,
               history=read_history(model_dir), best_epoch=best_epoch(meta), grid=read_grid(model_dir))


def read_history(model_dir) -> dict[str, list[float]] | None:
    """history.csv as ``{quantity: per-epoch values}`` (NaN where an epoch lacks one), or None without one."""
    path = os.path.join(model_dir, "history.csv")
    if not os.path.isfile(path):
        return None
    with open(path, newline="", encoding="utf-8") as fh:
        table = list(csv.reader(fh))
    if len(table) < 2:
        return None
    keys = table[0][1:]  # the first column is the 1-based epoch number
    out: dict[str, list[float]] = {k: [] for k in keys}
    for line, row in enumerate(table[1:], 2):
        for k, cell in zip(keys, row[1:]):
            try:
                out[k].append(float(cell) if cell != "" else math.nan)
            except ValueError:
                raise ValueError(f"{path}:{line}: {k} is {cell!r}, not a number") from None
    return out


def best_epoch(meta: dict) -> int | None:
    """The epoch whose weights the head kept, 1-based (history.csv's numbering), or None."""
    record = meta.get("finetune") if meta.get("head") == "finetuned" else meta.get("training")
    epoch = (record or {}).get("best_epoch")
    if epoch is None:
        return None
    # Both record Keras' 0-based epoch index (pipeline.heads.dense_fit.EpochControl, pipeline.finetune.epochs);
    # a fine-tuned model that kept its starting weights records -1, here 0. Fine-tuned models written before
    # that rule (no "kept_starting_model") counted from 1.
    if meta.get("head") == "finetuned" and "kept_starting_model" not in record:
        return int(epoch)
    return int(epoch) + 1


def read_grid(model_dir) -> list[dict] | None:
    """grid_results.csv as rows ``{"params": {...}, "mean": float, "std": float, "rank": int}``, or None."""
    path = os.path.join(model_dir, "grid_results.csv")
    if not os.path.isfile(path):
        return None
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for line, r in enumerate(csv.DictReader(fh), 2):
            try:
                rows.append({"params": json.loads(r["params"]), "mean": float(r["mean_test_score"]),
                             "std": float(r["std_test_score"]), "rank": int(float(r["rank"]))})
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{line}: not a grid-search row ({exc})") from None
    return rows or None


def model_card(run: Run) -> list[tuple[str, str]]:
    """(label, value) lines of the model card: what was trained, on what, how long."""
    meta, tr = run.meta, run.meta.get("training", {})
    prov = meta.get("features", {})
    grid = tr.get("grid") or {}
    lines = [
        ("model directory", run.model_dir),
        ("head", str(meta.get("head"))),
        ("parameters", json.dumps(meta.get("params", {}), sort_keys=True)),
        ("backbone", f"{prov.get('backbone')} / layer {prov.get('layer')}"),
        ("weights", str(prov.get("weights"))),
        ("weights sha256", str(prov.get("weights_sha256", "-"))),
        ("precision", f"{prov.get('precision', '-')} (stored as {prov.get('store_dtype', '-')})"),
        ("input size", "x".join(str(v) for v in prov.get("input_size", [])) or "-"),
        ("pooling", f"{meta.get('pooling')} on load (stored: {prov.get('pooling', '-')})"),
        ("trained on", f"{tr.get('features_file')}: {tr.get('n_train_rows')} images"
                       f"{' + mirrored' if tr.get('used_flipped') else ''} = {tr.get('n_training_samples')} rows, "
                       f"{tr.get('n_invalid_skipped', 0)} invalid skipped"),
        ("validated on", f"{tr.get('val_file') or 'a split of the training file'}: {tr.get('n_val_rows')} images"),
        ("training time", f"{tr.get('seconds', 0):.1f} s"),
    ]
    if run.best_epoch is not None:
        lines.append(("best epoch", f"{run.best_epoch} of {max(len(v) for v in run.history.values())}"
                      if run.history else str(run.best_epoch)))
    if grid:
        lines.append(("grid search", f"best {json.dumps(grid.get('best_params'))}, "
                                     f"cv score {grid.get('best_cv_score', float('nan')):.4f}"))
    if meta.get("target_frame"):
        lines.append(("keypoint frame", "x".join(str(v) for v in meta["target_frame"]) + " pixels (height x width)"))
    return lines


def provenance(attrs: dict) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The evaluated feature file's attrs: (the main ones in a fixed order, all the others sorted)."""
    def text(v):
        return json.dumps(v) if isinstance(v, (list, dict)) else str(v)

    first = [(k, text(attrs[k])) for k in PROVENANCE_FIRST if k in attrs]
    rest = [(k, text(attrs[k])) for k in sorted(attrs) if k not in PROVENANCE_FIRST]
    return first, rest


def headline(run: Run) -> list[tuple[str, str]]:
    """The headline metrics as (name, formatted value)."""
    r = run.result
    if run.task == "classification":
        out = [("accuracy", f"{r['accuracy']:.4f}")]
        out += [(k.replace("_accuracy", " accuracy"), f"{v:.4f}") for k, v in r.items()
                if k.startswith("top") and k != "top1_accuracy"]
    else:
        out = [("RMSE", f"{r['rmse_px']:.3f} px"), ("MAE", f"{r['mae_px']:.3f} px"), ("values", str(r["n_values"]))]
    return out + [("rows scored", str(r["n"])), ("invalid rows skipped", str(r.get("n_invalid_skipped", 0)))]


def normalised_confusion(cm) -> np.ndarray:
    """Each true class's row of the confusion matrix as fractions (rows without support stay 0)."""
    cm = np.asarray(cm, dtype=np.float64)
    support = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, support, out=np.zeros_like(cm), where=support > 0)


def scores_are_probabilities(scores) -> bool:
    """True when every row of ``scores`` lies in [0, 1] and sums to 1 (predict_proba, not a decision value)."""
    s = np.asarray(scores)
    return bool(len(s)) and bool(((s >= -1e-6) & (s <= 1 + 1e-6)).all()) and bool(
        np.allclose(s.sum(axis=1), 1, atol=1e-3))


def worst_misclassified(truth, scores, k: int) -> list[dict]:
    """The ``k`` wrong predictions the head was surest of: largest score(predicted) - score(true) first.

    Each item names its position in ``truth`` (``i``), the true and predicted class indices and both scores.
    """
    truth = np.asarray(truth, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if not len(truth):
        return []
    pred = scores.argmax(axis=1)
    wrong = np.flatnonzero(pred != truth)
    margin = scores[wrong, pred[wrong]] - scores[wrong, truth[wrong]]
    # Stable sort on the negated margin: ties keep row order, so a report is reproducible.
    order = wrong[np.argsort(-margin, kind="stable")][:k]
    return [{"i": int(i), "true": int(truth[i]), "pred": int(pred[i]), "score_pred": float(scores[i, pred[i]]),
             "score_true": float(scores[i, truth[i]])} for i in order]


def row_rmse(truth, pred) -> np.ndarray:
    """Per row, the RMSE (px) over its present (finite) target values; NaN for a row with none."""
    truth, pred = np.asarray(truth, np.float64), np.asarray(pred, np.float64)
    present = np.isfinite(truth)
    sq = np.where(present, (pred - np.where(present, truth, 0)) ** 2, 0).sum(axis=1)
    n = present.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.sqrt(sq / np.maximum(n, 1)), np.nan)


def typical_and_worst(err, k: int) -> tuple[list[int], list[int]]:
    """Positions of the ``k`` rows nearest the median error and of the ``k`` worst rows (worst first)."""
    err = np.asarray(err, np.float64)
    known = np.flatnonzero(np.isfinite(err))
    if not len(known):
        return [], []
    worst = known[np.argsort(-err[known], kind="stable")][:k]
    rest = np.setdiff1d(known, worst) if len(known) > 2 * k else known
    median = np.median(err[known])
    typical = rest[np.argsort(np.abs(err[rest] - median), kind="stable")][:k]
    return [int(i) for i in typical], [int(i) for i in worst]


def keypoint_errors(result: dict, names) -> list[dict]:
    """Per keypoint (an ``_x``/``_y`` pair, or a lone target): RMSE over its values, mean distance, count.

    The RMSE pools the pair's x and y values, weighted by their counts, so the keypoints' figures
    combine into evaluate's overall ``rmse_px`` the same way its columns do.
    """
    per_target, per_point = result.get("per_target", {}), result.get("per_keypoint", {})
    names = [str(n) for n in names]
    out, used = [], set()
    for n in names:
        if n in used:
            continue
        stem = n[:-2]
        pair = [stem + "_x", stem + "_y"] if n.lower().endswith(("_x", "_y")) else [n]
        pair = [p for p in pair if p in per_target] or [n]
        used.update(pair)
        sq = sum((per_target[p]["rmse_px"] or 0.0) ** 2 * per_target[p]["n"] for p in pair if p in per_target)
        count = sum(per_target[p]["n"] for p in pair if p in per_target)
        label = stem if len(pair) == 2 else n
        out.append({"name": label, "rmse_px": math.sqrt(sq / count) if count else math.nan,
                    "mean_distance_px": per_point.get(label, {}).get("mean_distance_px", math.nan), "n": int(count)})
    return out


def point_side(name: str) -> str:
    """``"left"``, ``"right"`` or ``"centre"``: which of the subject's sides a keypoint name is on."""
    tokens = name.lower().replace("-", "_").split("_")
    return "left" if "left" in tokens else "right" if "right" in tokens else "centre"


def keypoint_pairs(names) -> list[tuple[str, int, int]]:
    """``(keypoint name, x column, y column)`` for every ``_x`` column with a matching ``_y``."""
    names = [str(n) for n in names]
    lower = [n.lower() for n in names]
    out = []
    for i, n in enumerate(lower):
        if n.endswith("_x") and n[:-2] + "_y" in lower:
            out.append((names[i][:-2], i, lower.index(n[:-2] + "_y")))
    return out

"""The demo's closing report: every trained head's headline metric beside simple baselines.

``python -m pipeline.tools.report OUTDIR`` reads the ``*.eval.json`` files ``run_all.sh`` wrote and
adds two baselines computed here: a linear SVM on raw pixels (digits) and the mean-keypoint
predictor (faces), so the table says whether the bottleneck features earned their keep.
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np


def mean_keypoint_rmse(train_h5: str, val_h5: str) -> float:
    """RMSE (px) of predicting every keypoint as its training mean."""
    from pipeline.data.training import FeatureFile

    with FeatureFile(train_h5) as a, FeatureFile(val_h5) as b:
        mean = np.nanmean(a.targets[a.valid], axis=0)
        t = b.targets[b.valid]
    err = (t - mean)[np.isfinite(t)]
    return float(np.sqrt(np.mean(err ** 2)))


def raw_pixel_svm_accuracy(train_dir: str, test_dir: str) -> float:
    """Accuracy of StandardScaler + LinearSVC on the raw pixels of two class-folder datasets."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    from features.images import load_rgb
    from features.reader.sources import read_source

    def load(d):
        m = read_source(d)
        x = np.stack([load_rgb(m.source(i))[..., 0].ravel() for i in range(len(m))]).astype(np.float32)
        return x, m.labels

    xa, ya = load(train_dir)
    xb, yb = load(test_dir)
    clf = make_pipeline(StandardScaler(), LinearSVC(C=0.1, max_iter=5000)).fit(xa, ya)
    return float((clf.predict(xb) == yb).mean())


def build_rows(outdir: str, data_dir: str | None = None) -> list[dict]:
    """One row per evaluated model plus the baselines."""
    rows = []
    for path in sorted(glob.glob(os.path.join(outdir, "*.eval.json"))):
        with open(path) as f:
            r = json.load(f)
        model = os.path.basename(path)[: -len(".eval.json")]
        with open(os.path.join(outdir, model, "model.json")) as f:
            meta = json.load(f)
        metric = ("accuracy", r["accuracy"]) if "accuracy" in r else ("rmse_px", r["rmse_px"])
        rows.append({"model": model, "head": r["head"], "features": os.path.basename(r["features"]),
                     "backbone": f"{meta['features']['backbone']}/{meta['features']['layer']} "
                                 f"({meta['features']['weights']})",
                     "metric": metric[0], "value": metric[1], "train_s": meta["training"]["seconds"]})
    faces = [os.path.join(outdir, f) for f in ("faces_train.h5", "faces_val.h5")]
    if all(os.path.exists(p) for p in faces):
        rows.append({"model": "baseline", "head": "mean keypoints", "features": "faces_val.h5", "backbone": "-",
                     "metric": "rmse_px", "value": mean_keypoint_rmse(*faces), "train_s": 0.0})
    if data_dir and os.path.isdir(os.path.join(data_dir, "digits", "train")):
        rows.append({"model": "baseline", "head": "linear SVM on raw pixels", "features": "digits/test",
                     "backbone": "-", "metric": "accuracy", "train_s": 0.0,
                     "value": raw_pixel_svm_accuracy(os.path.join(data_dir, "digits", "train"),
                                                     os.path.join(data_dir, "digits", "test"))})
    return rows


def format_rows(rows: list[dict]) -> str:
    """A fixed-width table."""
    head = f"{'model':16s} {'head':26s} {'evaluated on':16s} {'metric':9s} {'value':>8s} {'train s':>8s}  backbone"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model']:16s} {r['head']:26s} {r['features']:16s} {r['metric']:9s} "
                     f"{r['value']:8.4f} {r['train_s']:8.1f}  {r['backbone']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Print the demo report for OUTDIR."""
    p = argparse.ArgumentParser(prog="python -m pipeline.tools.report", description=__doc__.splitlines()[0])
    p.add_argument("outdir", help="the demo output directory (run_all.sh's demo_out)")
    p.add_argument("--data", help="the demo data directory, for the raw-pixel baseline (default: ../demo_data)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = p.parse_args(argv)
    data = args.data or os.path.join(os.path.dirname(os.path.abspath(args.outdir)), "demo_data")
    rows = build_rows(args.outdir, data)
    print(json.dumps(rows, indent=1) if args.json else format_rows(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

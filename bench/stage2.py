"""Stage two: how long `bneck train` takes on cached features, and how much memory it needs.

Three measurements, each `bneck train` in its own child process (so its peak RSS is its own),
on synthetic but learnable feature files (class-dependent, non-negative like ReLU outputs)
written with h5py in the same layout as `bneck extract` (float16, contiguous datasets):

  a. dense head on --n cached VGG16 maps (7x7x512, with features_flipped) for --epochs epochs,
     early stopping disabled (--patience = epochs), default 20% stratified validation split,
     so 2 x 0.8 x N training rows. Target: <= 180 s for N = 10,000 and 20 epochs.
  b. linear-SVM grid search (--grid C=0.001,0.01,0.1,1,10, 3-fold CV, --jobs 2) on N pooled
     512-d vectors (a file extracted with --pooling avg; --svm-source maps pools the file of (a)
     on load instead). Target: <= 60 s.
  d. quick re-tuning: `bneck train --head logreg --no-flipped` then `bneck evaluate` on the demo
     digits (pooled 512-d VGG16 features; --digits FILE, default a synthetic file of the same
     shape: 1,347 rows), each as a user runs it (`python -m pipeline`, a fresh process), with the
     fit time beside the wall time, TensorFlow's presence in each process and its peak RSS.
     Target: train + evaluate <= 2 s of wall time, the median of --repeat pairs after one warm-up
     pair (which writes the bytecode caches, as a user's first command does). Beside it,
     `python -c "import sklearn.linear_model, h5py"` in the same run: the floor every scikit-learn
     command pays on this machine. --python runs the commands in another install, e.g. a venv with
     only what `./run_all.sh` installs: scikit-learn imports pandas whenever it is installed.
  c. streaming: a 7x7x512 file whose float32 training data is 4 x --budget, dense head for
     --stream-epochs epochs with --memory-budget --budget. Targets: in_memory is false and the
     child's peak RSS < budget + 1 GiB.

The feature files are cached in --workdir by their parameters (delete it to regenerate).

    python bench/stage2.py                                     # full size: N=10000, 20 epochs, 256MiB
    python bench/stage2.py --n 300 --epochs 2 --budget 16MiB   # smoke run
    python bench/stage2.py --skip a,c                          # only the SVM grid
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import numpy as np  # noqa: E402

MAP_SHAPE = (7, 7, 512)  # VGG16 block5_pool at 224x224
TARGETS = {"dense_seconds": 180.0, "svm_grid_seconds": 60.0, "stream_rss_over_budget_mb": 1024.0,
           "retune_total_wall_seconds": 2.0}

# `bneck ...` in a child: times the data loading (pipeline.train.load_training_data) separately
# from the fit, then reports the child's own peak RSS on the last stderr line.
_CHILD = """
import json, resource, sys, time
import pipeline.train as T
_load, timing = T.load_training_data, {}
def _timed(*a, **k):
    t0 = time.perf_counter()
    d = _load(*a, **k)
    timing["load_seconds"] = round(time.perf_counter() - t0, 3)
    return d
T.load_training_data = _timed
from pipeline.cli.main import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **timing}),
      file=sys.stderr)
"""


# ----------------------------------------------------------------------------- feature files


def _root_attrs(n: int, pooling: str, flip: bool, store_dtype: str) -> dict:
    """Root attributes of a VGG16 file, as `bneck extract --weights none` would write them."""
    return {
        "format_version": 1, "producer": "bneck", "package_version": "0.1.0",
        "backbone": "vgg16", "layer": "block5_pool", "pooling": pooling,
        "input_size": np.array([224, 224], np.int32), "weights": "none",
        "weights_sha256": "00" * 32, "seed": 0, "preprocessing": "vgg16",
        "precision": "float32", "store_dtype": store_dtype, "flip": flip,
        "runtime": "tensorflow", "source_kind": "folder", "source_fingerprint": "b" * 16,
        "task": "classification", "n_rows": n, "shard": "0/1", "row_start": 0, "row_stop": n,
        "complete": True,
    }


def feature_file(workdir: str, n: int, shape: tuple, *, classes: int = 10, flip: bool = True,
                 pooling: str = "none", signal: float = 0.3, density: float = 0.01, seed: int = 0,
                 block: int = 512) -> str:
    """Write (once; cached by parameters) a learnable classification feature file; returns its path.

    Row i has label i % classes and features relu(base + signal * pattern[label] + noise):
    base ~ U(0, 1) shared, pattern[c] non-zero (U(1, 2)) on a random `density` fraction of the
    elements, noise ~ N(0, 1). The mirrored view uses the width-mirrored pattern of (h, w, c)
    maps (the same pattern for vectors) with fresh noise. Written `block` rows at a time in
    float16, so memory stays at a few blocks whatever `n` is.
    """
    import h5py

    shape = tuple(int(s) for s in shape)
    tag = "x".join(map(str, shape))
    # "contig": extract writes contiguous datasets since 2026-12-02 (32-row chunks before).
    name = f"cls-n{n}-{tag}-c{classes}-{pooling}-flip{int(flip)}-sig{signal:g}-d{density:g}-s{seed}-contig.h5"
    path = os.path.join(workdir, name)
    if os.path.exists(path):
        return path
    os.makedirs(workdir, exist_ok=True)
    common.log(f"writing {n} x {shape} float16 features{' + flipped' if flip else ''} to {path} ...")
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 1, shape).astype(np.float32)
    mask = rng.random((classes, *shape)) < density
    pattern = (mask * rng.uniform(1, 2, (classes, *shape)) * signal).astype(np.float32)
    del mask
    mean = base[None] + pattern
    mean_flip = mean[:, :, ::-1] if len(shape) == 3 else mean
    mean_flip = np.ascontiguousarray(mean_flip)
    labels = np.arange(n, dtype=np.int64) % classes
    str_dt = h5py.string_dtype("utf-8")
    tmp = f"{path}.tmp-{os.getpid()}"
    with common.Timer() as t, h5py.File(tmp, "w") as h5:
        for k, v in _root_attrs(n, pooling, flip, "float16").items():
            h5.attrs[k] = v
        views = [("features", mean)] + ([("features_flipped", mean_flip)] if flip else [])
        dsets = {nm: h5.create_dataset(nm, shape=(n, *shape), dtype="float16") for nm, _ in views}  # contiguous
        for a in range(0, n, block):
            b = min(a + block, n)
            lab = labels[a:b]
            for nm, mu in views:
                x = rng.standard_normal((b - a, *shape), dtype=np.float32)
                x += mu[lab]
                np.maximum(x, 0, out=x)
                dsets[nm][a:b] = x.astype(np.float16)
        ds = h5.create_dataset("labels", data=labels)
        ds.attrs.create("class_names", [f"class_{c:02d}" for c in range(classes)], dtype=str_dt)
        h5.create_dataset("paths", data=[f"class_{i % classes:02d}/img_{i:06d}.jpg" for i in range(n)], dtype=str_dt)
        h5.create_dataset("valid", data=np.ones(n, bool))
        h5.create_dataset("reason", data=[""] * n, dtype=str_dt)
        h5.create_dataset("image_size", data=np.full((n, 2), 256, np.int32))
    os.replace(tmp, path)
    common.log(f"  done in {t.seconds:.1f} s ({os.path.getsize(path) / 2**20:.0f} MiB)")
    return path


# ----------------------------------------------------------------------------- child runs


def _child_env() -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    # Python caches compiled modules by default; some sandboxes and CI images switch that off, and every
    # command then recompiles bneck's ~70 modules (0.06-0.1 s a command). Time what a default install runs.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _child(code: str, argv: list[str], python: str | None = None, quiet: bool = False):
    """`bneck ARGV` run by ``code`` in a fresh interpreter: (the process, its wall seconds, its last-line JSON)."""
    if not quiet:
        common.log("   $ bneck " + " ".join(argv))
    with common.Timer() as t:
        r = subprocess.run([python or sys.executable, "-c", code, "-q", *argv], capture_output=True, text=True,
                           cwd=common.REPO, env=_child_env())
    if r.returncode != 0:
        raise RuntimeError(f"bneck {' '.join(argv)} failed (rc {r.returncode}):\n{r.stderr[-3000:]}")
    return r, t.seconds, json.loads(r.stderr.strip().splitlines()[-1])


def run_train(features: str, args: list[str]) -> dict:
    """`bneck train FEATURES -o TMP ARGS --json` in a child; its model.json, history, timing and peak RSS."""
    with tempfile.TemporaryDirectory(prefix="model-", dir=os.path.dirname(features)) as tmp:
        out = os.path.join(tmp, "model")
        r, seconds, child = _child(_CHILD, ["train", features, "-o", out, *args, "--json"])
        metrics = json.loads(r.stdout.strip().splitlines()[-1])
        with open(os.path.join(out, "model.json")) as f:
            meta = json.load(f)
        history = {}
        hist_path = os.path.join(out, "history.csv")
        if os.path.exists(hist_path):
            with open(hist_path, newline="") as f:
                rows = list(csv.DictReader(f))
            history = {k: [float(r[k]) for r in rows if r.get(k) not in (None, "")] for k in (rows[0] if rows else {})}
    tr = meta["training"]
    res = {"wall_seconds": round(seconds, 2), "training_seconds": tr["seconds"],
           "load_seconds": child.get("load_seconds"), "in_memory": tr["in_memory"],
           "n_training_samples": tr["n_training_samples"], "n_val_rows": tr["n_val_rows"],
           "used_flipped": tr["used_flipped"], "val_accuracy": metrics.get("accuracy"),
           "peak_rss_mb": round(child["peak_rss_mb"], 1)}
    if history:
        res["epochs_run"] = len(history.get("loss", []))
        res["best_epoch"] = tr.get("best_epoch")
        for k in ("accuracy", "val_accuracy"):
            if history.get(k):
                res[f"history_{k}"] = [round(v, 4) for v in history[k]]
    if tr.get("grid"):
        res["grid"] = tr["grid"]
    return res


# ----------------------------------------------------------------------------- the three benches


def bench_dense(args) -> dict:
    path = feature_file(args.workdir, args.n, MAP_SHAPE, classes=args.classes, seed=args.seed)
    r = run_train(path, ["--head", "dense", "--use-flipped", "--epochs", str(args.epochs),
                         "--patience", str(args.epochs), "--val-split", str(args.val_split),
                         "--memory-budget", args.dense_budget])
    fit = r["training_seconds"] - (r["load_seconds"] or 0.0)
    r["fit_seconds"] = round(fit, 2)
    r["seconds_per_epoch"] = round(fit / max(r.get("epochs_run", args.epochs), 1), 2)
    r["file"] = {"path": path, "n": args.n, "shape": list(MAP_SHAPE), "store_dtype": "float16", "flipped": True,
                 "mib_on_disk": round(os.path.getsize(path) / 2**20, 1)}
    r["settings"] = {"epochs": args.epochs, "patience": args.epochs, "val_split": args.val_split,
                     "memory_budget": args.dense_budget, "classes": args.classes}
    r["target_seconds"] = TARGETS["dense_seconds"]
    r["pass"] = r["training_seconds"] <= TARGETS["dense_seconds"] and r.get("epochs_run") == args.epochs
    common.log(f"   dense: {r['training_seconds']} s ({r['seconds_per_epoch']} s/epoch, {r.get('epochs_run')} epochs, "
               f"in_memory={r['in_memory']}), val acc {r['val_accuracy']}, peak RSS {r['peak_rss_mb']} MiB")
    return r


def bench_svm(args) -> dict:
    if args.svm_source == "maps":
        path = feature_file(args.workdir, args.n, MAP_SHAPE, classes=args.classes, seed=args.seed)
    else:
        path = feature_file(args.workdir, args.n, (MAP_SHAPE[-1],), classes=args.classes, pooling="avg",
                            signal=0.3, density=0.1, seed=args.seed)
    r = run_train(path, ["--head", "svm", "--pooling", "avg", "--grid", f"C={args.svm_grid}",
                         "--jobs", str(args.jobs), "--val-split", str(args.val_split)])
    r["file"] = {"path": path, "n": args.n, "source": args.svm_source,
                 "mib_on_disk": round(os.path.getsize(path) / 2**20, 1)}
    r["settings"] = {"grid": f"C={args.svm_grid}", "cv": 3, "jobs": args.jobs, "val_split": args.val_split}
    r["target_seconds"] = TARGETS["svm_grid_seconds"]
    r["pass"] = r["training_seconds"] <= TARGETS["svm_grid_seconds"]
    common.log(f"   svm grid: {r['training_seconds']} s, best {r.get('grid', {}).get('best_params')}, "
               f"val acc {r['val_accuracy']}, peak RSS {r['peak_rss_mb']} MiB")
    return r


def bench_stream(args) -> dict:
    from pipeline.data.training import parse_bytes

    budget = parse_bytes(args.budget)
    row_f32 = int(np.prod(MAP_SHAPE)) * 4
    n = math.ceil(args.stream_factor * budget / row_f32)  # no flipped view: train + val rows = n
    path = feature_file(args.workdir, n, MAP_SHAPE, classes=args.classes, flip=False, seed=args.seed + 1)
    r = run_train(path, ["--head", "dense", "--epochs", str(args.stream_epochs),
                         "--patience", str(args.stream_epochs), "--val-split", str(args.val_split),
                         "--memory-budget", args.budget])
    fit = r["training_seconds"] - (r["load_seconds"] or 0.0)
    r["seconds_per_epoch"] = round(fit / max(r.get("epochs_run", args.stream_epochs), 1), 2)
    limit_mb = budget / 2**20 + TARGETS["stream_rss_over_budget_mb"]
    r["file"] = {"path": path, "n": n, "shape": list(MAP_SHAPE), "flipped": False,
                 "float32_mib": round(n * row_f32 / 2**20, 1), "mib_on_disk": round(os.path.getsize(path) / 2**20, 1)}
    r["budget_mib"] = round(budget / 2**20, 1)
    r["data_to_budget_ratio"] = round(n * row_f32 / budget, 2)
    r["rss_limit_mb"] = round(limit_mb, 1)
    r["rss_under_limit"] = r["peak_rss_mb"] < limit_mb
    r["pass"] = (r["in_memory"] is False) and r["rss_under_limit"]
    common.log(f"   streaming: in_memory={r['in_memory']}, {r['training_seconds']} s "
               f"({r['seconds_per_epoch']} s/epoch), peak RSS {r['peak_rss_mb']} MiB (limit {limit_mb:.0f})")
    return r


_TIMED_CLI = """
import json, resource, sys, time
t0 = time.perf_counter()
from pipeline.cli.main import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "tensorflow": "tensorflow" in sys.modules, "pandas": "pandas" in sys.modules,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), file=sys.stderr)
"""


def _timed_cli(argv: list[str], python: str | None = None, quiet: bool = False) -> dict:
    """One `bneck ARGV` in a fresh process: its wall time, whether it imported TensorFlow, its peak RSS."""
    r, seconds, child = _child(_TIMED_CLI, argv, python, quiet)
    return {"wall_seconds": round(seconds, 3), "tensorflow_imported": child["tensorflow"],
            "pandas_imported": child["pandas"], "peak_rss_mb": round(child["peak_rss_mb"], 1),
            "stdout": r.stdout.strip()[-400:]}


def _median(values) -> float:
    return round(float(np.median(values)), 3)


def _retune_once(path: str, tmp: str, extra: list[str], python: str | None, quiet: bool) -> tuple[dict, dict, float]:
    model = os.path.join(tmp, "m_logreg" + "_".join(extra))
    train = _timed_cli(["train", path, "-o", model, "--head", "logreg", "--no-flipped", "--overwrite",
                        *_pooling_args(path), *extra, "--json"], python, quiet)
    with open(os.path.join(model, "model.json")) as f:
        fit = json.load(f)["training"]["seconds"]
    evaluate = _timed_cli(["evaluate", model, path, "--json"], python, quiet)
    return train, evaluate, fit


def _pooling_args(path: str) -> list[str]:
    """``--pooling avg`` for a file of maps (the demo's digits are block4_pool maps), as the demo trains them."""
    import h5py

    with h5py.File(path, "r") as h5:
        return ["--pooling", "avg"] if h5["features"].ndim > 2 else []


def bench_retune(args) -> dict:
    path = args.digits or feature_file(args.workdir, 1347, (MAP_SHAPE[-1],), classes=10, pooling="avg",
                                       signal=0.3, density=0.1, seed=args.seed)
    python = args.python or sys.executable
    floors = []
    for _ in range(args.repeat):
        with common.Timer() as t:
            subprocess.run([python, "-c", "import sklearn.linear_model, h5py"], check=True, env=_child_env())
        floors.append(t.seconds)
    with tempfile.TemporaryDirectory(prefix="retune-") as tmp:
        # One untimed run first: it writes the bytecode caches a user's first command writes.
        _retune_once(path, tmp, [], python, quiet=False)
        runs = [_retune_once(path, tmp, [], python, quiet=True) for _ in range(args.repeat)]
        # Re-tuning by hand: the user gives C, so no C search (the default searches three by CV).
        given = [_retune_once(path, tmp, ["--C", "0.1"], python, quiet=True) for _ in range(args.repeat)]
    totals = [t["wall_seconds"] + e["wall_seconds"] for t, e, _ in runs]
    train, evaluate, fit = runs[int(np.argsort(totals)[len(totals) // 2])]  # the median run, whole
    total = _median(totals)
    tf_anywhere = any(t["tensorflow_imported"] or e["tensorflow_imported"] for t, e, _ in runs + given)
    return {"file": path, "python": python, "repeats": args.repeat, "train": train, "train_fit_seconds": fit,
            "evaluate": evaluate, "total_wall_seconds": total,
            "total_wall_seconds_runs": [round(x, 3) for x in totals],
            "train_wall_seconds_median": _median([t["wall_seconds"] for t, _, _ in runs]),
            "evaluate_wall_seconds_median": _median([e["wall_seconds"] for _, e, _ in runs]),
            "given_c_total_wall_seconds": _median([t["wall_seconds"] + e["wall_seconds"] for t, e, _ in given]),
            # scikit-learn imports pandas whenever it is installed (ray[data] brings it): 0.2-0.3 s here.
            "pandas_imported_by_train": train["pandas_imported"],
            "sklearn_import_seconds": _median(floors),
            "pass": total <= TARGETS["retune_total_wall_seconds"] and not tf_anywhere}


def main(argv=None) -> dict:
    p = common.parser(__doc__)
    p.add_argument("--n", type=int, default=10_000, help="images in the files of (a) and (b) (default 10000)")
    p.add_argument("--epochs", type=int, default=20, help="dense-head epochs in (a), all run (default 20)")
    p.add_argument("--budget", default="256MiB", help="--memory-budget of (c); its file is 4x this (default 256MiB)")
    p.add_argument("--stream-epochs", type=int, default=2, help="dense-head epochs in (c) (default 2)")
    p.add_argument("--stream-factor", type=float, default=4.0, help="float32 data / budget in (c) (default 4)")
    p.add_argument("--dense-budget", default="2GiB", help="--memory-budget of (a) (default 2GiB, the CLI default)")
    p.add_argument("--svm-grid", default="0.001,0.01,0.1,1,10", help="C values of (b)")
    p.add_argument("--svm-source", choices=("pooled", "maps"), default="pooled",
                   help="(b) on a 512-d file pooled at extraction (default) or on (a)'s maps pooled on load")
    p.add_argument("--jobs", type=int, default=2, help="grid-search workers in (b) (default 2)")
    p.add_argument("--classes", type=int, default=10, help="classes (default 10)")
    p.add_argument("--val-split", type=float, default=0.2, help="validation fraction (default 0.2, the CLI default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic features (default 0)")
    p.add_argument("--digits", help="(d) on this feature file, e.g. the demo's demo_out/digits_train.h5 (maps are "
                                    "trained with --pooling avg, as the demo does; default: a synthetic file of "
                                    "1,347 pooled 512-d rows)")
    p.add_argument("--repeat", type=int, default=5,
                   help="(d): timed train + evaluate pairs after one warm-up pair; the median is reported (default 5)")
    p.add_argument("--python", help="(d): the interpreter of the timed commands, e.g. a venv with only the demo's "
                                    "install (./run_all.sh) (default: this one)")
    p.add_argument("--skip", default="", help="comma-separated measurements to skip: a, b, c, d")
    p.add_argument("--workdir", default=os.path.join(common.DEFAULT_ROOT, "stage2"),
                   help="where the feature files are cached (default $TMPDIR/bneck-bench/stage2)")
    args = p.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - {"a", "b", "c", "d"}:
        p.error(f"--skip takes a, b, c, d; got {args.skip!r}")

    result = {"bench": "stage2", "n": args.n, "classes": args.classes, "targets": dict(TARGETS)}
    for key, name, fn in (("a", "dense", bench_dense), ("b", "svm_grid", bench_svm), ("c", "streaming", bench_stream),
                          ("d", "retune", bench_retune)):
        if key in skip:
            continue
        common.log(f"== ({key}) {name}")
        result[name] = fn(args)
    result["pass"] = {k: result[k]["pass"] for k in ("dense", "svm_grid", "streaming", "retune") if k in result}
    result["peak_rss_mb_bench_process"] = common.peak_rss_mb()
    return common.emit(result)


if __name__ == "__main__":
    main()

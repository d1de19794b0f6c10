"""Result quality: bneck's defaults against a careful baseline on the same features, per precision.

For each dataset and each extraction precision (fp32, bf16, int8 where the CPU runs it), the features
are extracted once with ``bneck extract`` settings (VGG16 block4_pool, seeded weights when ImageNet's are
not available, OpenVINO runtime when installed) and then:

  default   `bneck train` with its defaults (val split 0.2, refit on every row, the head's own default
            selection), scored by `bneck evaluate` on the held-out file;
  careful   plain scikit-learn written here, on the same features, the way a careful practitioner
            would: every training row and its mirror (mirrors only where the task allows them),
            standardised, classification by LogisticRegressionCV over 10 Cs, keypoints by one
            RidgeCV (GCV over 1e-4..1e7) per keypoint group on the rows where that group is present.

Datasets: the demo's digits (1,347 train / 450 test PNGs, 64 px, not mirror-symmetric: --no-flipped)
and faces (600 train / 150 validation Kaggle-format faces, 96 px, keypoints), written by
pipeline.tools.demo; `--data NAME=TRAIN,TEST,task` adds your own (task: classification | keypoints).

Printed as one JSON object (also the last line): per dataset and precision, both metrics, the gap of
the default to the careful baseline, and the loss of each precision against fp32 (the issue-19 target:
the `auto` precision within 2 % of fp32 on every task), with the extraction speed beside it.

    python bench/quality.py                      # demo digits and faces, fp32 / bf16 / int8
    python bench/quality.py --precisions fp32,bf16 --datasets faces
    python bench/quality.py --where-bf16-loses --datasets faces   # store, runtime and layer, one at a time
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import numpy as np  # noqa: E402

FLIP = {"digits": False, "faces": True}
INPUT = {"digits": "64", "faces": "96"}


def extract(data: str, out: str, *, precision: str, input_size: str, weights: str, runtime: str,
            layer: str = "block4_pool", store_dtype: str = "float16") -> dict:
    from features.config import ExtractConfig
    from features.runner import extract as run

    cfg = ExtractConfig(data=data, output=out, backbone="vgg16", layer=layer, input_size=input_size,
                        weights=weights, precision=precision, runtime=runtime, progress=False,
                        store_dtype=store_dtype)
    s = run(cfg)
    return {"seconds": round(s.seconds, 1), "images_per_s": round(s.images_per_s, 2), "rows": s.rows}


def _load(path: str, *, pooling: str | None, flipped: bool):
    """(X, y, X_flipped, y_flipped, meta) of the valid rows, as float64 for the careful baseline."""
    import h5py

    with h5py.File(path, "r") as f:
        valid = f["valid"][()].astype(bool)
        X = f["features"][()][valid].astype(np.float64)
        Xf = f["features_flipped"][()][valid].astype(np.float64) if flipped and "features_flipped" in f else None
        if "labels" in f:
            y, yf = f["labels"][()][valid], None
        else:
            y = f["targets"][()][valid].astype(np.float64)
            yf = f["targets_flipped"][()][valid].astype(np.float64) if Xf is not None else None
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs.get("target_names", [])]
    if pooling == "avg" and X.ndim == 4:
        X = X.mean(axis=(1, 2))
        Xf = None if Xf is None else Xf.mean(axis=(1, 2))
    X = X.reshape(len(X), -1)
    Xf = None if Xf is None else Xf.reshape(len(Xf), -1)
    return X, y, Xf, yf, names


def careful_classification(train: str, test: str) -> dict:
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y, _, _, _ = _load(train, pooling="avg", flipped=False)
    Xt, yt, _, _, _ = _load(test, pooling="avg", flipped=False)
    clf = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=10, cv=3, max_iter=2000))
    clf.fit(X, y)
    return {"accuracy": float(np.mean(clf.predict(Xt) == yt)),
            "C": float(clf[-1].C_[0])}


def careful_keypoints(train: str, test: str) -> dict:
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pipeline.heads import default_groups

    X, Y, Xf, Yf, names = _load(train, pooling=None, flipped=True)
    Xt, Yt, _, _, _ = _load(test, pooling=None, flipped=False)
    if Xf is not None:
        X, Y = np.concatenate([X, Xf]), np.concatenate([Y, Yf])
    P = np.full(Yt.shape, np.nan)
    alphas = {}
    for group, cols in default_groups(names).items():
        rows = np.isfinite(Y[:, cols]).all(axis=1)
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-4, 7, 23)))
        model.fit(X[rows], Y[rows][:, cols])
        P[:, cols] = model.predict(Xt)
        alphas[group] = float(model[-1].alpha_)
    mask = np.isfinite(Yt)
    return {"rmse_px": float(np.sqrt(np.mean((P[mask] - Yt[mask]) ** 2))), "alpha_per_group": alphas}


def bneck_default(train: str, test: str, work: str, *, task: str) -> dict:
    from pipeline.evaluate import evaluate
    from pipeline.train import train as fit

    model = os.path.join(work, "model")
    if task == "classification":
        # The README's digits recipe: pooled features, no mirrors (a mirrored 3 is no 3), the default head
        # for pooled vectors (logreg, its own default C grid).
        meta = fit(train, model, head="logreg", pooling="avg", use_flipped=False, overwrite=True)
    else:
        meta = fit(train, model, head="specialists", overwrite=True)
    result = evaluate(model, test)
    key = "accuracy" if task == "classification" else "rmse_px"
    return {key: float(result[key]), "train_seconds": meta["training"]["seconds"],
            "grid": meta["training"].get("grid"), "alpha_per_group": meta["training"].get("alpha_per_group")}


#: Where bf16 loses (issue 19): each step from fp32 features to what `--precision bf16` stores, one at a time.
#: (name, precision, runtime, store dtype, layer); the first is the reference.
BF16_STEPS = (
    ("fp32, TF, float32 store", "fp32", "tensorflow", "float32", "block4_pool"),
    ("fp32, TF, float16 store", "fp32", "tensorflow", "float16", "block4_pool"),
    ("bf16, TF, float32 store", "bf16", "tensorflow", "float32", "block4_pool"),
    ("bf16, OpenVINO, float32 store", "bf16", "openvino", "float32", "block4_pool"),
    ("bf16, OpenVINO, float16 store", "bf16", "openvino", "float16", "block4_pool"),
    ("fp32, TF, float32 store, block3_pool", "fp32", "tensorflow", "float32", "block3_pool"),
    ("bf16, OpenVINO, float32 store, block3_pool", "bf16", "openvino", "float32", "block3_pool"),
)


def _feature_error(path: str, ref: str) -> float:
    """||X - X_ref|| / ||X_ref|| over the valid training rows of two extractions of the same images."""
    X, _, _, _, _ = _load(path, pooling=None, flipped=False)
    R, _, _, _, _ = _load(ref, pooling=None, flipped=False)
    return float(np.linalg.norm(X - R) / np.linalg.norm(R))


def where_bf16_loses(name: str, train_src: str, test_src: str, task: str, workdir: str, weights: str) -> dict:
    """The headline metric of bneck's default head after each step of :data:`BF16_STEPS`, and the features'
    relative error against fp32 at the same layer: which part of bf16 extraction costs what."""
    from features.mapper import device

    out, refs = {}, {}
    for step, prec, runtime, store, layer in BF16_STEPS:
        if runtime == "openvino" and not device.openvino_available():
            continue
        common.log(f"== {name}: {step}")
        d = os.path.join(workdir, f"{name}-steps-{prec}-{runtime}-{store}-{layer}-{weights}")
        os.makedirs(d, exist_ok=True)
        tr, te = os.path.join(d, "train.h5"), os.path.join(d, "test.h5")
        size = INPUT.get(name, "224")
        speed = extract(train_src, tr, precision=prec, input_size=size, weights=weights, runtime=runtime,
                        layer=layer, store_dtype=store)
        extract(test_src, te, precision=prec, input_size=size, weights=weights, runtime=runtime, layer=layer,
                store_dtype=store)
        refs.setdefault(layer, tr)
        with tempfile.TemporaryDirectory(dir=d) as work:
            default = bneck_default(tr, te, work, task="classification" if task == "classification"
                                    else "regression")
        key = "accuracy" if task == "classification" else "rmse_px"
        out[step] = {key: default[key], "feature_error_vs_fp32": round(_feature_error(tr, refs[layer]), 5),
                     "extract_img_s": speed["images_per_s"]}
    for step, row in out.items():
        layer = "block3_pool" if step.endswith("block3_pool") else "block4_pool"
        base = out[next(s for s in out if s.startswith("fp32, TF, float32") and
                        (s.endswith("block3_pool") == (layer == "block3_pool")))]
        key = "accuracy" if "accuracy" in row else "rmse_px"
        row["loss_vs_fp32"] = round((base[key] - row[key]) / base[key] if key == "accuracy"
                                    else (row[key] - base[key]) / base[key], 4)
    return out


def main(argv=None) -> dict:
    p = common.parser(__doc__)
    p.add_argument("--datasets", default="digits,faces", help="demo datasets to run (default digits,faces)")
    p.add_argument("--data", action="append", default=[], metavar="NAME=TRAIN,TEST,TASK",
                   help="your own dataset: train and test sources and classification|keypoints (repeatable)")
    p.add_argument("--precisions", default="fp32,bf16,int8", help="extraction precisions (default fp32,bf16,int8)")
    p.add_argument("--weights", default="auto", help="--weights of the extraction (default auto: ImageNet "
                                                      "when available, else seeded random, said in the JSON)")
    p.add_argument("--runtime", default="auto", help="--runtime of the extraction (default auto)")
    p.add_argument("--n-faces", type=int, default=600, help="demo training faces (default 600)")
    p.add_argument("--workdir", default=os.path.join(common.DEFAULT_ROOT, "quality"),
                   help="where demo data and feature files are cached")
    p.add_argument("--where-bf16-loses", action="store_true",
                   help="instead: for each dataset, the default head's metric after each step from fp32 to bf16 "
                        "features (float16 store, TF vs OpenVINO bf16, a shallower layer), one at a time")
    args = p.parse_args(argv)
    from features.mapper import device
    from features.mapper.runtimes import resolve_runtime
    from pipeline.tools.demo import make_demo

    demo = make_demo(os.path.join(args.workdir, "demo"), n_faces=args.n_faces)
    sets = {"digits": (demo["digits_train"], demo["digits_test"], "classification"),
            "faces": (demo["keypoints_training"], demo["keypoints_validation"], "keypoints")}
    sets = {k: v for k, v in sets.items() if k in args.datasets.split(",")}
    for spec in args.data:
        name, _, rest = spec.partition("=")
        tr, te, task = rest.split(",")
        sets[name] = (tr, te, task)
    precisions = [x for x in args.precisions.split(",") if x]
    runtime = resolve_runtime(args.runtime)
    if "int8" in precisions and not device.nncf_available():
        common.log("int8 skipped: the [int8] extra (OpenVINO + NNCF) is not installed")
        precisions.remove("int8")
    if args.where_bf16_loses:
        return common.emit({"bench": "quality", "where_bf16_loses": {
            name: where_bf16_loses(name, tr, te, task, args.workdir, args.weights)
            for name, (tr, te, task) in sets.items()}, "weights": args.weights})
    result = {"bench": "quality", "runtime": runtime, "weights": args.weights, "auto_precision":
              device.resolve_precision("auto"), "datasets": {}}
    for name, (train_src, test_src, task) in sets.items():
        res = result["datasets"].setdefault(name, {"task": task})
        for prec in precisions:
            common.log(f"== {name}, {prec}")
            d = os.path.join(args.workdir, f"{name}-{prec}-{args.weights}-{runtime}")
            os.makedirs(d, exist_ok=True)
            size = INPUT.get(name, "224")
            tr, te = os.path.join(d, "train.h5"), os.path.join(d, "test.h5")
            speed = extract(train_src, tr, precision=prec, input_size=size, weights=args.weights, runtime=runtime)
            extract(test_src, te, precision=prec, input_size=size, weights=args.weights, runtime=runtime)
            careful = careful_classification(tr, te) if task == "classification" else careful_keypoints(tr, te)
            with tempfile.TemporaryDirectory(dir=d) as work:
                default = bneck_default(tr, te, work, task="classification" if task == "classification"
                                        else "regression")
            key = "accuracy" if task == "classification" else "rmse_px"
            # Relative loss, positive when worse: accuracy lower, or RMSE higher.
            gap = (careful[key] - default[key]) / careful[key] if key == "accuracy" else \
                (default[key] - careful[key]) / careful[key]
            res[prec] = {"extract_train": speed, "default": default, "careful": careful,
                         "default_vs_careful": round(gap, 4)}
        if "fp32" in res:
            key = "accuracy" if task == "classification" else "rmse_px"
            base = res["fp32"]["default"][key]
            for prec in precisions:
                v = res[prec]["default"][key]
                res[prec]["loss_vs_fp32"] = round((base - v) / base if key == "accuracy" else (v - base) / base, 4)
    return common.emit(result)


if __name__ == "__main__":
    main()

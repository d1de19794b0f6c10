"""What --precision int8 costs in accuracy: the same head on fp32 and int8 features of the demo digits.

On the embedded demo digits (scikit-learn's, 1,347 train / 450 test images), with VGG16 at 64x64,
block4_pool, seeded random weights and the OpenVINO runtime:

  1. `bneck extract` train and test in fp32, and in int8 (the test set calibrated on the training
     set with --calibrate-on, so both files come from one int8 model);
  2. per-row cosine similarity and relative error of the int8 features against the fp32 ones;
  3. a linear-SVM grid (`bneck train --head svm --pooling avg --grid C=0.01,0.1,1`) on each
     training file, evaluated on fp32 and int8 test features. "int8 model on fp32 test" is
     what `bneck predict` does: it rebuilds the backbone in Keras, in fp32.

    python bench/int8_accuracy.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import numpy as np  # noqa: E402

EXTRACT = ["--backbone", "vgg16", "--input-size", "64", "--layer", "block4_pool", "--weights", "none",
           "--runtime", "openvino", "--no-progress"]


def bneck(*args) -> str:
    """`bneck ARGS` in a child process; its stdout (raises with its stderr on failure)."""
    r = subprocess.run([sys.executable, "-m", "pipeline", "-q", *map(str, args)], capture_output=True, text=True,
                       cwd=common.REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    if r.returncode != 0:
        raise RuntimeError(f"bneck {' '.join(map(str, args[:2]))} failed (rc {r.returncode}):\n{r.stderr[-3000:]}")
    return r.stdout


def agreement(a_path: str, b_path: str) -> dict:
    """Per-row cosine and relative error of the `features` of two files (a against reference b)."""
    import h5py

    with h5py.File(a_path) as fa, h5py.File(b_path) as fb:
        a = fa["features"][()].reshape(len(fa["features"]), -1).astype(np.float64)
        b = fb["features"][()].reshape(len(a), -1).astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = (a * b).sum(1) / np.maximum(na * nb, 1e-30)
    rel = np.linalg.norm(a - b, axis=1) / np.maximum(nb, 1e-30)
    return {"cosine_min": round(float(cos.min()), 5), "cosine_mean": round(float(cos.mean()), 5),
            "rel_err_median": round(float(np.median(rel)), 4), "rel_err_max": round(float(rel.max()), 4)}


def main(argv=None) -> dict:
    p = common.parser(__doc__)
    p.add_argument("--workdir", default=os.path.join(common.DEFAULT_ROOT, "int8-accuracy"),
                   help="where the demo data, feature files and models go (default under the bench dir)")
    p.add_argument("--grid", default="0.01,0.1,1", help="C values of the SVM grid (default 0.01,0.1,1)")
    args = p.parse_args(argv)

    data, w = os.path.join(args.workdir, "data"), args.workdir
    if not os.path.isdir(os.path.join(data, "digits")):
        subprocess.run([sys.executable, "-m", "pipeline.tools.demo", data], check=True, cwd=common.REPO,
                       stdout=subprocess.DEVNULL)
    train, test = os.path.join(data, "digits", "train"), os.path.join(data, "digits", "test")
    files = {}
    for precision in ("fp32", "int8"):
        for split, src in (("train", train), ("test", test)):
            out = os.path.join(w, f"{split}_{precision}.h5")
            extra = ["--calibrate-on", train] if precision == "int8" and split == "test" else []
            common.log(f"extract {split} {precision}")
            bneck("extract", src, "-o", out, *EXTRACT, "--precision", precision, "--overwrite", *extra)
            files[split, precision] = out
    result = {"bench": "int8_accuracy", "data": "demo digits (1,347 train / 450 test)",
              "extract": " ".join(EXTRACT), "features_vs_fp32": {
                  split: agreement(files[split, "int8"], files[split, "fp32"]) for split in ("train", "test")},
              "svm_accuracy": {}}
    for precision in ("fp32", "int8"):
        model = os.path.join(w, f"svm_{precision}")
        common.log(f"train svm on {precision} features")
        bneck("train", files["train", precision], "-o", model, "--head", "svm", "--pooling", "avg",
              "--grid", f"C={args.grid}", "--jobs", "2", "--overwrite")
        for test_precision in ("fp32", "int8"):
            m = json.loads(bneck("evaluate", model, files["test", test_precision], "--json"))
            result["svm_accuracy"][f"{precision}_model_on_{test_precision}_test"] = round(m["accuracy"], 4)
    common.log(json.dumps(result["svm_accuracy"]))
    return common.emit(result)


if __name__ == "__main__":
    main()

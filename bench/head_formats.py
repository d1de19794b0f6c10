"""Load time of a LogRegHead (10 classes, 512 features): skops.io (types checked) vs plain .npz + JSON arrays.

Run: ``python bench/head_formats.py`` (figures recorded in docs/model-dir.md, "skops or plain arrays?").
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from pipeline.heads import LogRegHead

IMPORT_SKOPS = ("import time, sklearn.pipeline, sklearn.linear_model, sklearn.svm\n"
                "t = time.perf_counter()\nimport skops.io\nprint(time.perf_counter() - t)")


def median_ms(fn, n=30):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def main():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(2000, 512)).astype("float32"), rng.integers(0, 10, 2000)
    head = LogRegHead(max_iter=200).fit(X, y)
    d = tempfile.mkdtemp()
    head.save(d)
    scaler, clf = head.pipeline_.named_steps["scale"], head.pipeline_.named_steps["clf"]
    np.savez(os.path.join(d, "head.npz"), mean=scaler.mean_, scale=scaler.scale_, var=scaler.var_, coef=clf.coef_,
             intercept=clf.intercept_, classes=head.classes_)
    with open(os.path.join(d, "head.json"), "w") as fh:
        json.dump(head.get_params(), fh)

    def npz():
        with np.load(os.path.join(d, "head.npz"), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        with open(os.path.join(d, "head.json")) as fh:
            json.load(fh)
        return arrays

    print(f"skops checked load: {median_ms(lambda: LogRegHead.load(d)):.2f} ms median; "
          f"npz+json read: {median_ms(npz):.2f} ms")
    sizes = {n: os.path.getsize(os.path.join(d, n)) for n in ("head.skops", "head.npz")}
    print("bytes:", sizes)
    runs = [float(subprocess.run([sys.executable, "-c", IMPORT_SKOPS], capture_output=True, text=True).stdout)
            for _ in range(5)]
    print(f"import skops.io after scikit-learn: {np.median(runs):.2f} s median of 5")


if __name__ == "__main__":
    main()

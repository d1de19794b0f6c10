"""Shared helpers for the bench scripts: JPEG fixtures, extractor construction, timing, RSS, JSON output.

Every bench prints exactly ONE JSON object on stdout (``emit``) and its progress on stderr
(``log``), so results can be piped into ``jq`` or appended to a JSONL file. Import it from a
script in ``bench/`` as ``import common`` (the scripts put ``bench/`` and the repo root on
``sys.path``, so ``python bench/<name>.py`` works from the repo root without installing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from features.mapper import device
from features.mapper.system import cpu_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

#: Fixtures live here unless --fixture-root / $BNECK_BENCH_DIR says otherwise; reused across runs.
DEFAULT_ROOT = os.environ.get("BNECK_BENCH_DIR") or os.path.join(tempfile.gettempdir(), "bneck-bench")


# ----------------------------------------------------------------------------- output


def parser(doc: str, *, epilog_from: int = 1):
    """The bench's argument parser: its docstring's first paragraph as description, the rest as epilog."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                   epilog=doc.split("\n\n", epilog_from)[epilog_from],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def log(*args) -> None:
    """Progress to stderr (stdout carries only the JSON result)."""
    print(*args, file=sys.stderr, flush=True)


def emit(result: dict) -> dict:
    """Print the one JSON object of this run (with environment and peak RSS added) to stdout; return ``result``."""
    out = dict(result)
    out.setdefault("peak_rss_mb", peak_rss_mb())
    out.setdefault("env", env_info())
    print(json.dumps(out, default=_json_default), flush=True)
    return result


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    return str(o)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def env_info() -> dict:
    """Where the numbers came from: cores, CPU, bf16 support and library versions actually imported."""

    info = {"cores": os.cpu_count(), "cpu": cpu_model(), "cpu_bf16": device.cpu_has_bf16(),
            "python": platform.python_version()}
    for mod in ("tensorflow", "keras", "openvino", "PIL", "numpy"):
        m = sys.modules.get(mod)
        if m is not None:
            info[mod] = getattr(m, "__version__", "?")
    return info


# ----------------------------------------------------------------------------- timing


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        return False


def run_for(fn, *, min_seconds: float = 10.0, min_iters: int = 3, max_iters: int | None = None,
            warmup: int = 2) -> list[float]:
    """Call ``fn()`` ``warmup`` times untimed, then until both ``min_seconds`` and ``min_iters`` are met.

    Returns the wall time of each timed call in seconds.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < min_seconds:
        if max_iters is not None and len(times) >= max_iters:
            break
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def summarize(times: list[float], items_per_call: int) -> dict:
    """Throughput (total items / total time) and per-call latency percentiles."""
    total = float(sum(times))
    arr = np.asarray(times) * 1e3
    return {
        "calls": len(times), "seconds": round(total, 3),
        "items_per_s": round(items_per_call * len(times) / total, 2) if total > 0 else 0.0,
        "ms_per_call_median": round(float(np.median(arr)), 2),
        "ms_per_call_p90": round(float(np.percentile(arr, 90)), 2),
    }


def threaded_throughput(fn, items, workers: int) -> tuple[float, list]:
    """Map ``fn`` over ``items`` with a thread pool; returns (seconds, results)."""
    with ThreadPoolExecutor(workers) as pool, Timer() as t:
        results = list(pool.map(fn, items))
    return t.seconds, results


# ----------------------------------------------------------------------------- JPEG fixtures


def _natural_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth gradients, soft blobs, a few hard-edged outlines and sensor-like noise: compresses like a photo."""
    # Build a low-resolution smooth field and upscale it (cheap even at 12 MP), then add noise.
    lh, lw = max(2, h // 32), max(2, w // 32)
    yy, xx = np.mgrid[0:lh, 0:lw].astype(np.float32)
    yy /= lh
    xx /= lw
    low = np.empty((lh, lw, 3), np.float32)
    for c in range(3):
        a, b, ph, fq = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0, 6.28), rng.uniform(1, 6)
        low[..., c] = 128 + 70 * np.sin(fq * (a * xx + b * yy) + ph)
    for _ in range(4):  # a few soft blobs ("objects")
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        low += blob[..., None] * rng.uniform(-80, 80, 3).astype(np.float32)
    from PIL import Image, ImageDraw

    big = Image.fromarray(np.clip(low, 0, 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(big)
    for _ in range(6):  # hard edges, which cost JPEG bits (and decode time) like real object outlines
        x0, x1 = sorted(rng.integers(0, w, 2))
        y0, y1 = sorted(rng.integers(0, h, 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), outline=colour,
                                                                  width=max(1, w // 128))
    img = np.asarray(big, dtype=np.int16)
    img = img + rng.integers(-10, 11, size=(h, w, 3), dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_jpeg(args) -> str:
    path, seed, h, w, quality = args
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(_natural_image(rng, h, w)).save(path, "JPEG", quality=quality)
    return path


def jpeg_folder(n: int, classes: int = 4, *, size: tuple[int, int] = (256, 256), quality: int = 90,
                seed: int = 0, root: str | None = None, workers: int | None = None) -> tuple[str, list[str]]:
    """``n`` JPEGs of ``size`` (h, w) spread over ``classes`` folders ``class_000/...``; cached by parameters.

    Returns (directory, sorted list of file paths). A ``.complete`` marker makes reuse safe after
    an interrupted generation.
    """
    h, w = size
    root = root or DEFAULT_ROOT
    d = os.path.join(root, f"jpeg-n{n}-c{classes}-{h}x{w}-q{quality}-s{seed}")
    marker = os.path.join(d, ".complete")
    jobs = []
    for i in range(n):
        sub = os.path.join(d, f"class_{i % classes:03d}")
        jobs.append((os.path.join(sub, f"img_{i:06d}.jpg"), seed * 1_000_003 + i, h, w, quality))
    paths = sorted(j[0] for j in jobs)
    if os.path.exists(marker):
        return d, paths
    log(f"generating {n} JPEGs {w}x{h} q{quality} in {d} ...")
    for c in range(min(classes, n)):
        os.makedirs(os.path.join(d, f"class_{c:03d}"), exist_ok=True)
    with Timer() as t:
        threaded_throughput(_write_jpeg, jobs, workers or os.cpu_count() or 2)
    open(marker, "w").close()
    log(f"  done in {t.seconds:.1f} s")
    return d, paths


def large_jpegs(n: int = 8, *, size: tuple[int, int] = (3000, 4000), quality: int = 90, seed: int = 0,
                root: str | None = None) -> list[str]:
    """``n`` 12-megapixel (4000x3000 by default, given as (h, w)) JPEGs in one folder; cached."""
    d, paths = jpeg_folder(n, 1, size=size, quality=quality, seed=seed, root=root)
    return paths


def warm_page_cache(paths) -> int:
    """Read every file once so a decode bench measures decoding, not the disk; returns total bytes."""
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            total += len(f.read())
    return total


# ----------------------------------------------------------------------------- models


def add_fixture_args(p: argparse.ArgumentParser, *, n: int) -> None:
    """``--n`` (generated 256x256 JPEGs) and ``--batch``: the flags of every bench over a JPEG fixture."""
    p.add_argument("--n", type=int, default=n, help=f"256x256 JPEGs in the fixture (default {n})")
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model flags shared by model_ceiling, classic and the end-to-end bench."""
    p.add_argument("--backbone", default="mobilenet", help="registry name (vgg16, resnet50, mobilenet, ...)")
    p.add_argument("--input-size", default="224", help="N or HxW (default 224)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16", "fp16", "int8"),
                   help="compute precision (default fp32; auto = bf16 on a bf16 CPU, fp16 on a GPU)")
    p.add_argument("--runtime", default="tensorflow", choices=("tensorflow", "openvino"),
                   help="inference runtime (openvino needs `pip install bneck[openvino]`)")
    p.add_argument("--layer", default=None, help="bottleneck layer (default: the backbone's default)")
    p.add_argument("--pooling", default="none", choices=("none", "avg", "max"))
    p.add_argument("--no-flip", dest="flip", action="store_false", help="only the original view")
    p.add_argument("--seed", type=int, default=0, help="seed of the random (--weights none) backbone")
    p.add_argument("--xla", action="store_true", help="--runtime tensorflow: compile with XLA (jit_compile)")


class RandomCalibration:
    """int8 calibration on 32 seeded random images: enough for timing (speed does not depend on the scales)."""

    def __init__(self, size, seed: int = 0, n: int = 32):
        self.size, self.seed, self.n = tuple(size), seed, n
        self.key = f"bench-random-{n}-seed{seed}"

    def images(self):
        import numpy as np

        return np.random.default_rng(self.seed).integers(0, 256, (self.n, *self.size, 3), dtype=np.uint8)


def build_extractor(backbone: str, *, input_size="224", batch: int = 32, precision: str = "fp32",
                    runtime: str = "tensorflow", layer=None, pooling: str = "none", flip: bool = True,
                    seed: int = 0, cache_dir: str | None = None, xla: bool = False):
    """A stage-one extractor on a backbone with seeded RANDOM weights (never downloads).

    Speed does not depend on the weight values, so random weights time exactly like ImageNet ones.
    Returns (extractor, info dict).
    """
    import logging

    from features import backbones, weights
    from features.mapper import tf_runtime

    logging.getLogger("bneck").setLevel(logging.ERROR)  # silence the --weights none warning
    spec = backbones.get(backbone)
    size = backbones.parse_input_size(input_size, spec)
    precision = device.resolve_precision(precision)
    info = {"backbone": spec.name, "input_size": list(size), "batch": batch, "precision": precision,
            "runtime": runtime, "pooling": pooling, "flip": flip, "weights": f"none(seed={seed})",
            "xla": bool(xla and runtime != "openvino")}
    with Timer() as t:
        if runtime == "openvino":
            from features.mapper import ov_runtime

            if not device.openvino_available():
                raise SystemExit("--runtime openvino: the openvino package is not installed "
                                 "(pip install 'bneck[openvino]')")
            if precision not in ov_runtime.PRECISIONS:
                raise SystemExit(f"--runtime openvino supports --precision bf16, fp32 or int8, not {precision}")
            model, _ = weights.build_backbone(spec, input_size=size, layer=layer, weights="none", seed=seed)
            ex = ov_runtime.OpenVINOExtractor(
                model, spec.preprocess_function, pooling=pooling, flip=flip, batch_size=batch, precision=precision,
                cache_dir=cache_dir or os.path.join(DEFAULT_ROOT, "openvino-cache"),
                **({"calibration": RandomCalibration(size, seed)} if precision == "int8" else {}))
            info["openvino"] = ex.describe()
        else:
            model, _ = weights.build_backbone(spec, input_size=size, layer=layer, weights="none", seed=seed,
                                              dtype_policy=device.dtype_policy(precision))
            ex = tf_runtime.Extractor(model, spec.preprocess_function, pooling=pooling, flip=flip, batch_size=batch,
                                  xla=xla)
    info["build_seconds"] = round(t.seconds, 2)
    info["feature_shape"] = list(ex.feature_shape)
    return ex, info


def pipelined_step(ex, x):
    """One timed step of the model ceiling: submit ``x`` and collect the oldest batch, two in flight.

    This is how the runner drives an extractor (features.runner.IN_FLIGHT), so the ceiling is
    the model's own best and the end-to-end ratio is not flattered by a slower synchronous loop.
    An extractor that takes the mirrored batch from its caller gets it ready-made, as the
    runner's decode threads make it: the ceiling is the model alone on tensors in memory.
    """
    import collections

    from features.mapper.batches import mirror_batch

    inflight = collections.deque()
    args = (x, mirror_batch(x)) if getattr(ex, "takes_mirrored", False) and ex.flip else (x,)

    def step():
        inflight.append(ex.submit(*args))
        if len(inflight) >= 2:
            inflight.popleft().result()
    return step


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fixture-root", default=None,
                   help=f"where generated JPEG fixtures are cached (default {DEFAULT_ROOT}, or $BNECK_BENCH_DIR)")


# ----------------------------------------------------------------------------- bneck in a child process

_BNECK_CHILD = """
import json, resource, sys
from pipeline.cli.main import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}),
      file=sys.stderr)
sys.exit(rc)  # a refused run (exit 1 or 2) must fail the bench with its message, not look like a success
"""


def run_bneck_extract(data: str, out: str, flags: list[str]) -> dict:
    """`bneck extract DATA -o OUT FLAGS --json` in a child: its summary, its own peak RSS and wall time."""
    import subprocess

    # The default float16 store, as a user runs it: the calibrated random init (features/random_init.py) keeps
    # BatchNorm backbones' activations in its range (before it, benches had to store float32).
    cmd = [sys.executable, "-c", _BNECK_CHILD, "-q", "extract", data, "-o", out, *flags,
           "--no-progress", "--overwrite", "--json"]
    with Timer() as t:
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    if r.returncode != 0:
        raise RuntimeError(f"bneck extract failed (rc {r.returncode}):\n{r.stderr[-3000:]}")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    summary.update(json.loads(r.stderr.strip().splitlines()[-1]))
    summary["wall_seconds"] = round(t.seconds, 2)
    return summary

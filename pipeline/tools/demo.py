"""The embedded demo datasets, generated deterministically offline.

* ``digits/{train,test}/<digit>/<i>.png``: scikit-learn's bundled 8x8 digits, scaled
  to 0-255 and upscaled to 32x32 grey PNGs, split 75/25 stratified by class.
* ``digits/test-tars/{00000..00003}.tar``: the same test split as webdataset tar shards, as
  img2dataset writes them (``<i>.png`` and ``<i>.cls`` per sample, in the folder's row order), to
  show ``bneck extract --shard I/N`` over tars and ``bneck merge``.
* ``keypoints/{training,validation}.csv``: synthetic 96x96 grey "faces" in the exact
  Kaggle Facial Keypoints format (30 keypoint columns, then ``Image``), with Kaggle-like
  missing keypoints.  Each face is rendered analytically from a few parameters
  (position, scale, rotation, brightness), so its 15 keypoints are determined by the
  picture.  Like Kaggle, ``left_*`` means the subject's left: the image's right side.
  The renderer is exactly mirror-symmetric, so flipping a picture and applying
  :func:`features.keypoints.flip_targets` yields a correctly labelled face.

Run ``python -m pipeline.tools.demo OUTDIR`` to write them.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import tarfile
import tempfile

import numpy as np

from features.fsutil import atomic_write_bytes
from features.keypoints import KAGGLE_KEYPOINTS

SIDE = 96
MARKER = ".demo-complete"
#: Keypoints present in ~70% of Kaggle rows (its "8-keypoint" rows) -- the rest are empty.
CORE_POINTS = ("left_eye_center", "right_eye_center", "nose_tip", "mouth_center_bottom_lip")

# Keypoints in face-local units (u to the image's right, v down), for scale 1.
# The subject's left is the image's right, hence left_* at positive u.
_LOCAL = {
    "left_eye_center": (14.0, -10.0), "right_eye_center": (-14.0, -10.0),
    "left_eye_inner_corner": (8.0, -10.0), "left_eye_outer_corner": (20.0, -10.0),
    "right_eye_inner_corner": (-8.0, -10.0), "right_eye_outer_corner": (-20.0, -10.0),
    "left_eyebrow_inner_end": (8.0, -18.0), "left_eyebrow_outer_end": (22.0, -16.0),
    "right_eyebrow_inner_end": (-8.0, -18.0), "right_eyebrow_outer_end": (-22.0, -16.0),
    "nose_tip": (0.0, 5.0),
    "mouth_left_corner": (11.0, 16.5), "mouth_right_corner": (-11.0, 16.5),
    "mouth_center_top_lip": (0.0, 13.0), "mouth_center_bottom_lip": (0.0, 20.0),
}


def face_params(rng) -> dict:
    """Draw random parameters for one synthetic face."""
    skin = rng.uniform(140, 210)
    return {
        "cx": rng.uniform(42, 54), "cy": rng.uniform(42, 54), "scale": rng.uniform(0.8, 1.1),
        "angle": np.deg2rad(rng.uniform(-12, 12)), "background": rng.uniform(20, 100),
        "skin": skin, "dark": skin * rng.uniform(0.15, 0.35), "noise": rng.uniform(2, 8),
    }


def mirror_params(p: dict) -> dict:
    """Parameters of the left-right mirror image of the face drawn from ``p``."""
    return {**p, "cx": (SIDE - 1) - p["cx"], "angle": -p["angle"]}


def face_keypoints(p: dict) -> np.ndarray:
    """The 30 Kaggle target values (pixel-centre coordinates) of the face drawn from ``p``."""
    c, s = np.cos(p["angle"]), np.sin(p["angle"])
    out = []
    for name in KAGGLE_KEYPOINTS[::2]:
        u, v = _LOCAL[name[:-2]]
        out += [p["cx"] + p["scale"] * (c * u - s * v), p["cy"] + p["scale"] * (s * u + c * v)]
    return np.array(out)


def render_face(p: dict, noise_rng=None) -> np.ndarray:
    """Render the face of parameters ``p`` as a 96x96 uint8 image (noise only with ``noise_rng``)."""
    # Local coordinates of every pixel centre; shapes are symmetric in u, so mirrored
    # parameters give the exactly mirrored picture.
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float64)
    c, s, k = np.cos(p["angle"]), np.sin(p["angle"]), p["scale"]
    dx, dy = x - p["cx"], y - p["cy"]
    u, v = (c * dx + s * dy) / k, (-s * dx + c * dy) / k
    img = np.full((SIDE, SIDE), p["background"])

    def paint(dist, value):
        # dist: signed distance in local units; a one-pixel ramp gives anti-aliased edges.
        cover = np.clip(0.5 - dist * k, 0.0, 1.0)
        img[...] = img * (1 - cover) + value * cover

    paint(_ellipse(u, v, 0, 2, 30, 38), p["skin"])
    for side in (1, -1):
        paint(_ellipse(u, v, 14 * side, -10, 6, 3), min(255.0, p["skin"] * 1.25))  # eye white
        paint(np.hypot(u - 14 * side, v + 10) - 2.2, p["dark"])  # pupil at the eye centre
        paint(_segment(u, v, 8 * side, -18, 22 * side, -16) - 1.3, p["dark"])  # eyebrow
    paint(_segment(u, v, 0, -6, 0, 5) - 1.2, p["skin"] * 0.7)  # nose ridge ends at the tip
    paint(np.hypot(u, v - 5) - 2.0, p["skin"] * 0.55)
    paint(_ellipse(u, v, 0, 16.5, 11, 3.5), p["dark"] * 1.5)  # mouth: corners, top, bottom lip
    if noise_rng is not None:
        img = img + noise_rng.normal(0, p["noise"], img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _ellipse(u, v, cu, cv, a, b):
    """Approximate signed distance to an axis-aligned ellipse, in local units."""
    return (np.sqrt(((u - cu) / a) ** 2 + ((v - cv) / b) ** 2) - 1) * min(a, b)


def _segment(u, v, u0, v0, u1, v1):
    """Distance to the segment from (u0, v0) to (u1, v1), in local units."""
    du, dv = u1 - u0, v1 - v0
    t = np.clip(((u - u0) * du + (v - v0) * dv) / (du * du + dv * dv), 0, 1)
    return np.hypot(u - u0 - t * du, v - v0 - t * dv)


def make_faces(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` faces: uint8 images ``(n, 96, 96)`` and targets ``(n, 30)`` with Kaggle-like NaNs."""
    images = np.empty((n, SIDE, SIDE), np.uint8)
    targets = np.empty((n, len(KAGGLE_KEYPOINTS)))
    for i in range(n):
        p = face_params(rng)
        images[i], targets[i] = render_face(p, rng), face_keypoints(p)
    core = np.isin([name[:-2] for name in KAGGLE_KEYPOINTS], CORE_POINTS)
    kind = rng.random(n)
    targets[np.ix_(kind < 0.7, ~core)] = np.nan  # Kaggle: ~70% of rows have 4 points only
    for i in np.flatnonzero((kind >= 0.7) & (kind < 0.75)):  # a few miss one extra point
        j = 2 * rng.integers(len(KAGGLE_KEYPOINTS) // 2)
        targets[i, j:j + 2] = np.nan
    return images, targets


def _csv_bytes(images, targets) -> bytes:
    """Serialise faces in Kaggle's CSV form: 4-decimal values, empty cells for missing."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*KAGGLE_KEYPOINTS, "Image"])
    for img, t in zip(images, targets):
        w.writerow([("" if np.isnan(x) else f"{x:.4f}") for x in t] + [" ".join(map(str, img.ravel()))])
    return buf.getvalue().encode()


def _write_digits(outdir, seed) -> None:
    """Write the digits PNG tree into a temp dir, then swap it in as ``outdir/digits``."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    idx = np.arange(len(d.target))
    train, test = train_test_split(idx, test_size=0.25, stratify=d.target, random_state=seed)
    tmp = tempfile.mkdtemp(prefix="digits.", suffix=".partial", dir=outdir)
    for split, rows in (("train", train), ("test", test)):
        for i in sorted(rows):
            img = np.rint(d.images[i] * (255 / 16)).astype(np.uint8)
            img = img.repeat(4, axis=0).repeat(4, axis=1)  # nearest-neighbour 8x8 -> 32x32
            folder = os.path.join(tmp, split, str(d.target[i]))
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(img).save(os.path.join(folder, f"{i:04d}.png"))
    _write_tars(os.path.join(tmp, "test"), os.path.join(tmp, "test-tars"), TEST_TARS)
    final = os.path.join(outdir, "digits")
    # The demo owns outdir/digits: a stale tree from another seed would mix splits. Not fsutil.replace_dir's
    # swap: the old tree is worthless (make_demo removed its marker first, so a kill here only means the
    # next run writes it again), and a swap killed half-way would leave an old copy in the user's folder.
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(tmp, final)


#: How many webdataset tars the digits test split is written as.
TEST_TARS = 4


def _write_tars(folder, tars, n_tars) -> None:
    """Write the class folder ``folder`` as ``n_tars`` webdataset tars, samples in the folder's row order."""
    from features.reader.manifest import shard_bounds

    samples = [(cls, name) for cls in sorted(os.listdir(folder), key=int)
               for name in sorted(os.listdir(os.path.join(folder, cls)))]
    os.makedirs(tars)
    for t in range(n_tars):
        a, b = shard_bounds(len(samples), t, n_tars)
        with tarfile.open(os.path.join(tars, f"{t:05d}.tar"), "w", format=tarfile.USTAR_FORMAT) as tf:
            for cls, name in samples[a:b]:
                key = os.path.splitext(name)[0]
                with open(os.path.join(folder, cls, name), "rb") as f:
                    png = f.read()
                for ext, data in (("png", png), ("cls", cls.encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime = len(data), 0  # mtime 0: the same seed writes the same bytes
                    tf.addfile(info, io.BytesIO(data))


def make_demo(outdir, *, seed: int = 0, n_faces: int = 600, digits: bool = True) -> dict:
    """Write the demo datasets into ``outdir`` (idempotent) and return their paths.

    Args:
        outdir: Directory to write into; created if needed.  ``outdir/digits`` and
            ``outdir/keypoints`` are owned by the demo and replaced when regenerated.
        seed: Seed of the digits split and of the face generator.
        n_faces: Rows of ``keypoints/training.csv``; ``validation.csv`` gets a quarter.
        digits: False writes the keypoint CSVs only, without the 1797 digit PNGs and their tars
            (the ``digits_*`` paths are then left out).

    Returns:
        ``{"root", "digits_train", "digits_test", "digits_test_tars", "keypoints_training",
        "keypoints_validation"}`` mapped to paths.  When ``outdir/.demo-complete``
        records the same ``seed`` and ``n_faces`` and every returned path exists, nothing is rewritten.
    """
    if n_faces < 1:
        raise ValueError(f"n_faces must be >= 1, got {n_faces}")
    outdir = os.path.abspath(outdir)
    paths = {
        "root": outdir,
        "digits_train": os.path.join(outdir, "digits", "train"),
        "digits_test": os.path.join(outdir, "digits", "test"),
        "digits_test_tars": os.path.join(outdir, "digits", "test-tars"),
        "keypoints_training": os.path.join(outdir, "keypoints", "training.csv"),
        "keypoints_validation": os.path.join(outdir, "keypoints", "validation.csv"),
    }
    if not digits:
        paths = {k: v for k, v in paths.items() if not k.startswith("digits_")}
    marker = os.path.join(outdir, MARKER)
    want = {"seed": int(seed), "n_faces": int(n_faces)}
    try:
        with open(marker, encoding="utf-8") as f:
            done = json.load(f) == want
    except (OSError, ValueError):
        done = False
    if done and all(os.path.exists(p) for p in paths.values()):
        return paths
    os.makedirs(os.path.join(outdir, "keypoints"), exist_ok=True)
    if os.path.exists(marker):
        os.unlink(marker)  # a half-regenerated tree must not look complete
    if digits:
        _write_digits(outdir, seed)
    # Separate streams per file: validation faces do not depend on how many training faces came first.
    for key, n, stream in (("keypoints_training", n_faces, 1),
                           ("keypoints_validation", max(1, n_faces // 4), 2)):
        images, targets = make_faces(n, np.random.default_rng([seed, stream]))
        atomic_write_bytes(paths[key], _csv_bytes(images, targets))
    atomic_write_bytes(marker, json.dumps(want).encode())
    return paths


def main(argv=None, *, digits: bool = True) -> int:
    """Command line entry: ``python -m pipeline.tools.demo OUTDIR [--seed S] [--n-faces N]``.

    ``digits`` is :func:`make_demo`'s (the command line always writes the digits).
    """
    ap = argparse.ArgumentParser(prog="python -m pipeline.tools.demo",
                                 description="Write the offline demo datasets (digits PNGs, "
                                             "synthetic Kaggle-format face keypoints).")
    ap.add_argument("outdir", help="directory to write the demo data into")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--n-faces", type=int, default=600, help="training faces (default 600)")
    args = ap.parse_args(argv)
    for key, path in make_demo(args.outdir, seed=args.seed, n_faces=args.n_faces, digits=digits).items():
        print(f"{key}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

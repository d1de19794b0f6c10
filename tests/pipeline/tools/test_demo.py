"""Demo data: deterministic, idempotent, Kaggle-format, mirror-consistent."""

import os

import numpy as np
import pytest
from PIL import Image

from features.keypoints import KAGGLE_KEYPOINTS, flip_targets
from features.reader.sources import read_source
from pipeline.tools import demo


def _tree_bytes(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, root)] = f.read()
    return out


def test_make_demo_deterministic_and_idempotent(tmp_path):
    a = demo.make_demo(tmp_path / "a", seed=3, n_faces=24)
    demo.make_demo(tmp_path / "b", seed=3, n_faces=24)
    ta, tb = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert ta == tb
    assert not any(".tmp" in k or ".partial" in k for k in ta)
    pngs = [k for k in ta if k.endswith(".png")]
    assert len(pngs) == 1797
    # second call with the same settings rewrites nothing
    mtime = os.stat(a["keypoints_training"]).st_mtime_ns
    assert demo.make_demo(tmp_path / "a", seed=3, n_faces=24) == a
    assert os.stat(a["keypoints_training"]).st_mtime_ns == mtime
    # different settings regenerate
    demo.make_demo(tmp_path / "a", seed=4, n_faces=24)
    assert _tree_bytes(tmp_path / "a") != ta


@pytest.fixture(scope="module")
def demo_paths(tmp_path_factory):
    return demo.make_demo(tmp_path_factory.mktemp("demo"), seed=1, n_faces=80)


def test_demo_digits_layout(demo_paths):
    paths = demo_paths
    train = read_source(paths["digits_train"])
    test = read_source(paths["digits_test"])
    assert train.class_names == test.class_names == [str(d) for d in range(10)]
    assert len(train) + len(test) == 1797 and abs(len(test) / 1797 - 0.25) < 0.01
    assert set(train.paths).isdisjoint(test.paths)
    # stratified: every class about a quarter in test
    for k in range(10):
        n_test, n_all = (test.labels == k).sum(), (train.labels == k).sum() + (test.labels == k).sum()
        assert abs(n_test / n_all - 0.25) < 0.03
    img = Image.open(train.source(0))
    assert img.mode == "L" and img.size == (32, 32)
    px = np.asarray(img)
    assert np.array_equal(px, px[::4, ::4].repeat(4, 0).repeat(4, 1))


def test_demo_keypoints_roundtrip(demo_paths):
    paths = demo_paths
    with open(paths["keypoints_training"]) as f:
        header = f.readline().strip().split(",")
    assert header == [*KAGGLE_KEYPOINTS, "Image"]
    m = read_source(paths["keypoints_training"])
    v = read_source(paths["keypoints_validation"])
    assert m.kind == "kaggle_keypoints" and len(m) == 80 and len(v) == 20
    assert m.inline.shape == (80, 96, 96) and m.row_errors == {}
    images, targets = demo.make_faces(80, np.random.default_rng([1, 1]))
    assert np.array_equal(m.inline, images)
    np.testing.assert_allclose(m.targets, targets, atol=6e-5)
    assert np.array_equal(np.isnan(m.targets), np.isnan(targets))
    complete = ~np.isnan(m.targets).any(axis=1)
    core_only = np.isnan(m.targets).sum(axis=1) == 22
    assert 0.5 < core_only.mean() < 0.9 and complete.any()
    core = [KAGGLE_KEYPOINTS.index(f"{p}_{a}") for p in demo.CORE_POINTS for a in "xy"]
    assert not np.isnan(m.targets[:, core]).any()
    ok = m.targets[~np.isnan(m.targets)]
    assert ok.min() >= 0 and ok.max() <= 95


def test_mirror_consistency(rng):
    for _ in range(5):
        p = demo.face_params(rng)
        mirrored = demo.mirror_params(p)
        flipped_pixels = demo.render_face(p)[:, ::-1].astype(int)
        assert np.abs(flipped_pixels - demo.render_face(mirrored)).max() <= 1
        np.testing.assert_allclose(flip_targets(demo.face_keypoints(p), KAGGLE_KEYPOINTS, 96),
                                   demo.face_keypoints(mirrored), atol=1e-9)
    # Kaggle convention: the subject's left eye is on the image's right.
    kp = demo.face_keypoints(demo.face_params(rng))
    assert kp[KAGGLE_KEYPOINTS.index("left_eye_center_x")] > kp[KAGGLE_KEYPOINTS.index("right_eye_center_x")]


def test_keypoints_are_in_the_picture(rng):
    # The pupil (darkest blob) sits on the eye-centre keypoint.
    p = {**demo.face_params(rng), "angle": 0.0}
    img = demo.render_face(p).astype(float)
    kp = demo.face_keypoints(p)
    x, y = kp[0], kp[1]
    patch = img[int(y) - 1:int(y) + 3, int(x) - 1:int(x) + 3]
    assert patch.min() < p["skin"] * 0.5


def test_cli(tmp_path, capsys):
    # The digits tree is covered above; skip its 1797 PNGs here to keep the suite fast.
    assert demo.main([str(tmp_path / "d"), "--seed", "2", "--n-faces", "4"], digits=False) == 0
    assert "keypoints_training" in capsys.readouterr().out
    assert (tmp_path / "d" / demo.MARKER).read_text() == '{"seed": 2, "n_faces": 4}'
    assert sorted(os.listdir(tmp_path / "d")) == [demo.MARKER, "keypoints"]


def test_demo_digits_test_split_as_webdataset_tars(demo_paths):
    from features import images

    folder = read_source(demo_paths["digits_test"])
    tars = read_source(demo_paths["digits_test_tars"])
    assert tars.kind == "webdataset" and tars.part.count == demo.TEST_TARS
    # The same rows in the same order: what the tar shards' merge is compared with.
    assert [p.split("#")[1] for p in tars.paths] == [os.path.splitext(os.path.basename(p))[0] for p in folder.paths]
    assert tars.labels.tolist() == folder.labels.tolist() and tars.class_names == folder.class_names
    for i in (0, len(folder) // 2, len(folder) - 1):
        np.testing.assert_array_equal(images.load_rgb(tars.source(i)), images.load_rgb(folder.source(i)))

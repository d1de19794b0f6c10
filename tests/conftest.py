"""Shared test setup: quiet TensorFlow, no network, small thread pools."""

import os

# Tests must never download anything: point Keras at an empty private cache.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# `--runtime auto` picks OpenVINO when the extra is installed; its TF->OpenVINO conversion costs
# seconds per run, so the suite defaults to TensorFlow and the OpenVINO tests ask for it by name.
os.environ.setdefault("BNECK_RUNTIME", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_keras_home(tmp_path_factory, monkeypatch):
    """Give every test an empty KERAS_HOME so no cached ImageNet file is ever used by accident."""
    home = tmp_path_factory.mktemp("keras_home")
    monkeypatch.setenv("KERAS_HOME", str(home))
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def small_faces(tmp_path_factory):
    """24 of the demo's synthetic Kaggle-format faces and their features (mobilenet 32x32, random seed 1).

    Made once for the session: the keypoint tests that only need real keypoint rows and targets share it
    instead of each generating and extracting its own.
    """
    from pipeline.tools.demo import make_demo
    from tests.stage2_fixtures import extract_fast

    root = tmp_path_factory.mktemp("small_faces")
    paths = make_demo(root / "demo", n_faces=24)
    return {"paths": paths, "features": extract_fast(paths["keypoints_training"], root / "k.h5", input_size="32")}

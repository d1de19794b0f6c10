"""Fixtures shared by the reliability suite: one small dataset and its uninterrupted extraction."""

from __future__ import annotations

import pytest

from tests.imagefolders import make_class_folder
from tests.reliability.helpers import ARGS, N_ROWS, bneck, json_line


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability") / "data"
    make_class_folder(root, classes=("a", "b", "c"), per_class=8, bad=[("b", "broken.jpg", b"\xff\xd8\xff\xe0junk")])
    return root


@pytest.fixture(scope="session")
def reference(data, tmp_path_factory):
    """``bneck extract DATA ARGS`` run once, uninterrupted: what every resumed run must equal."""
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    r = bneck("extract", data, "-o", out, *ARGS)
    assert r.returncode == 0, r.stderr
    assert json_line(r.stdout)["rows"] == N_ROWS
    return out

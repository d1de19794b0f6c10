"""Filter visualisation by gradient ascent, the grid image, and the backbone layer table."""

import numpy as np
import pytest
from PIL import Image

from pipeline.tools import filters


def test_parse_filters():
    assert filters.parse_filters("0-3") == [0, 1, 2, 3]
    assert filters.parse_filters("3,7,9-11") == [3, 7, 9, 10, 11]
    for bad in ("", "a-b", "-1"):
        with pytest.raises(ValueError, match="--filters"):
            filters.parse_filters(bad)


def test_ascent_raises_every_filters_activation_and_writes_the_grid(tmp_path):
    out = tmp_path / "grid.png"
    r = filters.visualize_filters("mobilenet", "conv_pw_1", "0-4", str(out), weights="none", steps=8, size=32, seed=2)
    acts = np.array(r["activations"])
    assert acts.shape == (9, 5)
    assert (acts[-1] > acts[0]).all() and (np.diff(acts, axis=0) > 0).all()  # monotone for each filter
    # 5 tiles -> 3 columns x 2 rows of 32 px with 4 px margins.
    assert r["grid_size"] == [3 * 32 + 2 * 4, 2 * 32 + 4]
    with Image.open(out) as img:
        assert img.size == (104, 68) and img.mode == "RGB"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".png") and p.name != "grid.png"]


def test_filter_index_out_of_range(tmp_path):
    with pytest.raises(ValueError, match="conv1 has 32 filters"):
        filters.visualize_filters("mobilenet", "conv1", "30-40", str(tmp_path / "g.png"), weights="none", size=32)


def test_grid_and_deprocess():
    tiles = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (10, 20, 30, 40)])
    grid = filters.grid_image(tiles, margin=1)
    assert grid.shape == (9, 9, 3) and grid[5, 5, 0] == 40 and grid[4, 4, 0] == 0
    d = filters.deprocess(np.random.default_rng(0).normal(0, 50, (8, 8, 3)))
    assert d.dtype == np.uint8 and abs(float(d.mean()) - 127.5) < 3


def test_layer_table():
    t = filters.layer_table("mobilenet", input_size="32")
    names = [r["name"] for r in t["layers"]]
    assert names[1] == "conv1" and t["layers"][-1]["bottleneck"] == "default"
    assert sum(r["params"] for r in t["layers"]) == t["total_params"] == 3_228_864
    assert t["trainable_params"] + t["non_trainable_params"] == t["total_params"]
    text = filters.format_layer_table(t)
    assert "conv_pw_13_relu **" in text and "(None, 1, 1, 1024)" in text and "3,228,864" in text

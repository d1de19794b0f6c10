"""Hostile feature files: each is refused by `bneck train` and `bneck info` (exit 1, naming the file), unchanged.

The files are small bneck feature files (tests/feature_files.py) with one thing made wrong, as
someone could hand them over: attrs of the wrong type or size, a merged (virtual) file whose
sources lie outside its folder, shapes that differ from what the attrs say. Nothing is trained,
no output appears, and the file is not modified. ``HOSTILE`` is counted by summary.py.
"""

from __future__ import annotations

import hashlib
import logging
import os

import h5py
import numpy as np
import pytest

from tests.feature_files import write_feature_file

#: Kinds of hostile feature file tried (counted in docs/reliability.md via summary.py).
HOSTILE = ["input_size attr a string", "input_size attr of three numbers", "format_version attr a string",
           "pooling attr not none/avg/max", "attr of 2 million elements",
           "virtual dataset reading an absolute path outside the merge's folder",
           "virtual dataset reading ../ outside the merge's folder",
           "features rows differ from the feature_shape attr", "pooling avg but feature maps stored",
           "labels beyond class_names", "row_start/row_stop disagree with the rows"]


def _edit(path, **attrs):
    with h5py.File(path, "a") as f:
        for k, v in attrs.items():
            f.attrs[k] = v


def _virtual(path, source, name):
    """A merged-looking file at ``path`` whose every dataset maps all rows of ``source`` by the name ``name``."""
    with h5py.File(source, "r") as src, h5py.File(path, "w") as f:
        for ds in src:
            d = src[ds]
            layout = h5py.VirtualLayout(shape=d.shape, dtype=d.dtype)
            layout[...] = h5py.VirtualSource(name, ds, shape=d.shape, dtype=d.dtype)
            f.create_virtual_dataset(ds, layout, fillvalue=None)
        for k, v in src.attrs.items():
            f.attrs[k] = v
        f.attrs["virtual"] = True


def _hostile(tmp_path) -> dict:
    files = {}

    def new(name, **kw):
        p = tmp_path / "in" / name
        p.parent.mkdir(exist_ok=True)
        write_feature_file(p, n=12, **kw)
        return p

    files["input_size attr a string"] = (new("size_str.h5", input_size="224"), "attr 'input_size' must be")
    files["input_size attr of three numbers"] = (new("size3.h5", input_size=np.array([32, 32, 3])),
                                                 "attr 'input_size' must be")
    files["format_version attr a string"] = (new("ver_str.h5", format_version="1; rm -rf /"),
                                             "attr 'format_version' must be")
    files["pooling attr not none/avg/max"] = (new("pool.h5", pooling="__import__('os')"), "attr 'pooling' must be")
    small = new("small.h5")
    p = tmp_path / "in" / "huge.h5"
    with h5py.File(small, "r") as src, h5py.File(p, "w", libver="latest") as f:  # latest: dense attr storage
        for name in src:
            src.copy(name, f)
        for k, v in src.attrs.items():
            f.attrs[k] = v
        f.attrs["junk"] = np.zeros(2_000_000, np.uint8)
    os.remove(small)
    files["attr of 2 million elements"] = (p, "attr 'junk' is too large")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    write_feature_file(outside / "secret.h5", n=12)
    p = tmp_path / "in" / "vds_abs.h5"
    _virtual(p, outside / "secret.h5", str(outside / "secret.h5"))
    files["virtual dataset reading an absolute path outside the merge's folder"] = (p, "outside the merged file's")
    p = tmp_path / "in" / "vds_up.h5"
    _virtual(p, outside / "secret.h5", "../elsewhere/secret.h5")
    files["virtual dataset reading ../ outside the merge's folder"] = (p, "outside the merged file's")
    files["features rows differ from the feature_shape attr"] = (
        new("fshape.h5", shape=(3, 3, 4), feature_shape=np.array([7, 7, 4])), "attr feature_shape is")
    files["pooling avg but feature maps stored"] = (new("avgmaps.h5", shape=(3, 3, 4), pooling="avg"),
                                                    "not vectors")
    p = new("labels.h5", n_classes=3)
    with h5py.File(p, "a") as f:
        f["labels"][0] = 9
    files["labels beyond class_names"] = (p, "3 class_names")
    files["row_start/row_stop disagree with the rows"] = (new("rows.h5", row_stop=500), "attrs row_start/row_stop")
    assert list(files) == HOSTILE
    return files


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize("command", ["train", "info"])
def test_hostile_feature_files_are_refused(command, tmp_path, caplog):
    from pipeline.cli.main import main

    caplog.set_level(logging.ERROR, logger="bneck")
    for kind, (path, needle) in _hostile(tmp_path).items():
        caplog.clear()
        before = _digest(path)
        out = tmp_path / f"m_{path.stem}"
        argv = ["train", str(path), "-o", str(out), "--head", "logreg"] if command == "train" else ["info", str(path)]
        assert main(argv) == 1, kind
        assert needle in caplog.text and str(path) in caplog.text, (kind, caplog.text)
        assert not out.exists() and _digest(path) == before, kind


def test_merge_refuses_hostile_shards_and_writes_no_vds_reading_outside(tmp_path):
    from features.merge import MergeError, merge

    shards = []
    for i in range(2):
        p = tmp_path / "sh" / f"p.shard-{i:05d}-of-00002.h5"
        p.parent.mkdir(exist_ok=True)
        write_feature_file(p, n=6, shard=f"{i}/2", row_start=6 * i, row_stop=6 * i + 6, n_rows=12,
                           settings_json="{}")
        shards.append(str(p))
    with pytest.raises(MergeError, match="not in the output's folder .*--copy"):
        merge(shards, str(tmp_path / "out" / "m.h5"), progress=False)
    _edit(shards[1], input_size="big")
    with pytest.raises(MergeError, match=r"shard-00001-of-00002\.h5: attr 'input_size' must be"):
        merge(shards, str(tmp_path / "sh" / "m.h5"), progress=False)
    assert sorted(os.listdir(tmp_path / "sh")) == sorted(os.path.basename(s) for s in shards)
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")

"""A refused rerun says in words what changed (issue 22, item 5), and the mistakes of that item fail early."""

import os
import shutil

import pytest

from features.config import ExtractConfig
from features.reader.errors import SourceError
from features.reader.sources import read_source
from features.runner import extract
from features.writer.changes import SourceView, explain
from features.writer.finished import StoreError, partial_dir
from tests.imagefolders import make_class_folder

KW = dict(backbone="mobilenet", input_size="32", weights="none", seed=5, batch_size=4, progress=False,
          precision="fp32", store_dtype="float32", max_bad_fraction=0.5)


def _view(m, root):
    return SourceView(m, 0, len(m), data=str(root), image_root=m.root)


def test_settings_are_named_in_words():
    old = {"backbone": "vgg16", "input_size": [224, 224], "weights": "imagenet", "weights_sha256": "a" * 64, "seed": 0}
    new = {"backbone": "mobilenet", "input_size": [96, 96], "weights": "none(seed=0)", "weights_sha256": "", "seed": 0}
    assert explain(old, new) == ["backbone: vgg16 -> mobilenet", "input size: 224x224 -> 96x96",
                                 "weights: imagenet -> none(seed=0)"]
    # Random weights name their seed: one line says it.
    assert explain({"seed": 1, "weights": "none(seed=1)"}, {"seed": 2, "weights": "none(seed=2)"}) == ["seed: 1 -> 2"]


def test_source_changes_are_named_in_words(tmp_path):
    make_class_folder(tmp_path / "a", classes=("cats", "dogs"), per_class=3)
    m = read_source(str(tmp_path / "a"))
    view = _view(m, tmp_path / "a")
    view.save(str(tmp_path))
    from features.writer.changes import saved_source

    old = saved_source(str(tmp_path))
    fp = {"source_fingerprint": "x"}
    os.utime(tmp_path / "a" / "cats" / "img001.png", ns=(0, 10**9))
    os.utime(tmp_path / "a" / "dogs" / "img002.png", ns=(0, 10**9))
    changed = read_source(str(tmp_path / "a"))
    assert explain(fp, {"source_fingerprint": "y"}, old, _view(changed, tmp_path / "a")) == [
        "source: 2 files changed (first: cats/img001.png)"]
    (tmp_path / "a" / "dogs" / "img009.png").write_bytes(b"x")
    grown = read_source(str(tmp_path / "a"))
    assert explain(fp, {"source_fingerprint": "y"}, old, _view(grown, tmp_path / "a")) == ["source: 6 rows -> 7 rows"]
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    os.remove(tmp_path / "b" / "dogs" / "img009.png")
    moved = read_source(str(tmp_path / "b"))
    lines = explain(fp, {"source_fingerprint": "y"}, old, _view(moved, tmp_path / "b"))
    assert lines[:2] == [f"data: {tmp_path / 'a'} -> {tmp_path / 'b'}",
                         f"image root: {tmp_path / 'a'} -> {tmp_path / 'b'}"]
    assert lines[2:] == ["source: 2 files changed (first: cats/img001.png)"]  # copytree kept the others' mtimes


def test_a_class_folder_whose_name_is_not_utf8_is_described(tmp_path):
    # POSIX names are bytes: b"caf\xe9" comes back as a lone surrogate, which has no strict UTF-8 encoding.
    make_class_folder(tmp_path / "a", classes=("dogs",), per_class=2)
    os.rename(tmp_path / "a" / "dogs", os.fsdecode(os.fsencode(tmp_path / "a") + b"/caf\xe9"))
    m = read_source(str(tmp_path / "a"))
    assert m.class_names == [os.fsdecode(b"caf\xe9")]
    _view(m, tmp_path / "a").save(str(tmp_path))
    from features.writer.changes import saved_source

    assert len(saved_source(str(tmp_path))["digests"]["labels"]) == 2


def test_groups_given_since_are_named(tmp_path):
    (tmp_path / "d.csv").write_text("path,label,subject\na.png,cat,7\nb.png,dog,8\n")
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"x")
    plain = read_source(str(tmp_path / "d.csv"))
    _view(plain, tmp_path).save(str(tmp_path))
    from features.writer.changes import saved_source

    grouped = read_source(str(tmp_path / "d.csv"), group_column="subject")
    lines = explain({"source_fingerprint": "x"}, {"source_fingerprint": "y"}, saved_source(str(tmp_path)),
                    _view(grouped, tmp_path))
    assert lines == ["source: groups added (by subject)"]


def _places(tmp_path, n=6):
    """A Places365 list whose names live in images/, not beside the list."""
    make_class_folder(tmp_path / "images", classes=("x",), per_class=n)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "val.txt").write_text("".join(f"x/img{i:03d}.png {i % 2}\n" for i in range(n)))
    (tmp_path / "lists" / "cats.txt").write_text("/a/airfield 0\n/b/beach 1\n")
    return str(tmp_path / "lists" / "val.txt"), {"categories": str(tmp_path / "lists" / "cats.txt")}


@pytest.mark.slow  # three small extractions
def test_the_places365_mistake_fails_early_and_is_cheap_to_fix(tmp_path):
    data, src = _places(tmp_path)
    out = tmp_path / "p.h5"
    # Without --image-root: refused before any backbone work, naming where it looked; nothing is left behind.
    with pytest.raises(SourceError, match=rf"6 of 6 image files are missing: looked under {tmp_path / 'lists'} "
                                          r".*pass --image-root DIR"):
        extract(ExtractConfig(data=data, output=str(out), source=src, **KW))
    assert not os.path.exists(partial_dir(str(out)))
    # A partial run without one valid row (every image broken) is replaced by the corrected command.
    shutil.copytree(tmp_path / "images", tmp_path / "broken")
    for name in os.listdir(tmp_path / "broken" / "x"):
        (tmp_path / "broken" / "x" / name).write_bytes(b"not a png")
    with pytest.raises(Exception, match="could not be decoded"):
        extract(ExtractConfig(data=data, output=str(out), source={**src, "image_root": str(tmp_path / "broken")},
                              **KW))
    assert os.path.isdir(partial_dir(str(out)))
    good = {**src, "image_root": str(tmp_path / "images")}
    assert extract(ExtractConfig(data=data, output=str(out), source=good, **KW)).computed == 6
    # A finished file with valid rows is kept: a changed rerun is refused, saying what changed, until --overwrite.
    shutil.copytree(tmp_path / "images", tmp_path / "copy", copy_function=shutil.copy)  # new mtimes
    other = {**src, "image_root": str(tmp_path / "copy")}
    with pytest.raises(StoreError, match=rf"image root: {tmp_path / 'images'} -> {tmp_path / 'copy'}; source: the "
                                         r"files changed \(sizes or modification times\)\); use --overwrite"):
        extract(ExtractConfig(data=data, output=str(out), source=other, **KW))
    with pytest.raises(StoreError, match=r"backbone: mobilenet -> mobilenetv2"):
        extract(ExtractConfig(data=data, output=str(out), source=good, **{**KW, "backbone": "mobilenetv2"}))
    assert extract(ExtractConfig(data=data, output=str(out), source=other, overwrite=True, **KW)).computed == 6

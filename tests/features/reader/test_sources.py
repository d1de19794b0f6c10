"""Source readers: row order, hidden files, structural errors with file:line, kept bad rows."""

import os

import numpy as np
import pytest

from features.keypoints import KAGGLE_KEYPOINTS
from features.reader.sources import SOURCES, SourceError, read_source


def _touch(path, data=b"img"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# ---------------------------------------------------------------- folder

def test_folder_order_hidden_and_empty(tmp_path):
    data = tmp_path / "DATA"
    for rel in ["cat/b.jpg", "cat/a.jpg", "cat/sub/z.jpg", "cat/sub-x/y.jpg", "cat/sub/deep/w.jpg", "dog/10.png",
                "dog/2.png", "cat/.hidden.jpg", "cat/.cache/c.jpg", ".secret/x.jpg", "notes.txt"]:
        _touch(data / rel)
    (data / "empty").mkdir()
    os.mkfifo(data / "dog" / "pipe")
    with pytest.warns(UserWarning, match="empty"):
        m = read_source(str(data))
    assert m.kind == "folder" and m.task == "classification"
    assert m.class_names == ["cat", "dog", "empty"]
    # Keras order: directories sorted by full path string ('-' < '/'), files by name.
    assert m.paths == ["cat/a.jpg", "cat/b.jpg", "cat/sub/z.jpg", "cat/sub-x/y.jpg",
                       "cat/sub/deep/w.jpg", "dog/10.png", "dog/2.png"]
    assert m.labels.tolist() == [0, 0, 0, 0, 0, 1, 1]
    assert m.row_errors == {}
    with pytest.warns(UserWarning, match="'empty'"):
        assert read_source(str(data)).paths == m.paths  # deterministic


def test_folder_non_utf8_name_kept(tmp_path):
    data = tmp_path / "DATA"
    (data / "a").mkdir(parents=True)
    raw = os.path.join(os.fsencode(str(data / "a")), b"bad\xff.png")
    with open(raw, "wb") as f:
        f.write(b"img")
    m = read_source(str(data))
    assert m.paths == ["a/" + os.fsdecode(b"bad\xff.png")]
    assert os.path.isfile(m.source(0)) and m.row_errors == {}
    assert len(m.fingerprint()) == 64


def test_folder_without_classes_names_dir(tmp_path):
    _touch(tmp_path / "flat" / "a.png")
    with pytest.raises(SourceError, match="flat.*no class subfolders"):
        read_source(str(tmp_path / "flat"), kind="folder")
    assert read_source(str(tmp_path / "flat")).kind == "images"  # auto: a flat folder is unlabelled images


def test_folder_broken_link_is_missing_row(tmp_path):
    data = tmp_path / "DATA"
    _touch(data / "a" / "1.png")
    os.symlink(tmp_path / "nowhere.png", data / "a" / "2.png")
    m = read_source(str(data))
    assert m.paths == ["a/1.png", "a/2.png"] and m.row_errors == {1: "missing"}


# ---------------------------------------------------------------- csv

def test_csv_labels(tmp_path):
    _touch(tmp_path / "img" / "a.png")
    _touch(tmp_path / "img" / "b.png")
    (tmp_path / "d.csv").write_text("filename,label\nimg/a.png,dog\nimg/b.png,cat\nimg/gone.png,dog\n")
    m = read_source(str(tmp_path / "d.csv"))
    assert m.kind == "csv" and m.class_names == ["cat", "dog"]
    assert m.labels.tolist() == [1, 0, 1]
    assert m.paths == ["img/a.png", "img/b.png", "img/gone.png"]
    assert m.row_errors == {2: "missing"}
    assert m.source(0) == os.path.join(str(tmp_path), "img/a.png")


def test_csv_integer_labels_sort_numerically(tmp_path):
    (tmp_path / "d.csv").write_text("path,class\na,10\nb,2\nc,1\n")
    m = read_source(str(tmp_path / "d.csv"))
    assert m.class_names == ["1", "2", "10"] and m.labels.tolist() == [2, 1, 0]


def test_csv_regression(tmp_path):
    _touch(tmp_path / "a.png")
    _touch(tmp_path / "b.png")
    (tmp_path / "r.csv").write_text("path,note,age,score\na.png,hi,3,0.5\nb.png,yo,,\n")
    m = read_source(str(tmp_path / "r.csv"))
    assert m.task == "regression" and m.target_names == ["age", "score"]
    assert m.targets.dtype == np.float32 and m.targets.shape == (2, 2)
    assert m.targets[0].tolist() == [3.0, 0.5] and np.isnan(m.targets[1]).all()
    assert m.row_errors == {1: "no_targets"}
    m2 = read_source(str(tmp_path / "r.csv"), target_columns=["score"])
    assert m2.target_names == ["score"]


def test_csv_group_column(tmp_path):
    (tmp_path / "d.csv").write_text("path,label,subject\na,cat,7\nb,cat,7\nc,dog,8\n")
    m = read_source(str(tmp_path / "d.csv"), group_column="subject")
    assert m.groups == ["7", "7", "8"] and m.group_by == "subject" and m.class_names == ["cat", "dog"]
    assert read_source(str(tmp_path / "d.csv")).groups is None  # never detected
    # Regression: the group column is no target, though it holds numbers.
    (tmp_path / "r.csv").write_text("path,subject,age\na,7,3\nb,8,4\n")
    r = read_source(str(tmp_path / "r.csv"), group_column="subject")
    assert r.target_names == ["age"] and r.groups == ["7", "8"]
    with pytest.raises(SourceError, match="both a target and the group column"):
        read_source(str(tmp_path / "r.csv"), group_column="age", target_columns=["age"])
    with pytest.raises(SourceError, match="'path' cannot be both the path and the group column"):
        read_source(str(tmp_path / "d.csv"), group_column="path")
    with pytest.raises(SourceError, match="'label' cannot be both the label and the group column"):
        read_source(str(tmp_path / "d.csv"), group_column="label")
    with pytest.raises(SourceError, match=r"d\.csv: no group column 'who'"):
        read_source(str(tmp_path / "d.csv"), group_column="who")
    (tmp_path / "e.csv").write_text("path,label,subject\na,cat,7\nb,cat,\n")
    with pytest.raises(SourceError, match=r"e\.csv:3: empty value in group column 'subject'"):
        read_source(str(tmp_path / "e.csv"), group_column="subject")
    # The fingerprint covers the groups: the same rows without them are another source.
    assert m.fingerprint() != read_source(str(tmp_path / "d.csv")).fingerprint()


@pytest.mark.parametrize("text, pattern", [
    ("file,video\n", r"\.bneck-groups\.csv:1: expected the header 'path,<group column>'"),
    ("path,video\na/1.png,v1\na/1.png,v2\n", r"\.bneck-groups\.csv:3: 'a/1\.png' is listed twice"),
    ("path,video\na/1.png,\n", r"\.bneck-groups\.csv:2: expected 'path,video' with both values"),
    ("path,video\na/1.png,v1\n", r"1 of the 2 images are not listed \('b/2\.png'\)"),
    ("path,\n", r"group column must have a printable name"),
])
def test_folder_groups_file_errors_name_file_and_line(tmp_path, text, pattern):
    _touch(tmp_path / "d" / "a" / "1.png")
    _touch(tmp_path / "d" / "b" / "2.png")
    (tmp_path / "d" / ".bneck-groups.csv").write_text(text)
    with pytest.raises(SourceError, match=pattern):
        read_source(str(tmp_path / "d"))


def test_folder_groups_file_extra_lines_are_ignored(tmp_path):
    _touch(tmp_path / "d" / "a" / "1.png")
    (tmp_path / "d" / ".bneck-groups.csv").write_text("path,scene\na/1.png,s1\na/deleted.png,s1\n")
    m = read_source(str(tmp_path / "d"))
    assert m.kind == "folder" and m.groups == ["s1"] and m.group_by == "scene" and m.paths == ["a/1.png"]


def test_folder_groups_file_keeps_names_as_written(tmp_path):
    # A flat frames folder of " walk.mp4" writes " walk/ walk_000000.jpg": a name's spaces are part of it.
    from features.reader.groups import write_groups_file

    _touch(tmp_path / "d" / " walk" / " walk_000000.jpg")
    write_groups_file(tmp_path / "d", [(" walk/ walk_000000.jpg", " walk")], by="video")
    m = read_source(str(tmp_path / "d"))
    assert m.paths == [" walk/ walk_000000.jpg"] and m.groups == ["walk"]
    (tmp_path / "d" / ".bneck-groups.csv").write_bytes(b'path,video\n"a\n')  # an open quote to the end
    with pytest.raises(SourceError, match=r"\.bneck-groups\.csv:\d+: (not a readable CSV line|expected)"):
        read_source(str(tmp_path / "d"))


@pytest.mark.parametrize("text, kwargs, pattern", [
    ("path,age\na.png,3\nb.png,old\n", {}, r"r\.csv:3: column 'age'.*not a number"),
    ("name,age\na.png,3\n", {}, r"r\.csv: no path column"),
    ("path,age\na.png,3\n", {"target_columns": ["weight"]}, r"r\.csv: no target column 'weight'"),
    ("path,label\na.png,x\nb.png\n", {}, r"r\.csv:3: 1 fields"),
    ("path,label\na.png,x\n,y\n", {}, r"r\.csv:3: empty value in path column"),
    ("", {}, r"r\.csv: empty CSV"),
    ("path,label\n", {}, r"r\.csv: .*no data rows"),
    ("path,note\na.png,hi\n", {}, r"r\.csv: no label column"),
    # A lone *_x (or *_y) is half a point, detected or given, as the Kaggle, tar and parquet readers say.
    ("path,nose_tip_x,left_eye_x,left_eye_y\na.png,1,2,3\n", {},
     r"r\.csv: keypoint column 'nose_tip_x' has no matching 'nose_tip_y'"),
    ("path,a_x,a_y,b_Y\na.png,1,2,3\n", {"target_columns": ["a_x", "b_Y"]},
     r"r\.csv: keypoint column 'a_x' has no matching 'a_y'"),
    ("path,a_x,a_y,b_Y\na.png,1,2,3\n", {}, r"r\.csv: keypoint column 'b_Y' has no matching 'b_X'"),
])
def test_csv_structural_errors(tmp_path, text, kwargs, pattern):
    (tmp_path / "r.csv").write_text(text)
    with pytest.raises(SourceError, match=pattern):
        read_source(str(tmp_path / "r.csv"), **kwargs)


def test_unknown_option_and_kind_rejected(tmp_path):
    (tmp_path / "d.csv").write_text("path,label\na,b\n")
    with pytest.raises(SourceError, match="categories"):
        read_source(str(tmp_path / "d.csv"), categories="x.txt")
    with pytest.raises(SourceError, match="unknown source kind"):
        read_source(str(tmp_path / "d.csv"), kind="zip")
    with pytest.raises(SourceError, match="no such file"):
        read_source(str(tmp_path / "nope.csv"))
    assert {"folder", "csv", "kaggle_keypoints", "places365", "images", "list", "webdataset",
            "parquet"} <= set(SOURCES)
    (tmp_path / "cls").mkdir()
    with pytest.raises(SourceError, match="--label-column do not apply to a folder source"):
        read_source(str(tmp_path), label_column="y")


@pytest.mark.parametrize("kind", ["csv", "kaggle_keypoints", "places365"])
def test_a_file_kind_on_a_directory_and_back_is_named(tmp_path, kind):
    (tmp_path / "d.csv").write_text("path,label\na,b\n")
    with pytest.raises(SourceError, match=f"--source-kind {kind} reads a file, and this is a directory"):
        read_source(str(tmp_path), kind=kind)
    with pytest.raises(SourceError, match="--source-kind folder reads a directory of class folders, and this is a f"):
        read_source(str(tmp_path / "d.csv"), kind="folder")


# ---------------------------------------------------------------- kaggle

def _kaggle_row(values, pixels):
    cells = ["" if v is None else f"{v:.4f}" for v in values]
    return ",".join(cells + [" ".join(map(str, pixels))])


def test_kaggle_keeps_partial_rows(tmp_path, rng):
    px = rng.integers(0, 256, (3, 96 * 96))
    full = list(np.linspace(10, 80, 30))
    partial = [v if k < 4 else None for k, v in enumerate(full)]
    lines = [",".join(KAGGLE_KEYPOINTS) + ",Image", _kaggle_row(full, px[0]),
             _kaggle_row(partial, px[1]), _kaggle_row([None] * 30, px[2])]
    (tmp_path / "training.csv").write_text("\n".join(lines) + "\n")
    m = read_source(str(tmp_path / "training.csv"))
    assert m.kind == "kaggle_keypoints" and m.task == "regression"
    assert m.target_names == list(KAGGLE_KEYPOINTS) and m.targets.shape == (3, 30)
    assert np.allclose(m.targets[0], full, atol=1e-4)
    assert np.isnan(m.targets[1, 4:]).all() and not np.isnan(m.targets[1, :4]).any()
    assert m.row_errors == {2: "no_targets"}
    assert m.paths == ["training.csv#row=0", "training.csv#row=1", "training.csv#row=2"]
    assert m.inline.shape == (3, 96, 96) and m.inline.dtype == np.uint8
    assert np.array_equal(m.source(1).ravel(), px[1])


def test_kaggle_test_form(tmp_path):
    (tmp_path / "test.csv").write_text("ImageId,Image\n1," + " ".join(["7"] * 9216) + "\n")
    m = read_source(str(tmp_path / "test.csv"))
    assert m.kind == "kaggle_keypoints" and m.targets is None and m.task == "none"
    assert (m.inline == 7).all() and m.row_errors == {}


@pytest.mark.parametrize("image, pattern", [
    (" ".join(["1"] * 9215), r"k\.csv:3: Image has 9215 pixels, expected 9216"),
    (" ".join(["1"] * 9215 + ["x"]), r"k\.csv:3: Image .*not an integer"),
    (" ".join(["1"] * 9215 + ["300"]), r"k\.csv:3: .*0\.\.255"),
])
def test_kaggle_bad_image_names_line(tmp_path, image, pattern):
    good = " ".join(["0"] * 9216)
    (tmp_path / "k.csv").write_text(f"a_x,a_y,Image\n1,2,{good}\n1,2,{image}\n")
    with pytest.raises(SourceError, match=pattern):
        read_source(str(tmp_path / "k.csv"))


def test_kaggle_bad_keypoint_names_column(tmp_path):
    good = " ".join(["0"] * 16)
    (tmp_path / "k.csv").write_text(f"a_x,a_y,Image\n1,2,{good}\n1,zz,{good}\n")
    with pytest.raises(SourceError, match=r"k\.csv:3: column 'a_y'"):
        read_source(str(tmp_path / "k.csv"))


# ---------------------------------------------------------------- places365

def _places(tmp_path, listing):
    (tmp_path / "categories.txt").write_text("/a/airfield 0\n/b/bakery/shop 1\n\n/a/alley 2\n")
    (tmp_path / "val.txt").write_text(listing)
    _touch(tmp_path / "Places365_val_00000001.jpg")
    return str(tmp_path / "val.txt"), str(tmp_path / "categories.txt")


def test_places365(tmp_path):
    listing, cats = _places(tmp_path, "Places365_val_00000001.jpg 2\n\nPlaces365_val_00000002.jpg 0\n")
    m = read_source(listing, categories=cats)
    assert m.kind == "places365" and m.class_names == ["/a/airfield", "/b/bakery/shop", "/a/alley"]
    assert m.paths == ["Places365_val_00000001.jpg", "Places365_val_00000002.jpg"]
    assert m.labels.tolist() == [2, 0] and m.row_errors == {1: "missing"}
    # train-style list: leading slash means "under the image root"
    (tmp_path / "train.txt").write_text("/a/airfield/00000001.jpg 0\n")
    _touch(tmp_path / "imgs" / "a" / "airfield" / "00000001.jpg")
    t = read_source(str(tmp_path / "train.txt"), categories=cats, image_root=str(tmp_path / "imgs"))
    assert t.paths == ["a/airfield/00000001.jpg"] and t.row_errors == {}


def test_places365_errors(tmp_path):
    listing, cats = _places(tmp_path, "Places365_val_00000001.jpg 0\nPlaces365_val_00000002.jpg 7\n")
    with pytest.raises(SourceError, match=r"val\.txt:2: unknown label id 7"):
        read_source(listing, categories=cats)
    with pytest.raises(SourceError, match="categories"):
        read_source(listing)
    (tmp_path / "val.txt").write_text("Places365_val_00000001.jpg zero\n")
    with pytest.raises(SourceError, match=r"val\.txt:1: expected"):
        read_source(listing, categories=cats)


def test_a_pathlib_path_is_read_like_its_string(tmp_path):
    import pathlib

    from features.reader.sources import read_source
    from tests.imagefolders import make_class_folder

    make_class_folder(tmp_path / "d", per_class=2)
    as_path, as_str = read_source(pathlib.Path(tmp_path / "d")), read_source(str(tmp_path / "d"))
    assert as_path.paths == as_str.paths and as_path.kind == as_str.kind == "folder"

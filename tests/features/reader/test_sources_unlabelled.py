"""Unlabelled sources (task none): flat and recursive folders, path lists, path-only CSVs, Kaggle test.csv."""

import os

import pytest

from features.reader.errors import SourceError
from features.reader.sources import read_source


def _touch(path, data=b"img"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_flat_folder_hidden_skipped_and_recursive(tmp_path):
    for rel in ["b.jpg", "a.png", ".hidden.png", "sub/c.png", ".cache/d.png", "sub/.e.png"]:
        _touch(tmp_path / "photos" / rel)
    m = read_source(str(tmp_path / "photos"))
    assert m.kind == "images" and m.task == "none" and m.paths == ["a.png", "b.jpg"]
    assert m.labels is None and m.targets is None and m.row_errors == {}
    deep = read_source(str(tmp_path / "photos"), recursive=True)
    assert deep.paths == ["a.png", "b.jpg", os.path.join("sub", "c.png")]
    assert deep.fingerprint() != m.fingerprint()


def test_recursive_overrides_class_folders_and_empty_folders_are_named(tmp_path):
    _touch(tmp_path / "d" / "x" / "1.png")
    assert read_source(str(tmp_path / "d")).kind == "folder"
    assert read_source(str(tmp_path / "d"), recursive=True).task == "none"
    with pytest.raises(SourceError, match=r"d: no image files found \(its subfolders hold files: pass --recursive"):
        read_source(str(tmp_path / "d"), kind="images")
    with pytest.raises(SourceError, match="--recursive do not apply to a csv source"):
        _touch(tmp_path / "p.csv", b"path\na.png\n")
        read_source(str(tmp_path / "p.csv"), recursive=True)


def test_list_file_of_paths_and_a_places365_test_list(tmp_path):
    _touch(tmp_path / "img" / "a.png")
    (tmp_path / "l.txt").write_text("# test images\nimg/a.png\n\nimg/gone.png\n")
    m = read_source(str(tmp_path / "l.txt"))
    assert m.kind == "list" and m.task == "none" and m.paths == ["img/a.png", "img/gone.png"]
    assert m.row_errors == {1: "missing"}
    (tmp_path / "test.txt").write_text("Places365_test_00000001.jpg\nPlaces365_test_00000002.jpg\n")
    t = read_source(str(tmp_path / "test.txt"), image_root=str(tmp_path / "img"))
    assert t.kind == "list" and t.root == str(tmp_path / "img") and t.row_errors == {0: "missing", 1: "missing"}
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(SourceError, match=r"empty\.txt: the list file has no entries"):
        read_source(str(tmp_path / "empty.txt"))


def test_csv_with_only_a_path_column(tmp_path):
    _touch(tmp_path / "a.png")
    (tmp_path / "p.csv").write_text("filename\na.png\nb.png\n")
    m = read_source(str(tmp_path / "p.csv"))
    assert m.kind == "csv" and m.task == "none" and m.paths == ["a.png", "b.png"] and m.row_errors == {1: "missing"}


def test_kaggle_test_csv_is_unlabelled_and_a_lone_coordinate_is_refused(tmp_path):
    px = " ".join(["7"] * 9216)
    (tmp_path / "test.csv").write_text(f"ImageId,Image\n1,{px}\n2,{px}\n")
    m = read_source(str(tmp_path / "test.csv"))
    assert m.kind == "kaggle_keypoints" and m.task == "none" and m.inline.shape == (2, 96, 96)
    (tmp_path / "train.csv").write_text(f"nose_tip_x,left_eye_center_x,left_eye_center_y,Image\n1,2,3,{px}\n")
    with pytest.raises(SourceError, match=r"train\.csv: keypoint column 'nose_tip_x' has no matching 'nose_tip_y'"):
        read_source(str(tmp_path / "train.csv"))


def test_most_files_missing_is_refused_naming_where_they_were_sought(tmp_path):
    from features.reader.sources import check_found

    _touch(tmp_path / "img" / "a.png")
    (tmp_path / "l.txt").write_text("a.png\nb.png\nc.png\n")
    m = read_source(str(tmp_path / "l.txt"))  # the list's folder holds none of them
    with pytest.raises(SourceError, match=r"l\.txt: 3 of 3 image files are missing: looked under .*"
                                          r"\(e\.g\. .*a\.png\); if the images live elsewhere, pass --image-root"):
        check_found(str(tmp_path / "l.txt"), m)
    (tmp_path / "l.txt").write_text("a.png\nb.png\na.png\n")
    one_of_three = read_source(str(tmp_path / "l.txt"), image_root=str(tmp_path / "img"))
    assert one_of_three.row_errors == {1: "missing"}
    check_found(str(tmp_path / "l.txt"), one_of_three)  # a row problem: kept, marked, the run goes on

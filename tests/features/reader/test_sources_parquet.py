"""Parquet with an image column: Hugging Face {bytes, path} structs or plain bytes, labels, targets, row groups."""

import json

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from features import images  # noqa: E402
from features.reader.errors import SourceError  # noqa: E402
from features.reader.sources import read_source  # noqa: E402
from tests.datafiles import png_bytes, write_parquet  # noqa: E402


def test_struct_images_string_labels_across_row_groups(tmp_path):
    write_parquet(tmp_path / "d.parquet", n=7, row_group_size=3)
    m = read_source(str(tmp_path / "d.parquet"))
    assert m.kind == "parquet" and m.task == "classification"
    assert m.paths == [f"d.parquet#row={i}" for i in range(7)]
    assert m.class_names == ["cat", "dog", "eel"] and m.labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    for i in (0, 3, 6):  # one row of each row group
        np.testing.assert_array_equal(images.load_rgb(m.source(i)), images.load_rgb(png_bytes(i)))
    assert read_source(str(tmp_path / "d.parquet")).fingerprint() == m.fingerprint()


def test_plain_bytes_no_label_is_task_none(tmp_path):
    write_parquet(tmp_path / "d.parquet", n=3, struct=False, labels=False)
    m = read_source(str(tmp_path / "d.parquet"))
    assert m.task == "none" and len(m) == 3
    assert images.decode(m.source(2), (32, 32))[2] == ""


def test_targets_and_a_folder_of_files(tmp_path):
    (tmp_path / "data").mkdir()
    for k in range(2):
        write_parquet(tmp_path / "data" / f"train-{k:05d}-of-00002.parquet", n=3, labels=False, seed=10 * k,
                      nose_x=[1.0, None, 3.0], nose_y=[2.0, None, 4.0])
    m = read_source(str(tmp_path), target_columns=["nose_x", "nose_y"])
    assert m.kind == "parquet" and m.task == "regression" and len(m) == 6
    assert m.paths[3] == "train-00001-of-00002.parquet#row=0"
    assert m.row_errors == {1: "no_targets", 4: "no_targets"}
    with pytest.raises(SourceError, match="keypoint column 'nose_x' has no matching 'nose_y'"):
        read_source(str(tmp_path), target_columns=["nose_x"])


def test_hugging_face_classlabel_names_are_kept(tmp_path):
    table = pa.table({"image": [{"bytes": png_bytes(i), "path": None} for i in range(3)], "label": [2, 0, 1]})
    hf = {"info": {"features": {"label": {"names": ["zebra", "ant", "moth"], "_type": "ClassLabel"}}}}
    table = table.replace_schema_metadata({b"huggingface": json.dumps(hf).encode()})
    pq.write_table(table, str(tmp_path / "d.parquet"))
    m = read_source(str(tmp_path / "d.parquet"))
    assert m.class_names == ["zebra", "ant", "moth"] and m.labels.tolist() == [2, 0, 1]


def test_path_only_structs_read_the_file_and_bad_cells_get_reasons(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png_bytes(1))
    cells = [{"bytes": None, "path": "img/a.png"}, {"bytes": None, "path": "img/gone.png"},
             {"bytes": b"<html>no</html>", "path": None}, {"bytes": None, "path": None}]
    pq.write_table(pa.table({"image": cells}), str(tmp_path / "d.parquet"))
    m = read_source(str(tmp_path / "d.parquet"))
    assert [images.decode(m.source(i), (32, 32))[2] for i in range(4)] == ["", "missing", "not_image", "missing"]


@pytest.mark.parametrize("table, kw, pattern", [
    ({"picture": [b"x"]}, {}, r"d\.parquet: no image column"),
    ({"image": [1]}, {}, r"d\.parquet: image column 'image' is int64"),
    ({"image": [b"x"]}, {"label_column": "nope"}, r"d\.parquet: no label column 'nope'"),
    ({"image": [b"x"], "t": ["a"]}, {"target_columns": ["t"]}, r"d\.parquet#row=0: column 't' holds 'a'"),
    ({"image": [b"x", b"y"], "label": ["a", None]}, {}, r"d\.parquet#row=1: the label column 'label' is empty"),
])
def test_structural_errors_name_the_file_and_row(tmp_path, table, kw, pattern):
    pq.write_table(pa.table(table), str(tmp_path / "d.parquet"))
    with pytest.raises(SourceError, match=pattern):
        read_source(str(tmp_path / "d.parquet"), **kw)


def test_not_a_parquet_file(tmp_path):
    (tmp_path / "d.parquet").write_bytes(b"PAR1 but not really")
    with pytest.raises(SourceError, match=r"d\.parquet: not a readable parquet file"):
        read_source(str(tmp_path / "d.parquet"))

"""Broken webdataset tars and parquet files: bad samples keep their rows with a reason code, the rows around
them are kept, and structural problems are refused naming the file and the sample or row.

Read through the same reader and decode path as ``bneck extract`` (``read_source`` + ``images.decode`` per
row), without a backbone: the CLI runs over such files are in tests/e2e/test_cli_datasets.py.
"""

from __future__ import annotations

import tarfile

import pytest

from features import images
from features.reader.errors import SourceError
from features.reader.sources import read_source
from tests.datafiles import png_bytes, write_tar

GOOD = {"png": png_bytes(1), "cls": "0"}


def _cut_inside_last_image(path):
    data = path.read_bytes()
    with tarfile.open(path) as tf:
        last = [m for m in tf.getmembers() if m.name.endswith((".png", ".jpg"))][-1]
    path.write_bytes(data[:last.offset_data + 30])


def _cut_inside_a_header(path):
    data = path.read_bytes()
    with tarfile.open(path) as tf:
        last = tf.getmembers()[-2]
    path.write_bytes(data[:last.offset + 100])


def _garbage_tail(path):
    path.write_bytes(path.read_bytes()[:-1024] + b"\x00garbage" * 50)


#: name -> (samples, damage or None, expected reason per surviving row ("" = decodes)).
TAR_CASES = {
    "image member cut off at the end of the tar": ([("a", GOOD), ("b", GOOD)], _cut_inside_last_image,
                                                   ["", "truncated"]),
    "tar cut inside a member header": ([("a", GOOD), ("b", GOOD), ("c", GOOD)], _cut_inside_a_header, ["", ""]),
    "garbage after the last member": ([("a", GOOD), ("b", GOOD)], _garbage_tail, ["", ""]),
    "sample without an image member": ([("a", GOOD), ("b", {"cls": "1", "txt": "x"}), ("c", GOOD)], None,
                                       ["", "not_image", ""]),
    "html saved as .jpg": ([("a", GOOD), ("b", {"jpg": b"<html></html>", "cls": "1"})], None, ["", "not_image"]),
    "zero-byte image member": ([("a", GOOD), ("b", {"png": b"", "cls": "1"})], None, ["", "empty"]),
    "truncated png inside an intact tar": ([("a", {"png": png_bytes(2)[:-40], "cls": "0"}), ("b", GOOD)], None,
                                           ["truncated", ""]),
    "hidden member (a macOS ._ file)": ([("a", GOOD), ("._b", {"png": b"junk"}), ("c", GOOD)], None, ["", ""]),
}

#: name -> (image cell, expected reason): one bad row between two good ones in a parquet file.
PARQUET_CASES = {
    "html bytes in the image cell": ({"bytes": b"<html></html>", "path": None}, "not_image"),
    "null bytes and null path": ({"bytes": None, "path": None}, "missing"),
    "path to a file that does not exist": ({"bytes": None, "path": "gone.png"}, "missing"),
    "truncated png bytes": ({"bytes": png_bytes(3)[:-40], "path": None}, "truncated"),
    "zero-length bytes": ({"bytes": b"", "path": None}, "empty"),
}

#: name -> (how to write DATA, read_source kwargs, substrings of the error).
STRUCTURAL = {
    "tar: empty file": (lambda p: p.write_bytes(b""), {}, ["a.tar", "empty file, not a tar"]),
    "tar: not a tar": (lambda p: p.write_bytes(b"not a tar" * 200), {}, ["a.tar", "not a tar file"]),
    "tar: gzip-compressed": (lambda p: p.write_bytes(b"\x1f\x8b" + b"\0" * 600), {}, ["a.tar", "gunzip"]),
    "tar: .cls not an integer": (lambda p: write_tar(p, [("k", {"png": png_bytes(0), "cls": "cat"})]), {},
                                 ["a.tar#k", ".cls holds 'cat'"]),
    "tar: some samples without .cls": (
        lambda p: write_tar(p, [("k0", GOOD), ("k1", {"png": png_bytes(0)})]), {}, ["a.tar#k1", "no .cls member"]),
    "tar: --label-key field absent": (lambda p: write_tar(p, [("k", {"png": png_bytes(0), "json": {"a": 1}})]),
                                      {"label_key": "label"}, ["a.tar#k", "no field 'label'"]),
    "tar: json target not a number": (lambda p: write_tar(p, [("k", {"png": png_bytes(0), "json": {"y": "big"}})]),
                                      {"target_columns": ["y"]}, ["a.tar#k", "'y' is 'big', not a number"]),
}


def _reasons(m):
    return [m.row_errors.get(i) or images.decode(m.source(i), (32, 32))[2] for i in range(len(m))]


@pytest.mark.parametrize("name", TAR_CASES)
def test_broken_tar_rows_keep_their_place(tmp_path, name, caplog):
    samples, damage, expected = TAR_CASES[name]
    path = tmp_path / "a.tar"
    write_tar(path, samples)
    if damage:
        damage(path)
    m = read_source(str(path))
    assert _reasons(m) == expected


@pytest.mark.parametrize("name", PARQUET_CASES)
def test_broken_parquet_cells_keep_their_place(tmp_path, name):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    cell, reason = PARQUET_CASES[name]
    good = {"bytes": png_bytes(1), "path": None}
    pq.write_table(pa.table({"image": [good, cell, good]}), str(tmp_path / "d.parquet"), row_group_size=2)
    assert _reasons(read_source(str(tmp_path / "d.parquet"))) == ["", reason, ""]


@pytest.mark.parametrize("name", STRUCTURAL)
def test_structural_problems_are_refused_naming_file_and_sample(tmp_path, name):
    write, kwargs, needles = STRUCTURAL[name]
    write(tmp_path / "a.tar")
    with pytest.raises(SourceError) as err:
        read_source(str(tmp_path / "a.tar"), **kwargs)
    assert all(n in str(err.value) for n in needles), str(err.value)

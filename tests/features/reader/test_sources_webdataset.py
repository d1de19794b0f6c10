"""webdataset tar shards: grouping by key, labels from .cls or json, targets, row ids, cut-off tars, bad members."""

import tarfile

import numpy as np
import pytest

from features import images
from features.reader.errors import SourceError
from features.reader.sources import read_source
from tests.datafiles import png_bytes, write_shards, write_tar

IDS = ["00000.tar#s0k0", "00000.tar#s0k1", "00000.tar#s0k2", "00001.tar#s1k0", "00001.tar#s1k1", "00001.tar#s1k2"]


def _decode_all(m):
    return [images.decode(m.source(i), (32, 32))[2] for i in range(len(m))]


def test_a_directory_a_pattern_and_one_tar(tmp_path):
    files = write_shards(tmp_path / "shards")
    m = read_source(str(tmp_path / "shards"))
    assert m.kind == "webdataset" and m.task == "classification"
    assert m.paths == IDS and m.labels.tolist() == [0, 1, 0, 0, 1, 0] and m.class_names == ["0", "1"]
    assert _decode_all(m) == [""] * 6
    assert read_source(str(tmp_path / "shards" / "{00000..00001}.tar")).paths == IDS
    one = read_source(files[1])
    assert one.paths == IDS[3:] and one.fingerprint() != m.fingerprint()
    assert read_source(str(tmp_path / "shards")).fingerprint() == m.fingerprint()  # deterministic


def test_each_row_decodes_its_own_member(tmp_path):
    write_shards(tmp_path / "shards", seed=5)
    m = read_source(str(tmp_path / "shards"))
    got = images.load_rgb(m.source(4))
    want = images.load_rgb(png_bytes(5 + 10 * 1 + 1))
    np.testing.assert_array_equal(got, want)


def test_label_key_and_targets_from_json(tmp_path):
    write_shards(tmp_path / "shards")
    by_name = read_source(str(tmp_path / "shards"), label_key="name")
    assert by_name.class_names == ["even", "odd"] and by_name.labels.tolist() == [0, 1, 0, 0, 1, 0]
    reg = read_source(str(tmp_path / "shards"), target_columns=["y"])
    assert reg.task == "regression" and reg.targets.ravel().tolist() == [0, 1, 2, 0, 1, 2]
    with pytest.raises(SourceError, match=r"00000\.tar#s0k0: the json has no field 'nope'"):
        read_source(str(tmp_path / "shards"), label_key="nope")
    with pytest.raises(SourceError, match="either --label-key or --target-columns"):
        read_source(str(tmp_path / "shards"), label_key="name", target_columns=["y"])


def test_no_labels_is_task_none(tmp_path):
    write_tar(tmp_path / "a.tar", [(f"x/{k:03d}", {"jpg": png_bytes(k)}) for k in range(3)])
    m = read_source(str(tmp_path / "a.tar"))
    assert m.task == "none" and m.paths == ["a.tar#x/000", "a.tar#x/001", "a.tar#x/002"]


def test_cut_off_tar_keeps_the_rows_before_and_marks_the_cut_one(tmp_path, caplog):
    files = write_shards(tmp_path / "shards")
    data = open(files[0], "rb").read()
    with tarfile.open(files[0]) as tf:
        last_png = [x for x in tf.getmembers() if x.name.endswith(".png")][-1]
    open(files[0], "wb").write(data[:last_png.offset_data + 50])  # inside s0k2's image
    m = read_source(str(tmp_path / "shards"))
    assert m.paths == IDS and m.row_errors == {2: "truncated"}  # the next tar's rows are all there
    assert _decode_all(m) == ["", "", "truncated", "", "", ""]
    assert "breaks off" in caplog.text and "00000.tar" in caplog.text


def _cut_in(path, ext, where):
    """Cut ``path`` in its last ``.ext`` member: halfway into its data, inside its header, or just before it."""
    data = open(path, "rb").read()
    with tarfile.open(path) as tf:
        member = [x for x in tf.getmembers() if x.name.endswith("." + ext)][-1]
    cut = {"data": member.offset_data + member.size // 2, "header": member.offset + 100,
           "boundary": member.offset}[where]
    open(path, "wb").write(data[:cut])


@pytest.mark.parametrize("where", ["data", "header", "boundary"])
@pytest.mark.parametrize("ext, options", [("json", {"label_key": "name"}), ("json", {"target_columns": ["y"]}),
                                          ("cls", {})])
def test_a_tar_cut_off_in_a_label_member_marks_that_row_truncated(tmp_path, caplog, ext, options, where):
    files = write_shards(tmp_path / "shards")  # members png, cls, json: the label comes after the image
    _cut_in(files[0], ext, where)
    m = read_source(str(tmp_path / "shards"), **options)
    assert m.paths == IDS and m.row_errors == {2: "truncated"}  # the cut sample; every other row is kept
    if "target_columns" in options:
        assert m.targets.ravel().tolist()[:2] + m.targets.ravel().tolist()[3:] == [0, 1, 0, 1, 2]
    else:
        assert m.labels.tolist()[:2] + m.labels.tolist()[3:] == [0, 1, 0, 1, 0]
    assert "breaks off" in caplog.text and "00000.tar" in caplog.text


def test_a_tar_cut_between_samples_keeps_the_whole_ones(tmp_path, caplog):
    files = write_shards(tmp_path / "shards")
    _cut_in(files[0], "png", "boundary")  # s0k2 is gone entirely; s0k1 has all its members
    m = read_source(str(tmp_path / "shards"), label_key="name")
    assert m.paths == IDS[:2] + IDS[3:] and m.row_errors == {} and m.labels.tolist() == [0, 1, 0, 1, 0]
    assert "no end-of-archive block" in caplog.text


def test_a_cut_in_a_cls_before_the_image_is_truncated_not_a_missing_image(tmp_path):
    write_tar(tmp_path / "a.tar", [(f"k{k}", {"cls": str(k), "png": png_bytes(k)}) for k in range(3)])
    _cut_in(tmp_path / "a.tar", "cls", "data")
    m = read_source(str(tmp_path / "a.tar"))
    assert m.paths == ["a.tar#k0", "a.tar#k1", "a.tar#k2"] and m.row_errors == {2: "truncated"}


def test_a_label_member_absent_from_an_intact_tar(tmp_path):
    samples = [("k0", {"png": png_bytes(0), "json": {"y": 1.0, "name": "a"}}), ("k1", {"png": png_bytes(1)}),
               ("k2", {"png": png_bytes(2), "json": {"y": 3.0, "name": "b"}})]
    write_tar(tmp_path / "a.tar", samples)
    # Targets: a sample without its json has none, like a json without the fields: that row only.
    reg = read_source(str(tmp_path / "a.tar"), target_columns=["y"])
    assert reg.row_errors == {1: "no_targets"} and reg.targets[[0, 2]].ravel().tolist() == [1.0, 3.0]
    # A class cannot be guessed: the read stops, naming the tar and the sample (as an empty CSV label cell does).
    with pytest.raises(SourceError, match=r"a\.tar#k1: this sample has no \.json member .*--label-key"):
        read_source(str(tmp_path / "a.tar"), label_key="name")
    write_tar(tmp_path / "b.tar", [("k0", {"png": png_bytes(0)})])
    with pytest.raises(SourceError, match=r"b\.tar: no sample has a \.json member to read --target-columns"):
        read_source(str(tmp_path / "b.tar"), target_columns=["y"])


def test_bad_members_get_reason_codes_and_neighbours_stay(tmp_path):
    write_tar(tmp_path / "a.tar", [("k0", {"png": png_bytes(0), "cls": "0"}),
                                   ("k1", {"cls": "1", "txt": "no image"}),
                                   ("k2", {"jpg": b"<html>not a picture</html>", "cls": "1"}),
                                   ("k3", {"png": png_bytes(3), "cls": "0"})])
    m = read_source(str(tmp_path / "a.tar"))
    assert m.paths == ["a.tar#k0", "a.tar#k1", "a.tar#k2", "a.tar#k3"] and m.row_errors == {1: "not_image"}
    assert _decode_all(m)[0] == "" and _decode_all(m)[2:] == ["not_image", ""]


@pytest.mark.parametrize("make, pattern", [
    (lambda p: p.write_bytes(b""), r"a\.tar: an empty file, not a tar"),
    (lambda p: p.write_bytes(b"hello, not a tar" * 100), r"a\.tar: not a tar file"),
    (lambda p: write_tar(p, [("k0", {"png": png_bytes(0), "cls": "seven"})]), r"a\.tar#k0: \.cls holds 'seven'"),
    (lambda p: write_tar(p, [("k0", {"png": png_bytes(0), "cls": "1"}), ("k1", {"png": png_bytes(1)})]),
     r"a\.tar#k1: this sample has no \.cls member"),
    (lambda p: write_tar(p, [("k0", {"png": png_bytes(0), "json": "{oops"})]), r"a\.tar#k0: its \.json is not valid"),
])
def test_structural_errors_name_the_shard_and_sample(tmp_path, make, pattern):
    make(tmp_path / "a.tar")
    kw = {"label_key": "y"} if "json" in pattern else {}
    with pytest.raises(SourceError, match=pattern):
        read_source(str(tmp_path / "a.tar"), **kw)


def test_a_pattern_with_a_missing_shard_is_refused(tmp_path):
    write_shards(tmp_path / "shards")
    with pytest.raises(SourceError, match=r"1 of 3 shards do not exist, e\.g\. .*00002\.tar"):
        read_source(str(tmp_path / "shards" / "{00000..00002}.tar"))

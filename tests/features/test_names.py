"""File names that are not UTF-8 come out as the same \\xNN text in HDF5, JSON and text output."""

import io
import json
import os

from features import names
from features.writer.partial import string_array
from pipeline.cli.jsonout import json_text


def test_printable_escapes_only_what_utf8_cannot_hold():
    raw = os.fsdecode(b"caf\xe9/\xff.png")  # surrogate escapes, as os.listdir returns them
    assert names.printable(raw) == "caf\\xe9/\\xff.png"
    assert names.printable("café/日本.png") == "café/日本.png"  # valid names are untouched
    assert names.printable("a\ud800b") == "a\\ud800b"  # a lone surrogate that is no escaped byte


def test_hdf5_paths_and_json_agree():
    raw = os.fsdecode(b"dir/\xffimg.png")
    assert list(string_array([raw, os.fsencode(raw)])) == ["dir/\\xffimg.png"] * 2
    text = json_text({"path": raw, raw: 1.0, "nan": float("nan")})
    text.encode("utf-8")
    assert json.loads(text) == {"path": "dir/\\xffimg.png", "dir/\\xffimg.png": 1.0, "nan": None}
    assert "\\udc" not in text


def test_streams_write_escapes_instead_of_raising():
    buf = io.BytesIO()
    stream = io.TextIOWrapper(buf, encoding="utf-8", errors="strict")
    names.escape_unencodable_output(stream, object())  # objects without reconfigure are left alone
    stream.write(os.fsdecode(b"\xff.png") + "\n")
    stream.flush()
    assert buf.getvalue() == b"\\xff.png\n"

"""--shard I/N over webdataset tars: the tar is the unit of work (tars [I*T//N, (I+1)*T//N)), other tars are
never opened, the shards merge into the single run, and resume works per shard."""

import shutil

import h5py
import pytest

from features.config import ExtractConfig
from features.fileinfo import describe_file, format_info
from features.merge import MergeError, merge
from features.reader.errors import SourceError
from features.reader.sources import read_source
from features.runner import extract
from tests.datafiles import png_bytes, write_shards, write_tar

KW = dict(backbone="mobilenet", input_size="32", weights="none", seed=5, batch_size=4, progress=False,
          precision="fp32", store_dtype="float32", max_bad_fraction=0.5)


def _garble(path):
    """Same size, not a tar: indexing it would fail, stat'ing it does not."""
    size = len(open(path, "rb").read())
    open(path, "wb").write(b"not a tar " * (size // 10) + b"x" * (size % 10))


def test_a_shard_indexes_only_its_own_tars(tmp_path):
    files = write_shards(tmp_path / "tars", n_shards=4, per_shard=2)
    whole = read_source(str(tmp_path / "tars"))
    parts = [read_source(str(tmp_path / "tars"), shard=(i, 2)) for i in range(2)]
    assert [(p.part.start, p.part.stop, p.part.count) for p in parts] == [(0, 2, 4), (2, 4, 4)]
    assert parts[0].paths + parts[1].paths == whole.paths
    assert parts[0].labels.tolist() + parts[1].labels.tolist() == whole.labels.tolist()
    # One value from the listing alone: equal for every shard and the unsharded run.
    assert parts[0].part.fingerprint == parts[1].part.fingerprint == whole.part.fingerprint
    assert parts[0].fingerprint() != parts[1].fingerprint()  # each shard's own tars, for its resume
    for f in files[:2]:
        _garble(f)  # now only shard 1 can be read: it must not open tars 0 and 1
    again = read_source(str(tmp_path / "tars" / "{00000..00003}.tar"), shard=(1, 2))
    assert again.paths == parts[1].paths
    with pytest.raises(SourceError, match=r"00000\.tar: not a tar file"):
        read_source(str(tmp_path / "tars"), shard=(0, 2))
    # The garbled tars' sizes are unchanged but their mtimes are not: the whole list's fingerprint moves.
    assert again.part.fingerprint != parts[1].part.fingerprint


def test_more_shards_than_tars_gives_empty_shards(tmp_path, caplog):
    write_shards(tmp_path / "tars", n_shards=2, per_shard=2)
    empty = read_source(str(tmp_path / "tars"), shard=(0, 3))
    assert len(empty) == 0 and (empty.part.start, empty.part.stop) == (0, 0)
    assert "only 2 tars, so shard 0/3 has none" in caplog.text
    reg = read_source(str(tmp_path / "tars"), shard=(0, 3), target_columns=["y"])
    assert reg.task == "regression" and reg.target_names == ["y"]  # so --precision auto picks as the others do


@pytest.fixture(scope="module")
def tars(tmp_path_factory):
    """3 tars (one sample without an image member), a single run, and shards 0..3 of 4 (one is empty)."""
    root = tmp_path_factory.mktemp("tarshards")
    write_shards(root / "tars", n_shards=2, per_shard=3)
    write_tar(root / "tars" / "00002.tar", [("s2k0", {"png": png_bytes(40), "cls": "2"}),
                                            ("s2k1", {"cls": "0", "txt": "no image"})])
    data = str(root / "tars")
    full = extract(ExtractConfig(data=data, output=str(root / "full.h5"), **KW)).output
    parts = [extract(ExtractConfig(data=data, output=str(root / "sh" / "p.h5"), shard=f"{i}/4", **KW))
             for i in range(4)]
    return root, data, full, parts


def _same(single, merged):
    with h5py.File(single) as a, h5py.File(merged) as b:
        assert set(a) == set(b)
        for name in a:
            assert a[name][()].tolist() == b[name][()].tolist(), name
            assert {k: str(v) for k, v in a[name].attrs.items()} == {k: str(v) for k, v in b[name].attrs.items()}
        for k in a.attrs:
            if k != "created" and not k.startswith("run_"):
                assert str(a.attrs[k]) == str(b.attrs[k]), k
        assert set(b.attrs) - set(a.attrs) <= {"merged_from", "virtual", "vds_sources", "note"}


@pytest.mark.slow  # the shared tars fixture extracts the tars whole and in shards (~6 s)
@pytest.mark.parametrize("copy", [False, True])
def test_tar_shards_merge_into_the_single_run(tars, copy):
    root, data, full, parts = tars
    assert [p.rows for p in parts] == [0, 3, 3, 2]  # 3 tars over 4 shards: shard 0 gets none
    with h5py.File(parts[2].output) as f:
        a = dict(f.attrs)
        assert (a["shard_unit"], a["tar_start"], a["tar_stop"], a["tar_count"], a["n_rows"]) == ("tar", 1, 2, 3, 3)
        assert "row_start" not in a and "tars_fingerprint" in a
        assert list(a["class_names"]) == ["0", "1"]  # its own tars' .cls: the merge joins them
    out = str(root / "sh" / f"merged-{copy}.h5")
    s = merge([p.output for p in reversed(parts)], out, copy=copy, progress=False)
    assert s["rows"] == 8 and s["n_shards"] == 4
    _same(full, out)
    # The merged file is what a single run would write: a rerun of it is a no-op.
    again = extract(ExtractConfig(data=data, output=out, **KW))
    assert again.skipped_existing
    assert merge([p.output for p in parts], out, copy=copy, progress=False)["skipped_existing"]


@pytest.mark.slow  # the shared tars fixture extracts the tars whole and in shards (~6 s)
def test_info_shows_the_tar_range(tars):
    _, _, full, parts = tars
    assert "shard 2/4 3 rows from tars [1, 2) of 3" in format_info(describe_file(parts[2].output))
    assert "shard 0/4 0 rows from tars [0, 0) of 3" in format_info(describe_file(parts[0].output))
    assert "shard 0/1 rows [0, 8) from tars [0, 3) of 3" in format_info(describe_file(full))


def _copies(tars, tmp_path):
    out = []
    for p in tars[3]:
        out.append(str(tmp_path / p.output.rsplit("/", 1)[1]))
        shutil.copy(p.output, out[-1])
    return out


def _set(path, **attrs):
    with h5py.File(path, "r+") as f:
        for k, v in attrs.items():
            f.attrs[k] = v


@pytest.mark.slow  # the shared tars fixture extracts the tars whole and in shards (~6 s)
def test_gaps_overlaps_and_mixed_units_are_refused_naming_the_file(tars, tmp_path):
    s = _copies(tars, tmp_path)
    out = str(tmp_path / "o.h5")
    _set(s[2], tar_start=0)  # overlaps shard 1
    with pytest.raises(MergeError, match=r"p\.shard-00002-of-00004\.h5: shard 2/4 covers tars \[0, 2\) but shard "
                                         r"2/4 of 3 tars is \[1, 2\]: a gap or an overlap"):
        merge(s, out)
    _set(s[2], tar_start=1, tar_stop=3)
    with pytest.raises(MergeError, match=r"covers tars \[1, 3\)"):
        merge(s, out)
    _set(s[2], tar_stop=2, shard_unit="rows")
    with pytest.raises(MergeError, match=r"p\.shard-00002-of-00004\.h5 and .*00000-of-00004\.h5 come from different "
                                         r"runs: one is split by rows, the other by tar"):
        merge(s, out)
    _set(s[2], shard_unit="tar", tar_count=4)
    with pytest.raises(MergeError, match="tar_count differs"):
        merge(s, out)
    _set(s[2], tar_count=3)
    with pytest.raises(MergeError, match=r"shards \[3\] of 4 are missing"):
        merge(s[:3], out)


@pytest.mark.slow  # three extracts of their own (~6 s); the merge of tar shards stays in the default suite
def test_label_key_classes_seen_by_different_shards_are_joined(tmp_path):
    # Each shard sorts only the classes of its own tars; the merge must sort them over all and renumber.
    (tmp_path / "tars").mkdir()
    names = [["dog", "dog"], ["cat", "eel"], ["bee", "dog"]]
    for t, tar_names in enumerate(names):
        write_tar(tmp_path / "tars" / f"{t}.tar", [(f"t{t}k{k}", {"png": png_bytes(10 * t + k), "json": {"n": n}})
                                                   for k, n in enumerate(tar_names)])
    data, src = str(tmp_path / "tars"), {"label_key": "n"}
    full = extract(ExtractConfig(data=data, output=str(tmp_path / "full.h5"), source=src, **KW)).output
    parts = [extract(ExtractConfig(data=data, output=str(tmp_path / "p.h5"), shard=f"{i}/3", source=src, **KW)).output
             for i in range(3)]
    for copy in (False, True):
        out = str(tmp_path / f"m-{copy}.h5")
        merge(parts, out, copy=copy, progress=False)
        _same(full, out)
        with h5py.File(out) as f:
            assert [str(c) for c in f.attrs["class_names"]] == ["bee", "cat", "dog", "eel"]
            assert f["labels"][()].tolist() == [2, 2, 1, 3, 0, 2]


@pytest.mark.slow  # two CLI processes
def test_a_killed_tar_shard_resumes_and_other_tars_stay_closed(tmp_path):
    from tests.reliability.helpers import ARGS, bneck, json_line

    files = write_shards(tmp_path / "tars", n_shards=4, per_shard=5)
    data = str(tmp_path / "tars")
    ref = bneck("extract", data, "-o", tmp_path / "ref" / "o.h5", "--shard", "1/2", *ARGS)
    assert ref.returncode == 0, ref.stderr
    for f in files[:2]:
        _garble(f)  # shard 1/2 is tars 2 and 3: the kill and the resume must not need tars 0 and 1
    out = tmp_path / "run" / "o.h5"
    killed = bneck("extract", data, "-o", out, "--shard", "1/2", *ARGS, env={"BNECK_TEST_KILL_AT": "chunk_committed:1"})
    assert killed.returncode != 0
    again = bneck("extract", data, "-o", out, "--shard", "1/2", *ARGS)
    assert again.returncode == 0, again.stderr
    summary = json_line(again.stdout)
    assert summary["rows"] == 10 and summary["computed"] == 2  # chunk 0 (8 rows) was kept
    shard, ref_shard = (str(d / "o.shard-00001-of-00002.h5") for d in (out.parent, tmp_path / "ref"))
    with h5py.File(ref_shard) as a, h5py.File(shard) as b:
        # Garbling gave tars 0 and 1 new mtimes: the whole list's fingerprint moved, this shard's own tars' did not.
        assert a.attrs["tars_fingerprint"] == b.attrs["tars_fingerprint"]
        assert a.attrs["source_fingerprint"] != b.attrs["source_fingerprint"]
        assert set(a) == set(b)
        for name in a:
            assert a[name][()].tolist() == b[name][()].tolist(), name

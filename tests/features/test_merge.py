"""features.merge: shard files -> one file equal to a single run (virtual or copied), and every refusal."""

import glob
import json
import os
import shutil

import h5py
import numpy as np
import pytest

from features.config import ExtractConfig
from features.merge import DATASETS, MergeError, check_sources, merge
from features.reader.groups import write_groups_file
from features.runner import extract
from pipeline.data.featurefile import FeatureFile, FeatureFileError
from tests.imagefolders import make_class_folder

KW = dict(backbone="mobilenet", input_size="32", weights="none", seed=5, batch_size=4, progress=False,
          precision="fp32", store_dtype="float32", max_bad_fraction=0.5)
# Attrs a merged file has on top of a single run's (and "created", which is a timestamp).
MERGE_ONLY = {"merged_from", "virtual", "vds_sources", "note"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One full run and the same run in 3 shards (odd sizes: 13 rows, one bad image)."""
    root = tmp_path_factory.mktemp("merge")
    make_class_folder(root / "data", classes=("a", "b", "c"), per_class=4,
                      bad=[("b", "broken.jpg", b"\xff\xd8\xff\xe0junk")])
    # Groups (as `bneck frames` records videos) ride along: a dataset every shard and the merge must keep.
    files = sorted(f"{c}/{n}" for c in ("a", "b", "c") for n in os.listdir(root / "data" / c))
    write_groups_file(root / "data", [(p, f"{p[0]}/v{i % 2}") for i, p in enumerate(files)], by="video")
    extract(ExtractConfig(data=str(root / "data"), output=str(root / "full.h5"), **KW))
    shards = [extract(ExtractConfig(data=str(root / "data"), output=str(root / "sh" / "part.h5"),
                                    shard=f"{i}/3", **KW)).output for i in range(3)]
    return root, str(root / "full.h5"), shards


def _assert_same_as_single_run(single, merged):
    with h5py.File(single) as a, h5py.File(merged) as b:
        assert set(a) == set(b) and set(a) <= set(DATASETS)
        for name in a:
            x, y = a[name][()], b[name][()]
            assert x.dtype == y.dtype and x.shape == y.shape, name
            assert x.tobytes() == y.tobytes() if x.dtype.kind != "O" else list(x) == list(y), name
            assert set(a[name].attrs) == set(b[name].attrs), name
            for k in a[name].attrs:
                np.testing.assert_array_equal(a[name].attrs[k], b[name].attrs[k])
        assert set(b.attrs) - set(a.attrs) <= MERGE_ONLY
        for k in a.attrs:
            if k != "created" and not k.startswith("run_"):  # how each shard ran is the shard's, not the merge's
                np.testing.assert_array_equal(a.attrs[k], b.attrs[k], err_msg=k)
        assert not [k for k in b.attrs if k.startswith("run_")]


@pytest.mark.parametrize("copy", [False, True])
def test_merge_equals_a_single_run_and_extract_sees_it_complete(run, copy):
    root, single, shards = run
    out = str(root / "sh" / f"merged-{copy}.h5")
    s = merge(list(reversed(shards)), out, copy=copy, progress=False)  # any order
    assert s["rows"] == 13 and s["n_shards"] == 3 and s["virtual"] is not copy
    _assert_same_as_single_run(single, out)
    with FeatureFile(out) as f:
        assert f.group_by == "video" and len(set(f.groups)) == 6 and len(f.groups) == 13
    with h5py.File(out) as f:
        assert all(f[n].is_virtual is not copy for n in f)
        assert list(f.attrs["merged_from"]) == [os.path.basename(p) for p in shards]
        assert bool(f.attrs["virtual"]) is not copy and f.attrs["complete"]
        if not copy:  # relative source paths, so the directory can move as a whole
            assert list(f.attrs["vds_sources"]) == [os.path.basename(p) for p in shards]
    assert check_sources(out) == ([] if copy else sorted(shards))
    again = extract(ExtractConfig(data=str(root / "data"), output=out, **KW))
    assert again.skipped_existing and again.rows == 13
    # Rerunning the same merge (a retried job) is a no-op; another merge into the file is refused.
    before = os.stat(out).st_mtime_ns
    again = merge(shards, out, copy=copy, progress=False)
    assert again["skipped_existing"] and again["rows"] == 13 and os.stat(out).st_mtime_ns == before
    with pytest.raises(MergeError, match="already exists and is not this merge"):
        merge(shards, out, copy=not copy, progress=False)
    with pytest.raises(MergeError, match="already exists and is not this merge"):
        merge(shards, single, progress=False)  # a single run's file is no merge at all
    assert not merge(shards, out, copy=copy, overwrite=True, progress=False)["skipped_existing"]


def test_relative_sources_survive_moving_the_directory(run, tmp_path, monkeypatch):
    root, single, shards = run
    work = tmp_path / "job"
    os.makedirs(work / "shards")
    for p in shards:
        shutil.copy(p, work / "shards")
    merge(sorted(glob.glob(str(work / "shards" / "*.h5"))), str(work / "merged.h5"))  # sources in ../shards
    moved = tmp_path / "elsewhere" / "job2"
    shutil.move(str(work), str(moved))
    # A decoy with a source's name in the working directory must not be picked up.
    monkeypatch.chdir(tmp_path)
    os.makedirs("shards")
    shutil.copy(shards[0], "shards")
    with h5py.File("shards/" + os.path.basename(shards[0]), "a") as f:
        f["features"][...] = 7.0
    merged = str(moved / "merged.h5")
    assert check_sources(merged) == sorted(str(moved / "shards" / os.path.basename(p)) for p in shards)
    _assert_same_as_single_run(single, merged)
    os.remove(moved / "shards" / os.path.basename(shards[1]))
    with pytest.raises(MergeError, match=f"{os.path.basename(shards[1])}, which is missing"):
        check_sources(merged)
    with pytest.raises(FeatureFileError, match=f"{os.path.basename(shards[1])}, which is missing"):
        FeatureFile(merged)  # what stage two opens: it must not train on the missing shard's fill values

    class Custom(ValueError):
        pass

    with pytest.raises(Custom):
        check_sources(h5py.File(merged, "r"), error=Custom)


def _copies(run, tmp_path):
    """The three shard files copied into tmp_path (to be damaged by a test)."""
    _, _, shards = run
    return [shutil.copy(p, tmp_path) for p in shards]


def _set(path, dataset=None, **attrs):
    with h5py.File(path, "a") as f:
        target = f[dataset] if dataset else f
        for k, v in attrs.items():
            target.attrs[k] = v


def _settings(path, **changes):
    with h5py.File(path, "a") as f:
        s = json.loads(f.attrs["settings_json"])
        s.update(changes)
        f.attrs["settings_json"] = json.dumps(s)


def _refused(shards, out, match):
    with pytest.raises(MergeError, match=match):
        merge(shards, out, progress=False)
    d = os.path.dirname(out)
    assert not os.path.exists(out) and not [n for n in os.listdir(d) if ".tmp-" in n], "wrote something"


def test_missing_partial_and_foreign_files_are_refused(run, tmp_path):
    s = _copies(run, tmp_path)
    out = str(tmp_path / "out.h5")
    _refused([s[0], s[1], str(tmp_path / "nope.h5")], out, r"nope\.h5: no such shard file")
    os.remove(s[2])
    os.makedirs(s[2] + ".partial")
    _refused(s, out, r"shard-00002-of-00003\.h5 is not finished: only .*\.partial/ exists")
    _refused(s[:2], out, r"shards \[2\] of 3 are missing: .*shard-00002-of-00003\.h5 is not finished")
    with open(s[2], "wb") as f:
        f.write(b"not hdf5 at all")
    _refused(s, out, r"shard-00002-of-00003\.h5: not an HDF5 file")
    with h5py.File(s[2], "w") as f:
        f["features"] = np.zeros((4, 3))
    _refused(s, out, r"shard-00002-of-00003\.h5: not a bneck feature file")
    shutil.copy(run[2][2], s[2])
    _set(s[2], complete=False)
    _refused(s, out, r"shard-00002-of-00003\.h5: incomplete feature file")


@pytest.mark.parametrize("attr,value", [("backbone", "vgg16"), ("layer", "conv1"), ("weights_sha256", "ab" * 32),
                                        ("source_fingerprint", "0" * 64), ("package_version", "9.9")])
def test_shards_of_different_runs_are_refused_naming_the_attr(run, tmp_path, attr, value):
    s = _copies(run, tmp_path)
    _set(s[1], **{attr: value})
    _refused(s, str(tmp_path / "o.h5"), rf"shard-00001-of-00003\.h5 and .* come from different runs: {attr} differs")


def test_differing_settings_and_dataset_attrs_are_refused(run, tmp_path):
    s = _copies(run, tmp_path)
    _settings(s[2], batch_size=8)
    _refused(s, str(tmp_path / "o.h5"), "setting batch_size differs")
    shutil.copy(run[2][2], s[2])
    _set(s[2], "labels", class_names=["x", "y", "z"])
    _refused(s, str(tmp_path / "o.h5"), "attrs of dataset 'labels' differ")
    shutil.copy(run[2][2], s[2])
    _set(s[2], "groups", group_by="scene")  # groups of another kind cannot be one dataset
    _refused(s, str(tmp_path / "o.h5"), "attrs of dataset 'groups' differ")
    with h5py.File(s[2], "r+") as f:
        del f["groups"]
    _refused(s, str(tmp_path / "o.h5"), "datasets differ")


def test_gaps_overlaps_duplicates_and_mixed_counts_are_refused(run, tmp_path):
    s = _copies(run, tmp_path)
    out = str(tmp_path / "o.h5")
    _refused([s[0], s[2]], out, r"shards \[1\] of 3 are missing: .*shard-00001-of-00003\.h5 exists but was not given")
    _refused([s[0], s[1], s[1], s[2]], out, "is given twice")
    dup = shutil.copy(s[1], tmp_path / "other-name.h5")
    _refused([s[0], s[1], dup, s[2]], out, r"shard 1/3 is given twice")
    _set(s[1], row_start=3)  # overlaps shard 0
    _refused(s, out, r"shard 1/3 covers rows \[3, 8\) but shard 1/3 of 13 rows is \[4, 8\]")
    shutil.copy(run[2][1], s[1])
    _set(s[1], shard="1/4")
    _refused(s, out, "shard counts differ")
    shutil.copy(run[2][1], s[1])
    with pytest.raises(MergeError, match="is one of the shard files"):
        merge(s, s[0], overwrite=True)
    _refused([], out, "no shard files given")


def test_merged_file_is_not_a_shard(run, tmp_path):
    s = _copies(run, tmp_path)
    merge(s, str(tmp_path / "m.h5"))
    _set(str(tmp_path / "m.h5"), shard="0/1")
    _refused([str(tmp_path / "m.h5")], str(tmp_path / "o.h5"), "is itself a merged")


@pytest.mark.slow  # ~12 s: many tiny shards
@pytest.mark.parametrize("copy", [False, True])
def test_more_shards_than_images_still_finish_and_merge(tmp_path, copy):
    # A SLURM array sized for a bigger dataset: some shards get no rows and must still finish.
    make_class_folder(tmp_path / "data", classes=("a",), per_class=2)
    full = extract(ExtractConfig(data=str(tmp_path / "data"), output=str(tmp_path / "full.h5"), **KW)).output
    parts = [extract(ExtractConfig(data=str(tmp_path / "data"), output=str(tmp_path / "sh" / "p.h5"),
                                   shard=f"{i}/3", **KW)) for i in range(3)]
    assert sorted(s.rows for s in parts) == [0, 1, 1]
    out = str(tmp_path / "merged.h5")
    merge([s.output for s in parts], out, copy=copy, progress=False)
    _assert_same_as_single_run(full, out)


@pytest.mark.slow  # three extracts of their own
def test_unlabelled_shards_merge_into_the_single_run(tmp_path):
    # task none: no labels/targets datasets, and the merge must neither need nor invent them.
    make_class_folder(tmp_path / "data", classes=("flat",), per_class=5)
    photos = str(tmp_path / "data" / "flat")
    full = extract(ExtractConfig(data=photos, output=str(tmp_path / "full.h5"), **KW)).output
    parts = [extract(ExtractConfig(data=photos, output=str(tmp_path / "sh" / "p.h5"), shard=f"{i}/2", **KW)).output
             for i in range(2)]
    out = str(tmp_path / "merged.h5")
    merge(parts, out, copy=True, progress=False)
    _assert_same_as_single_run(full, out)
    with FeatureFile(out) as f:
        assert f.task == "none" and f.n_rows == 5 and f.class_names is None and f.target_names is None

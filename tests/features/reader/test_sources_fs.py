"""Sources on fsspec filesystems (memory://, file://): listing, reading, missing objects, fingerprints by size."""

import pytest

fsspec = pytest.importorskip("fsspec")

from features import images  # noqa: E402
from features.reader import fs  # noqa: E402
from features.reader.errors import SourceError  # noqa: E402
from features.reader.sources import read_source  # noqa: E402
from tests.datafiles import png_bytes, write_shards  # noqa: E402


@pytest.fixture
def memfs():
    mem = fsspec.filesystem("memory")
    root = "/bneck-test"
    if mem.exists(root):
        mem.rm(root, recursive=True)
    yield mem, root
    mem.rm(root, recursive=True)


def test_memory_folder_of_images(memfs):
    mem, root = memfs
    for name in ("b.png", "a.png", ".hidden.png", "sub/c.png"):
        mem.pipe(f"{root}/photos/{name}", png_bytes(len(name)))
    m = read_source(f"memory://{root}/photos")
    assert m.kind == "images" and m.paths == ["a.png", "b.png"]
    assert images.decode(m.source(0), (32, 32))[2] == ""
    assert read_source(f"memory://{root}/photos", recursive=True).paths == ["a.png", "b.png", "sub/c.png"]
    before = m.fingerprint()
    mem.pipe(f"{root}/photos/a.png", png_bytes(99, size=(30, 30)))  # another size: another fingerprint
    assert read_source(f"memory://{root}/photos").fingerprint() != before


def test_memory_class_folders_in_keras_order(memfs):
    mem, root = memfs
    for name in ("dog/b.png", "cat/z.png", "cat/sub/a.png", "cat/.hidden.png", "README.md", ".git/x.png"):
        mem.pipe(f"{root}/data/{name}", png_bytes(len(name)))
    m = read_source(f"memory://{root}/data")
    assert m.kind == "folder" and m.class_names == ["cat", "dog"]
    # by folder path, then file name: what walk_files gives for the same tree on the local disk
    assert m.paths == ["cat/z.png", "cat/sub/a.png", "dog/b.png"] and m.labels.tolist() == [0, 0, 1]
    assert images.decode(m.source(2), (32, 32))[2] == ""
    mem.pipe(f"{root}/data/.bneck-groups.csv", b"path,video\ncat/z.png,v1\ncat/sub/a.png,v1\ndog/b.png,v2\n")
    grouped = read_source(f"memory://{root}/data")  # a `bneck frames` folder uploaded to a bucket
    assert grouped.groups == ["v1", "v1", "v2"] and grouped.group_by == "video"
    mem.pipe(f"{root}/data/top.png", png_bytes(7))  # an image beside the subfolders: a folder of images
    assert read_source(f"memory://{root}/data").kind == "images"


def test_memory_csv_with_image_root_and_a_missing_object(memfs):
    mem, root = memfs
    mem.pipe(f"{root}/img/a.png", png_bytes(1))
    mem.pipe(f"{root}/d.csv", b"path,label\na.png,cat\ngone.png,dog\n")
    m = read_source(f"memory://{root}/d.csv", image_root=f"memory://{root}/img")
    assert m.class_names == ["cat", "dog"] and m.row_errors == {1: "missing"}
    assert images.decode(m.source(0), (32, 32))[2] == ""


def test_file_url_webdataset_reads_the_same_rows_as_the_path(tmp_path):
    write_shards(tmp_path / "shards")
    local = read_source(str(tmp_path / "shards"))
    remote = read_source(f"file://{tmp_path}/shards")
    assert remote.paths == local.paths and remote.labels.tolist() == local.labels.tolist()
    assert [images.decode(remote.source(i), (32, 32))[2] for i in range(len(remote))] == [""] * len(remote)


def test_brace_patterns():
    assert fs.expand_braces("s/{00..02}.tar") == ["s/00.tar", "s/01.tar", "s/02.tar"]
    assert fs.expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert fs.is_pattern("x/{0..9}.tar") and not fs.is_pattern("x/{name}.tar")


def test_glob_patterns_pick_one_split(tmp_path, memfs):
    from tests.datafiles import write_parquet

    (tmp_path / "data").mkdir()
    for split in ("train", "test"):
        for k in range(2):
            write_parquet(tmp_path / "data" / f"{split}-{k:05d}-of-00002.parquet", n=2, seed=k)
    m = read_source(str(tmp_path / "data" / "train-*.parquet"))
    assert m.kind == "parquet"
    assert m.paths == [f"train-0000{k}-of-00002.parquet#row={i}" for k in range(2) for i in range(2)]
    mem, root = memfs
    mem.pipe(f"{root}/s/a.tar", open(write_shards(tmp_path / "shards", n_shards=1)[0], "rb").read())
    assert read_source(f"memory://{root}/s/*.tar").paths[0] == "a.tar#s0k0"
    with pytest.raises(SourceError, match="matches no file"):
        read_source(str(tmp_path / "data" / "val-*.parquet"))


def test_a_name_with_brackets_that_exists_is_not_a_pattern(tmp_path):
    (tmp_path / "photos [2024]").mkdir()
    (tmp_path / "photos [2024]" / "a.png").write_bytes(png_bytes(0))
    assert read_source(str(tmp_path / "photos [2024]")).paths == ["a.png"]


def test_memory_tar_shard_opens_only_its_own_tars(tmp_path, memfs):
    # On an object store the other tars are listed (sizes, etags/mtimes), never fetched.
    mem, root = memfs
    for f in write_shards(tmp_path / "shards", n_shards=4, per_shard=2):
        mem.pipe(f"{root}/s/{f.rsplit('/', 1)[1]}", open(f, "rb").read())
    whole = read_source(f"memory://{root}/s")
    for name in ("00000.tar", "00001.tar"):
        mem.pipe(f"{root}/s/{name}", b"garbage, not a tar" * 50)
    part = read_source(f"memory://{root}/s", shard=(1, 2))
    assert part.paths == whole.paths[4:] and (part.part.start, part.part.stop, part.part.count) == (2, 4, 4)
    with pytest.raises(SourceError, match=r"00000\.tar: not a tar file"):
        read_source(f"memory://{root}/s", shard=(0, 2))

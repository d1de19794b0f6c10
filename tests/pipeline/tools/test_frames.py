"""bneck frames: every N-th frame of each video as JPEG in a class folder named after the video."""

import os
import sys

import numpy as np
import pytest
from PIL import Image

from pipeline.tools import frames

COLOURS = {"red": (250, 10, 10), "blue": (10, 10, 250)}


@pytest.fixture
def videos(tmp_path):
    iio = pytest.importorskip("imageio.v3")
    pytest.importorskip("imageio_ffmpeg")
    root = tmp_path / "videos"
    root.mkdir()
    for name, colour in COLOURS.items():
        iio.imwrite(root / f"{name}.mp4", np.zeros((10, 32, 32, 3), np.uint8) + np.array(colour, np.uint8), fps=5)
    (root / "notes.txt").write_text("not a video")
    return root


def test_every_nth_frame_into_class_folders(videos, tmp_path):
    out = tmp_path / "dataset"
    r = frames.extract_frames(videos, out, every=3, progress=False)
    assert r["videos"] == 2 and r["classes"] == ["blue", "red"] and r["written"] == 8
    for name, colour in COLOURS.items():
        files = sorted(f for f in os.listdir(out / name) if not f.startswith("."))
        assert files == [f"{name}_{i:06d}.jpg" for i in (0, 3, 6, 9)]
        img = np.asarray(Image.open(out / name / files[1]))
        assert img.shape == (32, 32, 3) and np.abs(img.mean(axis=(0, 1)) - colour).max() < 12
    # The result is a dataset stage one reads as it is.
    from features.reader.sources import read_folder

    man = read_folder(out)
    assert man.class_names == ["blue", "red"] and len(man) == 8 and not man.row_errors


def test_rerun_skips_done_videos_and_existing_frames(videos, tmp_path):
    out = tmp_path / "dataset"
    frames.extract_frames(videos, out, every=4, progress=False)
    again = frames.extract_frames(videos, out, every=4, progress=False)
    assert again["written"] == 0 and again["skipped_videos"] == 2
    # An interrupted video (no done marker, one frame lost) is finished without rewriting the others.
    os.remove(out / "red" / ".red.every-4.done")
    os.remove(out / "red" / "red_000004.jpg")
    before = os.stat(out / "red" / "red_000000.jpg").st_mtime_ns
    third = frames.extract_frames(videos, out, every=4, progress=False)
    assert third["written"] == 1 and third["skipped_existing"] == 2 and third["skipped_videos"] == 1
    assert os.stat(out / "red" / "red_000000.jpg").st_mtime_ns == before
    assert not [f for f in os.listdir(out / "red") if f.endswith(".partial")]


def test_undecodable_video_is_reported_and_skipped(videos, tmp_path):
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00 this is no video" * 10)
    r = frames.extract_frames(videos, tmp_path / "dataset", every=5, progress=False)
    assert r["failed"] == [str(videos / "broken.mp4")] and r["written"] == 4
    assert not os.path.exists(tmp_path / "dataset" / "broken")  # no empty class folder left behind
    assert "broken" not in r["classes"]  # and no class without frames in the summary


def test_missing_extra_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio", None)
    monkeypatch.setitem(sys.modules, "imageio.v3", None)
    with pytest.raises(frames.MissingExtra, match=r"bneck\[video\].*imageio-ffmpeg"):
        frames.extract_frames(tmp_path, tmp_path / "out", every=2)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="--every"):
        frames.extract_frames(tmp_path, tmp_path / "out", every=0)
    with pytest.raises(FileNotFoundError, match="no video files"):
        frames.extract_frames(tmp_path, tmp_path / "out", every=2)


@pytest.fixture
def class_videos(tmp_path):
    """UCF101's layout: VIDEO_DIR/<class>/<video>.mp4, two videos a class."""
    iio = pytest.importorskip("imageio.v3")
    pytest.importorskip("imageio_ffmpeg")
    root = tmp_path / "ucf"
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for k in range(2):
            frames_ = np.zeros((6, 32, 32, 3), np.uint8) + np.array(colour, np.uint8) // (k + 1)
            iio.imwrite(root / name / f"v_{name}_g{k:02d}.mp4", frames_, fps=5)
    (root / "README.txt").write_text("a file beside the class folders is no video")
    return root


def _groups_file(out):
    import csv

    with open(out / ".bneck-groups.csv", newline="") as f:
        return list(csv.reader(f))


def test_class_folders_of_videos_keep_each_frame_s_video(class_videos, tmp_path):
    out = tmp_path / "dataset"
    r = frames.extract_frames(class_videos, out, every=2, progress=False)
    assert r["videos"] == 4 and r["classes"] == ["blue", "red"] and r["written"] == 12
    assert r["layout"] == "class folders" and r["groups_file"] == str(out / ".bneck-groups.csv")
    assert sorted(f for f in os.listdir(out / "red") if not f.startswith(".")) == \
        [f"v_red_g{k:02d}_{i:06d}.jpg" for k in range(2) for i in (0, 2, 4)]
    rows = _groups_file(out)
    assert rows[0] == ["path", "video"] and len(rows) == 13
    assert ["red/v_red_g01_000004.jpg", "red/v_red_g01.mp4"] in rows
    # Stage one reads the groups file on purpose: every row carries its video.
    from features.reader.sources import read_folder

    man = read_folder(out)
    assert man.class_names == ["blue", "red"] and man.group_by == "video"
    assert [g for p, g in zip(man.paths, man.groups) if "g00" in p] == ["blue/v_blue_g00.mp4"] * 3 + \
        ["red/v_red_g00.mp4"] * 3
    # A rerun changes nothing, the groups file included.
    before = (out / ".bneck-groups.csv").read_bytes()
    again = frames.extract_frames(class_videos, out, every=2, progress=False)
    assert again["written"] == 0 and again["skipped_videos"] == 4
    assert (out / ".bneck-groups.csv").read_bytes() == before


def test_flat_videos_record_their_video_too(videos, tmp_path):
    r = frames.extract_frames(videos, tmp_path / "dataset", every=5, progress=False)
    assert r["layout"] == "video per class"
    assert _groups_file(tmp_path / "dataset")[1:] == [["blue/blue_000000.jpg", "blue.mp4"],
                                                     ["blue/blue_000005.jpg", "blue.mp4"],
                                                     ["red/red_000000.jpg", "red.mp4"],
                                                     ["red/red_000005.jpg", "red.mp4"]]


def test_frames_a_killed_run_left_unlisted_are_refused_by_stage_one(class_videos, tmp_path):
    from features.reader.errors import SourceError
    from features.reader.sources import read_folder

    out = tmp_path / "dataset"
    frames.extract_frames(class_videos, out, every=3, progress=False)
    # As a kill leaves it: a video's frames on disk, the groups file from before they were written.
    rows = _groups_file(out)
    (out / ".bneck-groups.csv").write_text("\n".join(",".join(r) for r in rows if "g01" not in r[0]) + "\n")
    with pytest.raises(SourceError, match=r"4 of the 8 images are not listed .*rerun it"):
        read_folder(out)
    frames.extract_frames(class_videos, out, every=3, progress=False)  # the rerun lists them again
    assert len(read_folder(out).groups) == 8
    # A frame deleted by hand is simply gone; a groups file the user broke is rebuilt by the next run.
    os.remove(out / "red" / "v_red_g00_000003.jpg")
    (out / ".bneck-groups.csv").write_text("not,our,header\n")
    with pytest.raises(SourceError, match="expected the header"):
        read_folder(out)
    frames.extract_frames(class_videos, out, every=3, progress=False)
    assert len(read_folder(out).groups) == 7


def test_mixed_layouts_are_refused(class_videos, videos, tmp_path):
    import shutil

    shutil.copy(videos / "red.mp4", class_videos / "loose.mp4")
    with pytest.raises(ValueError, match="one layout"):
        frames.extract_frames(class_videos, tmp_path / "out", every=2)

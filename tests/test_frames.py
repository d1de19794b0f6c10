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

"""Turn videos into an image-classification dataset: every N-th frame as a JPEG, grouped by video.

Two layouts of ``VIDEO_DIR``:

- ``VIDEO_DIR/<class>/<video>.mp4`` (UCF101's, many videos per class) becomes
  ``DATASET_DIR/<class>/<video>_<frame:06d>.jpg``;
- ``VIDEO_DIR/<video>.mp4`` (one class per video, its file stem the label) becomes
  ``DATASET_DIR/<video>/<video>_<frame:06d>.jpg``.

Frame numbers count from 0 in decoding order. Either way the result is a ``bneck extract``-ready
class folder, plus ``DATASET_DIR/.bneck-groups.csv`` (:mod:`features.reader.groups`): the video each
frame came from, which stage one stores as the ``groups`` dataset, so a validation split never puts
near-identical frames of one video on both sides. Every JPEG is written under a hidden temporary
name and renamed, so a killed run never leaves a half-written frame; a rerun skips frames already
on disk, and videos finished with the same ``every`` (a hidden marker file, which dataset readers
ignore) are not decoded again. The groups file is rewritten at the start and at the end of every
run, so after a killed run stage one refuses the frames it does not list instead of guessing.
Decoding needs the optional ``[video]`` extra: imageio and imageio-ffmpeg (a bundled ffmpeg binary).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from features.fsutil import atomic_path
from features.reader.groups import read_groups_rows, write_groups_file

log = logging.getLogger("bneck")

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".gif")
EXTRA_HELP = "pip install 'bneck[video]'  (or: pip install imageio imageio-ffmpeg)"


class MissingExtra(RuntimeError):
    """An optional dependency of a command is not installed; the message says what to install."""


class BadVideo(RuntimeError):
    """One video cannot be decoded (it is reported and skipped; the others go on)."""


def _imageio():
    """imageio's v3 API, or a clear error naming the extra to install."""
    try:
        import imageio.v3 as iio
    except ImportError:
        raise MissingExtra(f"bneck frames needs imageio to read videos: {EXTRA_HELP}") from None
    return iio


def _videos_in(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.lower().endswith(VIDEO_SUFFIXES) and not n.startswith(".")
                  and os.path.isfile(os.path.join(folder, n)))


@dataclass(frozen=True)
class Video:
    """One video to read: its path, its class, its stem (the frames' name prefix) and its group name."""

    path: str
    label: str
    stem: str
    group: str  # the video's path relative to VIDEO_DIR, "/"-separated: what the groups file records


def list_videos(video_dir) -> list[Video]:
    """The videos of ``video_dir`` with their classes, sorted: ``<class>/<video>`` or flat ``<video>`` files.

    Hidden files and folders are skipped. A directory with videos both at its top level and in
    subfolders is refused: which of the two layouts is meant cannot be guessed.
    """
    if not os.path.isdir(video_dir):
        raise FileNotFoundError(f"{video_dir}: not a directory of videos")
    top = _videos_in(video_dir)
    nested = [(d, _videos_in(os.path.join(video_dir, d))) for d in sorted(os.listdir(video_dir))
              if not d.startswith(".") and os.path.isdir(os.path.join(video_dir, d))]
    nested = [(d, names) for d, names in nested if names]
    if top and nested:
        raise ValueError(f"{video_dir}: has videos at its top level ({top[0]}) and in class folders "
                         f"({nested[0][0]}/{nested[0][1][0]}); use one layout: VIDEO_DIR/<class>/<video> or "
                         "VIDEO_DIR/<video> (one class per video)")
    stem = lambda n: os.path.splitext(n)[0]  # noqa: E731
    if top:
        return [Video(os.path.join(video_dir, n), stem(n), stem(n), n) for n in top]
    return [Video(os.path.join(video_dir, d, n), d, stem(n), f"{d}/{n}") for d, names in nested for n in names]


def _write_jpeg(frame: np.ndarray, path: str, quality: int) -> None:
    """Encode one frame as RGB JPEG at ``path`` via a temporary name and a rename."""
    img = Image.fromarray(np.asarray(frame)[..., :3] if np.ndim(frame) == 3 else np.asarray(frame)).convert("RGB")
    with atomic_path(path, durable=False) as tmp:
        img.save(tmp, format="JPEG", quality=quality)


def _frames(iio, path):
    """Iterate the frames of one video, turning a missing ffmpeg backend into the extra's message."""
    try:
        yield from iio.imiter(path)
    except (ImportError, ValueError, OSError, RuntimeError) as exc:
        if "ffmpeg" in str(exc).lower() or isinstance(exc, ImportError) or "backend" in str(exc).lower():
            try:
                import imageio_ffmpeg  # noqa: F401
            except ImportError:
                raise MissingExtra(f"{path}: no video backend for imageio: {EXTRA_HELP}") from None
        raise BadVideo(f"{path}: cannot decode the video ({type(exc).__name__}: {exc})") from None


#: A frame's file name: the video's stem, then its frame number (6 digits, more past a million frames).
_FRAME = re.compile(r"(.+)_(\d{6,})\.jpg")


def _write_groups(output, videos: list[Video]) -> str:
    """Rewrite ``output/.bneck-groups.csv``: every frame on disk of a listed video, plus still-present old lines.

    Old lines whose frames are still there are kept (a video moved out of VIDEO_DIR leaves its frames, and
    they keep their video); a frame of a listed video always gets that video.
    """
    from features.reader.errors import SourceError

    try:
        rows = read_groups_rows(output)
    except SourceError as exc:  # our own file, damaged: it is rebuilt from what is on disk
        log.warning("%s; rewriting it", exc)
        rows = {}
    rows = {p: g for p, g in rows.items() if os.path.isfile(os.path.join(output, p))}
    stems: dict[str, dict[str, str]] = {}
    for v in videos:
        stems.setdefault(v.label, {}).setdefault(v.stem, v.group)
    for label, by_stem in stems.items():
        folder = os.path.join(output, label)
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            m = _FRAME.fullmatch(name)
            if m and m.group(1) in by_stem:
                rows[f"{label}/{name}"] = by_stem[m.group(1)]
    return write_groups_file(output, rows.items(), by="video")


def extract_frames(video_dir, output, *, every: int = 10, quality: int = 95, progress: bool = True) -> dict:
    """Write every ``every``-th frame of each video in ``video_dir`` into the class folder ``output``.

    Args:
        video_dir: ``<class>/<video>`` files (many videos per class), or video files directly in it, each its
            own class named after its stem (``walking.mp4`` -> ``walking``).
        output: dataset directory; ``output/<class>/<video stem>_<frame:06d>.jpg`` is created, and
            ``output/.bneck-groups.csv``, the video of every frame (:mod:`features.reader.groups`).
        every: keep frames 0, every, 2*every, ...
        quality: JPEG quality (Pillow, 1-95).
        progress: show a tqdm progress bar (frames decoded).

    Returns ``{"videos", "classes", "layout", "written", "skipped_existing", "skipped_videos", "failed",
    "output", "groups_file"}``; ``failed`` lists videos that could not be decoded (logged, skipped, retried
    by the next run). Raises :class:`MissingExtra` when imageio (or its ffmpeg backend) is not installed.
    """
    from tqdm.auto import tqdm

    if int(every) < 1:
        raise ValueError(f"--every must be >= 1, got {every}")
    iio = _imageio()
    videos = list_videos(video_dir)
    if not videos:
        raise FileNotFoundError(f"{video_dir}: no video files ({', '.join(VIDEO_SUFFIXES)}), neither at its top "
                                "level nor in class folders")
    seen: dict[tuple[str, str], str] = {}
    for v in videos:
        if (v.label, v.stem) in seen:
            log.warning("%s and %s share the name %s in class %s: their frames share file names (and one video "
                        "as their group)", seen[v.label, v.stem], v.path, v.stem, v.label)
        seen.setdefault((v.label, v.stem), v.path)
    os.makedirs(output, exist_ok=True)
    # Now, before any frame is written: frames a killed run leaves are unlisted, which stage one refuses.
    _write_groups(output, videos)
    written = existing = done = 0
    failed = []
    with tqdm(unit="frame", desc="frames", disable=not progress) as bar:
        for video in videos:
            folder = os.path.join(output, video.label)
            os.makedirs(folder, exist_ok=True)
            marker = os.path.join(folder, f".{video.stem}.every-{int(every)}.done")
            if os.path.exists(marker):
                done += 1
                continue
            bar.set_postfix_str(video.group)
            try:
                for i, frame in enumerate(_frames(iio, video.path)):
                    bar.update()
                    if i % every:
                        continue
                    path = os.path.join(folder, f"{video.stem}_{i:06d}.jpg")
                    if os.path.exists(path):
                        existing += 1
                        continue
                    _write_jpeg(frame, path, quality)
                    written += 1
            except BadVideo as exc:  # frames written so far stay; no marker, so the next run retries
                log.error("%s", exc)
                failed.append(video.path)
                if not os.listdir(folder):  # an empty class folder would still count as a class
                    os.rmdir(folder)
                continue
            with open(marker, "w") as f:
                f.write(f"{os.path.abspath(video.path)}\n")
    groups_file = _write_groups(output, videos)
    log.info("%d videos -> %s: %d frames written, %d already there, %d videos already done; their videos in %s",
             len(videos), output, written, existing, done, groups_file)
    # Only labels whose folder holds frames are classes: a video that failed at frame 0 made none.
    classes = sorted(c for c in {v.label for v in videos} if os.path.isdir(os.path.join(output, c)))
    flat = all(v.label == v.stem and "/" not in v.group for v in videos)
    return {"videos": len(videos), "classes": classes, "layout": "video per class" if flat else "class folders",
            "written": written, "skipped_existing": existing, "skipped_videos": done, "failed": failed,
            "output": str(output), "groups_file": groups_file}

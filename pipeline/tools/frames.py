"""Turn videos into an image-classification dataset: every N-th frame as a JPEG, one class per video.

``VIDEO_DIR/<label>.mp4`` becomes ``DATASET_DIR/<label>/<label>_<frame:06d>.jpg`` (frame numbers
count from 0 in decoding order), a ``bneck extract``-ready class folder. Every JPEG is written under
a hidden temporary name and renamed, so a killed run never leaves a half-written frame; a rerun
skips frames already on disk, and videos finished with the same ``every`` (a hidden marker file,
which dataset readers ignore) are not decoded again. Decoding needs the optional ``[video]`` extra:
imageio and imageio-ffmpeg (a bundled ffmpeg binary).
"""

from __future__ import annotations

import logging
import os

import numpy as np
from PIL import Image

from features.fsutil import atomic_path

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


def list_videos(video_dir) -> list[str]:
    """Video files directly in ``video_dir`` (by suffix, hidden files skipped), sorted."""
    if not os.path.isdir(video_dir):
        raise FileNotFoundError(f"{video_dir}: not a directory of videos")
    return sorted(os.path.join(video_dir, n) for n in os.listdir(video_dir)
                  if n.lower().endswith(VIDEO_SUFFIXES) and not n.startswith(".")
                  and os.path.isfile(os.path.join(video_dir, n)))


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


def extract_frames(video_dir, output, *, every: int = 10, quality: int = 95, progress: bool = True) -> dict:
    """Write every ``every``-th frame of each video in ``video_dir`` into the class folder ``output``.

    Args:
        video_dir: directory of video files; each file's stem (``walking.mp4`` -> ``walking``) is its label.
        output: dataset directory; ``output/<label>/<label>_<frame:06d>.jpg`` is created.
        every: keep frames 0, every, 2*every, ...
        quality: JPEG quality (Pillow, 1-95).
        progress: show a tqdm progress bar (frames decoded).

    Returns ``{"videos", "classes", "written", "skipped_existing", "skipped_videos", "failed", "output"}``;
    ``failed`` lists videos that could not be decoded (logged, skipped, retried by the next run).
    Raises :class:`MissingExtra` when imageio (or its ffmpeg backend) is not installed.
    """
    from tqdm.auto import tqdm

    if int(every) < 1:
        raise ValueError(f"--every must be >= 1, got {every}")
    iio = _imageio()
    videos = list_videos(video_dir)
    if not videos:
        raise FileNotFoundError(f"{video_dir}: no video files ({', '.join(VIDEO_SUFFIXES)})")
    stems = [os.path.splitext(os.path.basename(v))[0] for v in videos]
    for s in sorted({s for s in stems if stems.count(s) > 1}):
        log.warning("several videos are called %s.*: they share the class folder and frame names", s)
    written = existing = done = 0
    failed = []
    with tqdm(unit="frame", desc="frames", disable=not progress) as bar:
        for video, label in zip(videos, stems):
            folder = os.path.join(output, label)
            os.makedirs(folder, exist_ok=True)
            marker = os.path.join(folder, f".{label}.every-{int(every)}.done")
            if os.path.exists(marker):
                done += 1
                continue
            bar.set_postfix_str(os.path.basename(video))
            try:
                for i, frame in enumerate(_frames(iio, video)):
                    bar.update()
                    if i % every:
                        continue
                    path = os.path.join(folder, f"{label}_{i:06d}.jpg")
                    if os.path.exists(path):
                        existing += 1
                        continue
                    _write_jpeg(frame, path, quality)
                    written += 1
            except BadVideo as exc:  # frames written so far stay; no marker, so the next run retries
                log.error("%s", exc)
                failed.append(video)
                if not os.listdir(folder):  # an empty class folder would still count as a class
                    os.rmdir(folder)
                continue
            with open(marker, "w") as f:
                f.write(f"{os.path.abspath(video)}\n")
    log.info("%d videos -> %s: %d frames written, %d already there, %d videos already done",
             len(videos), output, written, existing, done)
    # Only labels whose folder holds frames are classes: a video that failed at frame 0 made none.
    classes = sorted(s for s in set(stems) if os.path.isdir(os.path.join(output, s)))
    return {"videos": len(videos), "classes": classes, "written": written, "skipped_existing": existing,
            "skipped_videos": done, "failed": failed, "output": str(output)}

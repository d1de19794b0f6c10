"""``bneck frames``: videos into a class-folder dataset, every N-th frame as a JPEG."""

from __future__ import annotations

from pipeline.cli.jsonout import json_text
from pipeline.cli.types import int_between, positive_int

HELP = "turn videos into a class-folder dataset (every N-th frame as JPEG), grouped by video"
DESCRIPTION = ("VIDEO_DIR/<class>/<video>.mp4 (many videos per class, UCF101's layout) becomes "
               "DATASET_DIR/<class>/<video>_<frame:06d>.jpg; video files directly in VIDEO_DIR are each their own "
               "class, named after the file's stem. DATASET_DIR/.bneck-groups.csv records each frame's video: "
               "`bneck extract` stores it and `bneck train` keeps the frames of one video on one side of every "
               "validation split. Needs the [video] extra (imageio, imageio-ffmpeg).")


def add_arguments(p) -> None:
    p.add_argument("videos", metavar="VIDEO_DIR", help="directory of class folders of video files (.mp4, .avi, .mov, "
                                                       "...), or of video files (one class each)")
    p.add_argument("-o", "--output", required=True, metavar="DATASET_DIR", help="class-folder dataset to write")
    p.add_argument("--every", type=positive_int, default=10,
                   help="keep every N-th frame, starting with frame 0 (default 10)")
    p.add_argument("--quality", type=int_between(1, 95), default=95, help="JPEG quality 1-95 (default 95)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def run(args) -> int:
    from pipeline.tools.frames import extract_frames

    r = extract_frames(args.videos, args.output, every=args.every, quality=args.quality, progress=args.progress)
    print(json_text(r) if args.json else
          f"{r['videos']} videos -> {r['output']}: {len(r['classes'])} classes ({r['layout']}), "
          f"{r['written']} frames written, "
          f"{r['skipped_existing']} already there, {r['skipped_videos']} videos already done"
          + (f"; {len(r['failed'])} could not be decoded" if r["failed"] else "")
          + f"; each frame's video in {r['groups_file']}")
    return 1 if r["failed"] else 0

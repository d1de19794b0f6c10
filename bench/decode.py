"""Decode-only throughput of stage one's image path (``features.images.decode``), no model.

Two measurements, both with a thread pool sized to the cores (Pillow releases the GIL):

1. ``small``: N generated 256x256 JPEGs (quality 90) decoded and resized to --size, the
   common case of a prepared dataset.
2. ``large``: 12-megapixel 4000x3000 JPEGs (phone photos) decoded to --size two ways:
   ``features.images.decode``, which asks libjpeg for a DCT-scaled draft (1/2, 1/4 or 1/8
   of full size, never below the target) before resizing; and a plain Pillow
   ``open + convert("RGB") + resize`` without draft, i.e. a full 12 MP decode each time.

Files are read once before timing so the page cache serves them: this is decoding, not disk.

    python bench/decode.py --n 1000 --large-n 8
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def _full_decode(size):
    from PIL import Image

    h, w = size

    def run(path):
        with Image.open(path) as img:
            return img.convert("RGB").resize((w, h), Image.Resampling.BILINEAR)

    return run


def _measure(fn, paths, workers, repeat, label):
    import numpy as np

    times = []
    for r in range(repeat):
        seconds, _ = common.threaded_throughput(fn, paths, workers)
        times.append(seconds)
        common.log(f"  {label} pass {r + 1}/{repeat}: {len(paths) / seconds:.1f} img/s")
    best, med = min(times), float(np.median(times))
    return {"images": len(paths), "passes": repeat, "images_per_s": round(len(paths) / med, 2),
            "images_per_s_best": round(len(paths) / best, 2),
            "ms_per_image_per_thread": round(med * workers / len(paths) * 1e3, 2)}


def main(argv=None) -> dict:
    p = common.parser(__doc__)
    p.add_argument("--n", type=int, default=1000, help="number of 256x256 JPEGs (default 1000)")
    p.add_argument("--classes", type=int, default=4, help="class folders of the fixture (default 4)")
    p.add_argument("--size", type=int, default=224, help="decode target side (default 224)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="decode threads (default: cores)")
    p.add_argument("--repeat", type=int, default=3, help="timed passes over the files; the median is reported")
    p.add_argument("--large-n", type=int, default=8, help="number of 12 MP JPEGs (0 skips the large bench)")
    p.add_argument("--large-repeat", type=int, default=2, help="timed passes over the 12 MP files (default 2)")
    common.add_output_args(p)
    args = p.parse_args(argv)

    from features import images

    size = (args.size, args.size)
    result = {"bench": "decode", "size": list(size), "workers": args.workers}

    if args.n:
        _, paths = common.jpeg_folder(args.n, args.classes, size=(256, 256), root=args.fixture_root)
        result["small_mb"] = round(common.warm_page_cache(paths) / 1e6, 1)
        common.log(f"decoding {len(paths)} 256x256 JPEGs -> {args.size} with {args.workers} threads")
        bad = [p for p in paths[:4] if images.decode(p, size)[0] is None]
        assert not bad, f"fixture does not decode: {bad}"
        result["small_256"] = _measure(lambda p: images.decode(p, size), paths, args.workers, args.repeat,
                                       "decode 256px")

    if args.large_n:
        paths = common.large_jpegs(args.large_n, root=args.fixture_root)
        result["large_mb"] = round(common.warm_page_cache(paths) / 1e6, 1)
        common.log(f"decoding {len(paths)} 4000x3000 JPEGs -> {args.size} with {args.workers} threads")
        draft = _measure(lambda p: images.decode(p, size), paths, args.workers, args.large_repeat,
                         "12MP decode (draft)")
        full = _measure(_full_decode(size), paths, args.workers, args.large_repeat, "12MP full decode")
        result["large_12mp"] = {"draft": draft, "full_no_draft": full,
                                "draft_speedup": round(draft["images_per_s"] / full["images_per_s"], 2)}
    return common.emit(result)


if __name__ == "__main__":
    main()

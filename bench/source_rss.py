"""Peak RSS of reading a source and decoding every row (no backbone), against the number of rows (issue 22).

A parquet file is read one row group at a time by the decode threads and a webdataset tar one member at a
time, so the peak RSS should stay flat as the rows grow: each size runs in its own child process, which
builds the manifest and decodes every row through the decode pool as stage one does (a bounded read-ahead),
and reports its own peak RSS.

    python bench/source_rss.py --rows 2000,8000 --kinds parquet,webdataset
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from collections import deque

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child(data: str, size: int) -> None:
    sys.path.insert(0, ROOT)
    from features import images
    from features.reader.sources import read_source

    m = read_source(data)
    bad = 0
    with images.decode_pool() as pool:
        window = deque()
        for i in range(len(m)):
            window.append(pool.submit(images.decode, m.source(i), (size, size)))
            if len(window) >= 128:  # the runner's read-ahead: a few batches
                bad += window.popleft().result()[0] is None
        bad += sum(f.result()[0] is None for f in window)
    print(json.dumps({"rows": len(m), "bad": bad, "peak_rss_mib": round(_peak_mib(), 1)}))


def _peak_mib() -> float:
    """This process's peak RSS. Linux's ru_maxrss keeps the parent's high-water mark across fork+exec (the
    parent wrote the data), so VmHWM, which starts afresh with the new address space, is read first."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)


def _write(kind: str, path: str, n: int, side: int) -> str:
    sys.path.insert(0, ROOT)
    from tests.datafiles import png_bytes, write_parquet, write_tar

    if kind == "parquet":
        write_parquet(path + ".parquet", n=n, row_group_size=256)
        return path + ".parquet"
    write_tar(path + ".tar", [(f"{k:08d}", {"png": png_bytes(k, size=(side, side)), "cls": str(k % 3)})
                              for k in range(n)])
    return path + ".tar"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="2000,8000", help="comma-separated row counts (default 2000,8000)")
    ap.add_argument("--kinds", default="parquet,webdataset", help="parquet and/or webdataset")
    ap.add_argument("--side", type=int, default=64, help="image side in pixels (default 64)")
    ap.add_argument("--child", nargs=2, metavar=("DATA", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args.child[0], int(args.child[1]))
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            for n in [int(v) for v in args.rows.split(",")]:
                data = _write(kind, os.path.join(tmp, f"{kind}-{n}"), n, args.side)
                out = subprocess.run([sys.executable, __file__, "--child", data, "32"], capture_output=True,
                                     text=True, check=True).stdout
                print(json.dumps({"kind": kind, "file_mib": round(os.path.getsize(data) / 2**20, 1),
                                  **json.loads(out.splitlines()[-1])}))


if __name__ == "__main__":
    main()

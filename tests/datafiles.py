"""Tiny webdataset tars and parquet files written by the tests themselves (no downloads, nothing committed)."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
from PIL import Image


def png_bytes(seed: int, size=(20, 24)) -> bytes:
    """A random RGB PNG, different per ``seed``."""
    arr = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def write_tar(path, samples) -> None:
    """Write a webdataset tar: ``samples`` is ``[(key, {ext: bytes | str | dict}), ...]`` in member order."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for key, members in samples:
            for ext, value in members.items():
                if isinstance(value, dict):
                    value = json.dumps(value)
                data = value.encode() if isinstance(value, str) else value
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def write_shards(root, n_shards=2, per_shard=3, *, seed=0) -> list[str]:
    """``root/0000{i}.tar`` with samples ``s{i}k{k}`` (png, cls = k % 2, json {"y": k, "name": ...})."""
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for s in range(n_shards):
        path = root / f"{s:05d}.tar"
        write_tar(path, [(f"s{s}k{k}", {"png": png_bytes(seed + 10 * s + k), "cls": str(k % 2),
                                         "json": {"y": float(k), "name": "odd" if k % 2 else "even"}})
                         for k in range(per_shard)])
        files.append(str(path))
    return files


def write_parquet(path, n=6, *, struct=True, labels=True, row_group_size=4, seed=0, **extra_columns) -> None:
    """A parquet file with an ``image`` column (Hugging Face ``{bytes, path}`` structs, or plain bytes)."""
    import pytest

    pa = pytest.importorskip("pyarrow")  # the [parquet] extra
    pq = pytest.importorskip("pyarrow.parquet")
    images = [png_bytes(seed + i) for i in range(n)]
    cols = {"image": [{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(images)] if struct else images}
    if labels:
        cols["label"] = [["cat", "dog", "eel"][i % 3] for i in range(n)]
    cols.update(extra_columns)
    pq.write_table(pa.table(cols), str(path), row_group_size=row_group_size)

"""What changed between the run that left an output (partial or finished) and the one asked for now, in words.

A rerun with other settings or another source is refused until ``--overwrite``; the refusal lists each
change as a user would say it (``backbone: vgg16 -> mobilenet``, ``image root: a/ -> b/``,
``source: 21 rows -> 25 rows``, ``source: 3 files changed (first: cats/1.jpg)``), not as a digest.

The settings say what the run computes; the source is described beside them (:class:`SourceView`):
where it was read (not part of the settings, so a dataset moved with its timestamps keeps its cache)
and a small digest per row, saved in the partial dir as ``source.json`` and ``source-rows.npz``.
"""

from __future__ import annotations

import json
import os
import zlib

import numpy as np

from features import names
from features.fsutil import atomic_write_bytes

_SOURCE_JSON, _SOURCE_ROWS = "source.json", "source-rows.npz"

#: Settings keys in words; a key not listed is shown as its name with spaces.
_WORDS = {"source_fingerprint": "source", "source_kind": "source kind", "input_size": "input size",
          "weights_sha256": "weights file (sha256)", "store_dtype": "store dtype", "format_version": "file format",
          "row_start": "first row", "row_stop": "end row", "tar_start": "first tar", "tar_stop": "end tar",
          "tar_count": "number of tars", "tars_fingerprint": "this shard's tars", "shard_unit": "shard unit",
          "batch_size": "batch size", "chunk_rows": "chunk rows", "xla": "XLA", "flip": "mirrored views (flip)"}


class SourceView:
    """The rows ``[start, stop)`` of a manifest as this run reads them: where from, how many, a digest per row."""

    def __init__(self, manifest, start: int, stop: int, *, data: str, image_root: str):
        # data, image_root: absolute paths or URLs, as the user would recognise them.
        self.manifest, self.start, self.stop = manifest, start, stop
        self.data, self.image_root = data, image_root

    def about(self) -> dict:
        return {"data": self.data, "image_root": self.image_root, "rows": self.stop - self.start}

    def ids(self) -> list[str]:
        return [names.printable(p) for p in self.manifest.paths[self.start:self.stop]]

    def digests(self) -> dict[str, np.ndarray]:
        """crc32 per row: of its id (``ids``), file size and mtime (``files``), label or targets (``labels``),
        group (``groups``). Names are hashed as :func:`names.printable` text, the form a finished file stores."""
        m, a, b = self.manifest, self.start, self.stop
        out = {"ids": _crc_text(m.paths[a:b])}
        stats = m.file_stats()
        if stats is not None:
            out["files"] = _crc([row.tobytes() for row in stats[a:b].astype("<i8")])
        if m.labels is not None:
            # The class name, not its index: a new class sorted in front renumbers rows whose label is unchanged.
            out["labels"] = _crc_text([m.class_names[k] for k in m.labels[a:b]])
        elif m.targets is not None:
            out["labels"] = _crc([row.tobytes() for row in np.nan_to_num(m.targets[a:b], nan=-1e30).astype("<f8")])
        if m.groups is not None:
            out["groups"] = _crc_text(m.groups[a:b])
        return out

    def save(self, directory: str) -> None:
        """Describe the source in the partial dir ``directory`` (before any chunk is computed)."""
        buf = _npz(self.digests())
        atomic_write_bytes(os.path.join(directory, _SOURCE_ROWS), buf)
        atomic_write_bytes(os.path.join(directory, _SOURCE_JSON), json.dumps(self.about(), indent=1).encode())


def _crc(items) -> np.ndarray:
    return np.array([zlib.crc32(x) for x in items], np.uint32)


def _crc_text(items) -> np.ndarray:
    # A file name that is not UTF-8 (a lone surrogate) has no strict encoding: hash it as stored and shown.
    return _crc([names.printable(str(x)).encode("utf-8") for x in items])


def _npz(arrays) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def saved_source(directory: str) -> dict | None:
    """What :meth:`SourceView.save` wrote in ``directory`` (``about`` plus the digests), or None."""
    try:
        with open(os.path.join(directory, _SOURCE_JSON), encoding="utf-8") as f:
            about = json.load(f)
        with np.load(os.path.join(directory, _SOURCE_ROWS), allow_pickle=False) as z:
            about.update(digests={k: z[k] for k in z.files})
        return about
    except (OSError, ValueError, KeyError):
        return None  # a partial dir of an older bneck: the settings alone are compared


def finished_source(out_path: str) -> dict | None:
    """The same description of a finished feature file, from its attrs and ``paths`` (no per-file stats)."""
    import h5py

    try:
        with h5py.File(out_path, "r") as f:
            paths = f["paths"].asstr()[()] if "paths" in f else []
            root = f.attrs.get("source_root")
            digests = {"ids": _crc_text(paths)}
            if "labels" in f:
                classes = [c.decode() if isinstance(c, bytes) else str(c) for c in f["labels"].attrs["class_names"]]
                digests["labels"] = _crc_text([classes[k] for k in f["labels"][()]])
            elif "targets" in f:
                digests["labels"] = _crc([r.tobytes() for r in np.nan_to_num(f["targets"][()], nan=-1e30)
                                          .astype("<f8")])
            if "groups" in f:
                digests["groups"] = _crc_text(f["groups"].asstr()[()])
            return {"image_root": root.decode() if isinstance(root, bytes) else root, "rows": len(paths),
                    "digests": digests}
    except (OSError, KeyError, ValueError, IndexError):
        return None  # a damaged file: the settings alone are compared, never a traceback


def explain(old: dict, new: dict, old_source: dict | None = None, new_source: SourceView | None = None) -> list[str]:
    """Each difference between two runs' settings (and sources) as ``what: old -> new``."""
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        if key == "source_fingerprint" and new_source is not None and old_source is not None:
            out += _source_changes(old_source, new_source)
            continue
        if key == "weights_sha256" and old.get("weights") != new.get("weights"):
            continue  # other weights: their hash differs too, one line says it
        if key == "weights" and _same_but_seed(old, new):
            continue  # random weights name their seed: the seed's line says it
        word = _WORDS.get(key, key.replace("_", " "))
        out.append(f"{word}: {_show(key, old.get(key))} -> {_show(key, new.get(key))}")
    return out


def _same_but_seed(old: dict, new: dict) -> bool:
    a, b = str(old.get("weights")), str(new.get("weights"))
    return a.replace(f"seed={old.get('seed')}", "") == b.replace(f"seed={new.get('seed')}", "")


def _show(key, value) -> str:
    if value is None:
        return "(none)"
    if key == "input_size" and isinstance(value, list):
        return "x".join(map(str, value))
    if key in ("source_fingerprint", "weights_sha256", "tars_fingerprint") and isinstance(value, str):
        return value[:12] + "…"
    return str(value)


def _source_changes(old: dict, new: SourceView) -> list[str]:
    about = new.about()
    out = []
    for key, word in (("data", "data"), ("image_root", "image root")):
        if old.get(key) and old[key] != about[key]:
            out.append(f"{word}: {old[key]} -> {about[key]}")
    if old.get("rows") != about["rows"]:
        return out + [f"source: {old.get('rows')} rows -> {about['rows']} rows"]
    digests, now = old.get("digests") or {}, new.digests()
    if digests and ("groups" in digests) != ("groups" in now):
        # --group-column given or dropped, or a groups file written beside the images since.
        out.append(f"source: groups added (by {new.manifest.group_by})" if "groups" in now
                   else "source: groups removed")
    ids = new.ids()
    for kind, noun in (("ids", "row id"), ("files", "file"), ("labels", "label"), ("groups", "group")):
        if kind not in digests or kind not in now or len(digests[kind]) != len(now[kind]):
            continue
        changed = np.flatnonzero(digests[kind] != now[kind])
        if len(changed):
            n = len(changed)
            out.append(f"source: {n} {noun}{'s' if n != 1 else ''} changed (first: {ids[changed[0]]})")
        if kind == "ids" and len(changed):
            break  # other rows: their files and labels are not comparable row by row
    if not any(line.startswith("source:") for line in out):
        # A finished file keeps no per-file sizes and times, so it cannot say which.
        out.append("source: the files changed (sizes or modification times)")
    return out

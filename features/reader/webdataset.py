"""Read webdataset tar shards (as clip-retrieval reads and img2dataset writes them) into a manifest.

``DATA`` is one ``.tar``, a directory of them, or a brace pattern such as ``shards/{00000..00099}.tar``,
locally or on any fsspec filesystem. A sample is a run of consecutive members sharing a key (the
member name up to the first dot of its base name: ``a/000.jpg`` and ``a/000.cls`` are sample
``a/000``). Its image is the first ``jpg``/``jpeg``/``png``/``webp`` member; its label the integer in
``cls``, or a field of its ``json`` (``label_key``); its regression targets numeric fields of that
``json`` (``target_keys``). No label and no targets: task ``none``.

Only the tar headers (512 bytes a member) and the small ``cls``/``json`` members are read here; each
row remembers its image's byte range, so the decode pool later reads exactly that range of that
tar, and a resumed or sharded run reads the members of its own rows only. Row ids are
``<shard>.tar#<key>``, in shard order then member order: deterministic.

A tar that ends early keeps the samples before the break; the sample at the break is marked
``truncated`` when it lost a member it needs (its image, its ``cls`` while other samples have one,
its ``json`` for ``label_key``/``target_keys``, or any of these cut off inside), and kept otherwise.
In an intact tar, a sample without an image member is ``not_image``; one without the ``json`` its
targets come from is ``no_targets``, as one whose ``json`` lacks the fields; a missing class (no
``cls`` where others have one, no ``json`` for ``label_key``) stops the read naming the sample,
as an empty label cell does in a CSV: guessing a class would mislabel the row.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile

import numpy as np

from . import fs
from .base import check_xy_pairs, sorted_classes
from .errors import SourceError
from .manifest import FilePart, Manifest, fingerprint_of, shard_bounds

log = logging.getLogger("bneck")

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# The small members worth reading while indexing; images are read later, by the decode pool.
_META_MAX = 1 << 20


def read_webdataset(path, *, label_key=None, target_columns=None, progress=False, shard=None):
    """Read webdataset shards into a manifest (see the module docstring); ``target_columns`` are json fields.

    ``shard=(I, N)`` indexes only tars ``[I*T//N, (I+1)*T//N)`` of the ``T`` tars (the tar is the unit of
    work, as in img2dataset and clip-retrieval): the others are listed and stat'ed for the fingerprint,
    never opened. The manifest's ``part`` says which tars it covers; its rows are those tars' samples.
    """
    target_keys = target_columns
    if label_key is not None and target_keys is not None:
        raise SourceError(f"{path}: give either --label-key or --target-columns, not both")
    shards = fs.shard_files(path, ".tar")
    # Row ids name the shard relative to the common folder, like the shard list users wrote.
    base = fs.common_parent(shards)
    names = [fs.relative(shard, base) for shard in shards]
    index, count = shard or (0, 1)
    t0, t1 = shard_bounds(len(shards), index, count)
    versions = _tar_versions(shards, base, names)
    # Every shard computes the same value from the listing alone; the options shape labels and targets.
    options = json.dumps({"label_key": label_key, "target_columns": list(target_keys or []) or None})
    whole = fingerprint_of(b"webdataset", options.encode(),
                           *(f"{n}:{size}:{version}".encode() for n, (size, version) in zip(names, versions)))
    part = FilePart("tar", t0, t1, len(shards), whole)
    rows = []  # (shard index, key, image member (offset, size, ext) or None, reason, meta)
    sizes = {}
    from tqdm.auto import tqdm

    bar = tqdm(range(t0, t1), desc="index tar shards", unit="tar", disable=not progress or t1 - t0 < 2,
               leave=False)
    for s in bar:
        size, samples = _index_tar(shards[s], need_json=bool(label_key or target_keys))
        sizes[s] = (size, versions[s][1], len(samples))
        rows += [(s, *sample) for sample in samples]
    if not rows:
        if shard is None or count == 1:
            raise SourceError(f"{path}: the tar shards hold no samples")
        # A SLURM array sized for more tars than there are: this shard finishes empty and merges.
        what = f"tars {names[t0]}..{names[t1 - 1]} hold no samples" if t1 > t0 else \
            f"there are only {len(shards)} tars, so shard {index}/{count} has none"
        log.warning(f"{path}: {what}; shard {index}/{count} is written empty")
        # --target-columns says regression without a sample to look at (it sets --precision auto's choice);
        # whether .cls labels exist is unknown here, and features.merge ignores an empty shard's labels.
        fields = {"targets": np.zeros((0, len(target_keys)), np.float32), "target_names": list(target_keys)} \
            if target_keys else {}
        return Manifest("webdataset", base, [], blobs=TarMembers(shards, names, [], sizes), part=part, **fields)
    ids = [f"{names[s]}#{key}" for s, key, *_ in rows]
    errors = {i: r[3] for i, r in enumerate(rows) if r[3]}
    blobs = TarMembers(shards, names, [(s, img) for s, _, img, _, _ in rows], sizes)
    fields = {}
    if target_keys:
        keys = list(target_keys)
        check_xy_pairs(path, keys)
        targets = np.full((len(rows), len(keys)), np.nan, np.float32)
        if not any("json_text" in meta for *_, meta in rows):
            raise SourceError(f"{path}: no sample has a .json member to read --target-columns from")
        for i, (s, key, _, reason, meta) in enumerate(rows):
            if "json_text" not in meta:
                continue  # no json (a cut-off sample is truncated already): its targets stay NaN, no_targets
            doc = _json_of(shards[s], key, meta)
            for k, name in enumerate(keys):
                value = doc.get(name)
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise SourceError(f"{shards[s]}#{key}: json field {name!r} is {value!r}, not a number")
                targets[i, k] = value
        for i in np.flatnonzero(np.isnan(targets).all(axis=1)):
            errors.setdefault(int(i), "no_targets")
        fields = {"targets": targets, "target_names": keys}
    elif label_key:
        values = []
        for s, key, _, reason, meta in rows:
            if reason and "json_text" not in meta:
                values.append(None)  # a cut-off sample: invalid anyway, any class will do
                continue
            doc = _json_of(shards[s], key, meta)
            if label_key not in doc:
                raise SourceError(f"{shards[s]}#{key}: the json has no field {label_key!r} (--label-key); "
                                  f"fields are {', '.join(sorted(doc)) or 'none'}")
            values.append(str(doc[label_key]))
        classes = sorted_classes(v for v in values if v is not None)
        index = {c: k for k, c in enumerate(classes)}
        fields = {"labels": np.array([index.get(v, 0) for v in values], np.int64), "class_names": classes}
    else:
        cls = [meta.get("cls") for *_, meta in rows]
        if any(c is not None for c in cls):
            for i, (c, row) in enumerate(zip(cls, rows)):
                if c is None and row[4].get("cut"):
                    errors.setdefault(i, "truncated")  # the tar broke off in (or before) this sample's .cls
            have = [c is not None or i in errors for i, c in enumerate(cls)]  # a bad row's class is moot
            if not all(have):
                i = have.index(False)
                raise SourceError(f"{shards[rows[i][0]]}#{rows[i][1]}: this sample has no .cls member but others "
                                  "do; give every sample a label, or none")
            labels = np.array([0 if c is None else c for c in cls], np.int64)
            if labels.min() < 0:
                i = int(np.argmin(labels))
                raise SourceError(f"{shards[rows[i][0]]}#{rows[i][1]}: .cls {labels[i]} is negative")
            fields = {"labels": labels, "class_names": [str(k) for k in range(int(labels.max()) + 1)]}
    return Manifest("webdataset", base, ids, row_errors=errors, blobs=blobs, part=part, **fields)


def _tar_versions(shards, base, names):
    """``(size, version)`` of every tar from a listing or ``stat``, without opening any of them."""
    if fs.is_url(shards[0]):
        found = fs.stats(base, names)
        absent = [n for n, (size, _) in zip(names, found) if size < 0]
        if absent:
            raise SourceError(f"{fs.join(base, absent[0])}: cannot read this tar (it is not in the listing)")
        return found
    out = []
    for shard in shards:
        try:
            st = os.stat(shard)
        except OSError as exc:
            raise SourceError(f"{shard}: cannot read this tar ({exc})") from None
        out.append((st.st_size, str(st.st_mtime_ns)))
    return out


def _index_tar(shard, *, need_json):
    """``(size, samples)`` of one tar from its headers; samples are (key, image, reason, meta)."""
    try:
        with fs.open_binary(shard) as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(0)
            magic = f.read(2)
            f.seek(0)
            if magic == b"\x1f\x8b":
                raise SourceError(f"{shard}: a gzip-compressed tar; members of a compressed shard cannot be read "
                                  "by range, so decompress it first (gunzip)")
            members, complete = _members(shard, f, size)
            samples = _group(shard, f, members, size, need_json, complete)
    except OSError as exc:
        raise SourceError(f"{shard}: cannot read this tar ({exc})") from None
    return size, samples


def _members(shard, f, size):
    """``(members, complete)``: regular-file members in tar order, and whether the tar ends as a tar should.

    A break in the tar ends the list with a warning: a header or member cut off, or no end-of-archive
    block after the last member (a tar cut exactly between two members).
    """
    out = []
    try:
        tf = tarfile.open(fileobj=f, mode="r:")
    except tarfile.ReadError as exc:
        if size == 0:
            raise SourceError(f"{shard}: an empty file, not a tar") from None
        raise SourceError(f"{shard}: not a tar file ({exc})") from None
    while True:
        try:
            info = tf.next()
        except (tarfile.ReadError, EOFError, OSError) as exc:
            log.warning(f"{shard}: the tar breaks off after {len(out)} members ({exc}); the samples before the "
                        "break are kept")
            return out, False
        if info is None:
            break
        if info.isfile():
            out.append((info.name, info.offset_data, info.size))
    # tarfile ends quietly at a cut-off header or at the end of the file; a whole tar ends with a zero block.
    f.seek(tf.offset)
    if f.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
        log.warning(f"{shard}: the tar breaks off after {len(out)} members (no end-of-archive block); the samples "
                    "before the break are kept")
        return out, False
    return out, True


def _group(shard, f, members, size, need_json, complete):
    """Members grouped into samples ``(key, image, reason, meta)``; ``complete``: the tar did not break off.

    The last sample of a broken tar may have lost members at the break (``meta["cut"]``): one needed for
    this read that is missing or cut off makes it ``truncated``, not a sample without it.
    """
    samples = []
    for name, offset, length in members:
        head, base = name.rsplit("/", 1) if "/" in name else ("", name)
        if base.startswith(".") or "." not in base:
            continue  # webdataset skips names without an extension, and hidden files such as __MACOSX
        stem, ext = base.split(".", 1)
        key = f"{head}/{stem}" if head else stem
        if not samples or samples[-1][0] != key:
            samples.append([key, None, "", {}])
        sample = samples[-1]
        ext = ext.lower()
        cut = offset + length > size
        if ext in IMAGE_EXTS and sample[1] is None:
            sample[1] = (offset, length, ext)
            if cut:
                sample[2] = "truncated"
        elif ext == "cls" and not cut:
            f.seek(offset)
            text = f.read(min(length, _META_MAX)).decode("utf-8", "replace").strip()
            try:
                sample[3]["cls"] = int(text)
            except ValueError:
                raise SourceError(f"{shard}#{key}: .cls holds {text[:40]!r}, not an integer class index") from None
        elif ext == "json" and need_json and not cut:
            sample[3]["json"] = (offset, length)
    if samples and not complete:
        samples[-1][3]["cut"] = True
    out = []
    for key, image, reason, meta in samples:
        if image is None:
            # No jpg/jpeg/png/webp member: nothing to decode, or nothing left of it at the break.
            reason = "truncated" if meta.get("cut") else "not_image"
        elif need_json and "json" not in meta and meta.get("cut"):
            reason = reason or "truncated"  # its .json was cut off, or came after the break
        if need_json and "json" in meta:
            off, length = meta["json"]
            f.seek(off)
            meta["json_text"] = f.read(length)
        out.append((key, image, reason, meta))
    return out


def _json_of(shard, key, meta):
    text = meta.get("json_text")
    if text is None:
        raise SourceError(f"{shard}#{key}: this sample has no .json member to read its class from (--label-key); "
                          "give every sample one")
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise SourceError(f"{shard}#{key}: its .json is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise SourceError(f"{shard}#{key}: its .json is not an object")
    return doc


class TarMembers:
    """Rows whose images are byte ranges of tar shards."""

    def __init__(self, shards, names, images, sizes):
        # shards, names: every tar of the source; sizes: {tar index: (size, version, samples)} of those indexed.
        self.shards, self.names, self.images, self.sizes = shards, names, images, sizes

    def source(self, i):
        """A blob reading exactly row ``i``'s image member (``None``-safe: rows without one are marked bad)."""
        s, image = self.images[i]
        if image is None:
            return fs.InlineBytes(b"", f"{self.names[s]} (no image member)")
        offset, size, ext = image
        return fs.Blob(self.shards[s], offset, size, name=f"{self.names[s]}#member@{offset}.{ext}")

    def fingerprint_bytes(self) -> bytes:
        """Each indexed tar's name, size, etag/mtime and sample count (a shard's own tars only)."""
        return "\0".join(f"{self.names[s]}:{size}:{version}:{count}"
                         for s, (size, version, count) in sorted(self.sizes.items())).encode()

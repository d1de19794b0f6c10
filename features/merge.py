"""Merge the shard files of one ``bneck extract --shard I/N`` run into one feature file.

The result equals a single-machine run of the same settings, dataset by dataset, and opens like
any feature file. By default every dataset is an HDF5 *virtual dataset* (VDS) that maps each
shard's rows in order: instant, no copy, but the shard files must stay next to the merged file
(the VDS stores their paths relative to it, so the directory can be moved as a whole).
``copy=True`` writes a self-contained file instead, streamed in blocks.

Everything is checked before anything is written; the output appears atomically
(:func:`features.fsutil.atomic_path`: temp name, fsync, rename).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import time

import numpy as np

from features.attrs import check_root_attrs, check_shapes, plain, read_checked_attrs
from features.fsutil import atomic_path
from features.reader.base import sorted_classes
from features.reader.manifest import parse_shard, shard_bounds
from features.writer.finished import PRODUCER, partial_dir

DATASETS = ("features", "features_flipped", "labels", "targets", "targets_flipped", "paths", "valid",
            "reason", "image_size", "groups")
_PER_SHARD = {"shard", "row_start", "row_stop", "created", "settings_json", "complete", "tar_start", "tar_stop",
              "tars_fingerprint"}
# A tar shard (shard_unit "tar": it indexed only its own tars) knows only its own rows and classes: the
# merge numbers the rows and joins the class lists; an empty one (more shards than tars) has no labels at all.
_PER_TAR_SHARD = {"n_rows", "class_names"}
_LABEL_ATTRS = {"task", "class_names", "target_names"}
_LABEL_DATASETS = {"labels", "targets", "targets_flipped"}
# How each shard ran (its device, compute batch after OOM back-off, decode threads): per worker,
# so shards may differ, and the merged file keeps none of them.
_RUN_ATTRS = {"run_device", "run_compute_batch", "run_decode_workers"}
# Paths on the machine that ran the shard: they may differ between cluster nodes; shard 0's is kept.
_HOST_LOCAL = {"source_root", "weights_path"}
_MERGE_ATTRS = {"merged_from", "virtual", "vds_sources", "note"}
_BLOCK_BYTES = 64 << 20
VDS_NOTE = ("virtual dataset: rows are read from the shard files in vds_sources (paths relative to this "
            "file); keep them next to it, move the directory as a whole, or merge with --copy")


class MergeError(ValueError):
    """The shards cannot be merged as given (nothing was written)."""


def merge(shards: list[str], output: str, *, copy: bool = False, overwrite: bool = False,
          progress: bool = True) -> dict:
    """Merge ``shards`` (the files of shards 0..N-1 of one run, any order) into ``output``; returns a summary."""
    t0 = time.time()
    infos = _check_shards([os.fspath(s) for s in shards])
    # The shard whose attrs and datasets the merged file takes: shard 0, or for tar shards the first holding rows
    # (an empty one has no labels).
    ref = next((s for s in infos if s["rows"]), infos[0]) if infos[0]["unit"] == "tar" else infos[0]
    classes = _merged_classes(infos)
    output = os.fspath(output)
    real_out = os.path.realpath(output)
    for s in infos:
        if os.path.realpath(s["path"]) == real_out:
            raise MergeError(f"output {output} is one of the shard files; choose another output")
    n = infos[-1]["row_stop"]
    if os.path.exists(output) and not overwrite:
        # A rerun of the same merge (a retried batch job, a Makefile) is a no-op, like extract's.
        if _is_this_merge(output, infos, n, copy):
            return _summary(output, infos, n, copy, t0, skipped=True)
        raise MergeError(f"{output} already exists and is not this merge of these shards; "
                         "use --overwrite (overwrite=True in Python) to replace it")
    attrs = _merged_attrs(infos, ref, n, copy, classes)
    out_dir = os.path.dirname(os.path.abspath(output))
    if not copy:  # readers refuse a virtual dataset reading from outside its folder (check_sources)
        outside = [s["path"] for s in infos if not _inside(s["path"], out_dir)]
        if outside:
            raise MergeError(f"{outside[0]} is not in the output's folder {out_dir} (or below it): a merged "
                             "file may only read shards from there; put the output beside the shards, or merge "
                             "with --copy")
    import h5py

    with atomic_path(output) as tmp, h5py.File(tmp, "w") as f:  # beside the output: the VDS paths hold for both
        if copy:
            _write_copy(f, infos, ref, n, progress, os.path.basename(output), classes)
        else:
            attrs["vds_sources"] = _write_vds(f, infos, ref, n, out_dir, classes)
        for key, value in attrs.items():
            f.attrs[key] = value
        f.attrs["complete"] = True
    return _summary(output, infos, n, copy, t0, skipped=False)


def _summary(output: str, infos: list[dict], n: int, copy: bool, t0: float, *, skipped: bool) -> dict:
    """What :func:`merge` returns: the same keys whether it merged now or found this merge done."""
    return {"output": output, "shards": [s["path"] for s in infos], "n_shards": len(infos), "rows": n,
            "virtual": not copy, "bytes": os.path.getsize(output), "seconds": round(time.time() - t0, 3),
            "skipped_existing": skipped}


def _is_this_merge(output: str, infos: list[dict], n: int, copy: bool) -> bool:
    """True when ``output`` is a finished merge of exactly these shards, in the same mode."""
    import h5py

    want = json.dumps(_full_run(infos[0]["settings"], n), sort_keys=True)
    try:
        with h5py.File(output, "r") as f:
            a = dict(f.attrs)
    except OSError:
        return False
    merged_from = [str(x.decode() if isinstance(x, bytes) else x) for x in a.get("merged_from", [])]
    return (bool(a.get("complete")) and a.get("settings_json") == want and bool(a.get("virtual")) == (not copy)
            and merged_from == [os.path.basename(s["path"]) for s in infos])


# -- checks ------------------------------------------------------------------------------------
def _check_shards(paths: list[str]) -> list[dict]:
    if not paths:
        raise MergeError("no shard files given")
    seen = {}
    for p in paths:
        key = os.path.realpath(p)
        if key in seen:
            raise MergeError(f"shard file {p} is given twice (also as {seen[key]})")
        seen[key] = p
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise MergeError("; ".join(_missing_message(p) for p in missing))
    infos = sorted((_read_shard(p) for p in paths), key=lambda s: s["index"])
    odd = next((s for s in infos if s["unit"] != infos[0]["unit"]), None)
    if odd is not None:
        raise MergeError(f"{odd['path']} and {infos[0]['path']} come from different runs: one is split by "
                         f"{odd['unit']}, the other by {infos[0]['unit']} (a webdataset source is split by whole "
                         "tars, other sources by rows); extract every shard with the same bneck and source")
    tars = infos[0]["unit"] == "tar"
    first = next((s for s in infos if s["rows"]), infos[0]) if tars else infos[0]
    for s in infos:
        if s is not first:
            _compare(first, s, skip=_PER_TAR_SHARD if tars else set(), labels=not tars or s["rows"] > 0)
    count = first["count"]
    by_index = {}
    for s in infos:
        if s["index"] in by_index:
            raise MergeError(f"shard {s['index']}/{count} is given twice: {by_index[s['index']]} and {s['path']}")
        by_index[s["index"]] = s["path"]
    absent = [i for i in range(count) if i not in by_index]
    if absent:
        hints = [_expected_name(first["path"], i, count) for i in absent[:10]]
        raise MergeError(f"shards {absent[:10]} of {count} are missing: "
                         + "; ".join(f"{h} exists but was not given" if os.path.isfile(h) else _missing_message(h)
                                     for h in hints))
    if tars:
        return _place_tar_shards(infos, count)
    n_rows = first["attrs"].get("n_rows")
    if not isinstance(n_rows, int):
        raise MergeError(f"{first['path']}: has no n_rows attr")
    for s in infos:
        want = shard_bounds(int(n_rows), s["index"], count)
        if (s["row_start"], s["row_stop"]) != want:
            raise MergeError(f"{s['path']}: shard {s['index']}/{count} covers rows [{s['row_start']}, "
                             f"{s['row_stop']}) but shard {s['index']}/{count} of {n_rows} rows is {list(want)}")
        for name, (length, _, _) in s["datasets"].items():
            if length != s["row_stop"] - s["row_start"]:
                raise MergeError(f"{s['path']}: dataset {name!r} has {length} rows, expected "
                                 f"{s['row_stop'] - s['row_start']}")
    return infos


def _place_tar_shards(infos: list[dict], count: int) -> list[dict]:
    """Check that the shards' tar ranges tile ``[0, T)`` and number their rows, in shard order."""
    n_tars = infos[0]["tar_count"]
    offset = 0
    for s in infos:
        want = shard_bounds(n_tars, s["index"], count)
        if (s["tar_start"], s["tar_stop"]) != want:
            raise MergeError(f"{s['path']}: shard {s['index']}/{count} covers tars [{s['tar_start']}, "
                             f"{s['tar_stop']}) but shard {s['index']}/{count} of {n_tars} tars is {list(want)}: "
                             "a gap or an overlap with its neighbours")
        if s["attrs"].get("n_rows") != s["rows"]:
            raise MergeError(f"{s['path']}: attr n_rows is {s['attrs'].get('n_rows')!r}, 'features' has {s['rows']}")
        for name, (length, _, _) in s["datasets"].items():
            if length != s["rows"]:
                raise MergeError(f"{s['path']}: dataset {name!r} has {length} rows, expected {s['rows']}")
        s["row_start"], s["row_stop"] = offset, offset + s["rows"]
        offset += s["rows"]
    if not offset:
        raise MergeError(f"{infos[0]['path']}: none of the {len(infos)} shards holds a row")
    return infos


def _merged_classes(infos: list[dict]) -> list[str] | None:
    """The merged file's class names, and each shard's ``remap`` (its label index -> the merged one).

    Row shards share one class list (compared). Tar shards each saw only their own tars' labels: ``.cls``
    classes ``0..max`` are prefixes of the longest list, which keeps every index; classes of ``--label-key``
    are sorted anew over all shards, as one run over every tar sorts them, and the labels renumbered.
    """
    lists = [s["attrs"]["class_names"] for s in infos if s["rows"] and "class_names" in s["attrs"]]
    if not lists:
        return None
    longest = max(lists, key=len)
    if all(names == longest[:len(names)] for names in lists):
        return longest
    classes = sorted_classes(c for names in lists for c in names)
    index = {c: k for k, c in enumerate(classes)}
    for s in infos:
        if s["rows"] and "class_names" in s["attrs"]:
            s["remap"] = np.array([index[c] for c in s["attrs"]["class_names"]], np.int64)
    return classes


def _missing_message(p: str) -> str:
    if os.path.isdir(partial_dir(p)):
        return (f"{p} is not finished: only {partial_dir(p)}/ exists (the extraction was interrupted); "
                "rerun the same `bneck extract --shard I/N` command to resume it")
    return f"{p}: no such shard file"


def _expected_name(path: str, index: int, count: int) -> str:
    d, base = os.path.split(path)
    new, k = re.subn(r"\.shard-\d+-of-\d+", f".shard-{index:05d}-of-{count:05d}", base)
    return os.path.join(d, new) if k else f"shard {index}/{count}"


def _read_shard(path: str) -> dict:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise MergeError(f"{path}: not an HDF5 file ({exc})") from None
    with f:
        attrs = read_checked_attrs(f, path, error=MergeError)
        if attrs.get("producer") != PRODUCER or "settings_json" not in attrs:
            raise MergeError(f"{path}: not a bneck feature file (no producer='bneck'/settings_json attrs)")
        check_root_attrs(attrs, path, error=MergeError)
        check_shapes(f, attrs, path, error=MergeError, rows=False)
        if not attrs.get("complete"):
            raise MergeError(f"{path}: incomplete feature file (complete is not set); rerun its extraction")
        if attrs.get("virtual") or any(f[n].is_virtual for n in f if isinstance(f[n], h5py.Dataset)):
            raise MergeError(f"{path}: is itself a merged (virtual) file, not a shard")
        try:
            index, count = parse_shard(attrs.get("shard"))
        except ValueError as exc:
            raise MergeError(f"{path}: bad shard attr: {exc}") from None
        datasets = {n: (f[n].shape[0], (f[n].dtype, f[n].shape[1:], f[n].chunks),
                        {k: plain(v) for k, v in f[n].attrs.items()}) for n in DATASETS if n in f}
    if "features" not in datasets:
        raise MergeError(f"{path}: has no 'features' dataset")
    unit = attrs.get("shard_unit", "rows")  # files of older bneck, and every non-tar source: rows
    if unit not in ("rows", "tar"):
        raise MergeError(f"{path}: attr shard_unit is {unit!r}; expected 'rows' or 'tar'")
    info = {"path": path, "attrs": attrs, "index": index, "count": count, "datasets": datasets, "unit": unit,
            "rows": datasets["features"][0], "settings": json.loads(attrs["settings_json"]),
            "row_start": int(attrs.get("row_start", -1)), "row_stop": int(attrs.get("row_stop", -1))}
    if unit == "tar":
        for key in ("tar_start", "tar_stop", "tar_count"):
            if not isinstance(attrs.get(key), int):
                raise MergeError(f"{path}: a tar shard without an integer {key} attr")
            info[key] = attrs[key]
    return info


def _compare(a: dict, b: dict, *, skip=frozenset(), labels: bool = True) -> None:
    """Raise naming the first attr, setting or dataset in which shard ``b`` differs from shard ``a``.

    ``skip``: more attrs that may differ; ``labels=False`` (an empty tar shard): labels and targets too.
    """
    where = f"{b['path']} and {a['path']} come from different runs"
    if a["count"] != b["count"]:
        raise MergeError(f"{where}: shard counts differ ({a['attrs']['shard']} vs {b['attrs']['shard']})")
    skip = _PER_SHARD | _HOST_LOCAL | _RUN_ATTRS | set(skip) | (set() if labels else _LABEL_ATTRS)
    for key in sorted(set(a["attrs"]) | set(b["attrs"])):
        if key not in skip and a["attrs"].get(key) != b["attrs"].get(key):
            raise MergeError(f"{where}: {key} differs ({a['attrs'].get(key)!r} vs {b['attrs'].get(key)!r})")
    sa, sb = _full_run(a["settings"], 0), _full_run(b["settings"], 0)
    for key in sorted(set(sa) | set(sb)):
        if sa.get(key) != sb.get(key):
            raise MergeError(f"{where}: setting {key} differs ({sa.get(key)!r} vs {sb.get(key)!r})")
    names_a = {n for n in a["datasets"] if labels or n not in _LABEL_DATASETS}
    names_b = {n for n in b["datasets"] if labels or n not in _LABEL_DATASETS}
    if names_a != names_b:
        raise MergeError(f"{where}: datasets differ ({sorted(names_a)} vs {sorted(names_b)})")
    for name in sorted(names_a):
        _, (dt, shape, _), dattrs = a["datasets"][name]
        _, (dt2, shape2, _), dattrs2 = b["datasets"][name]
        if dt != dt2 or shape != shape2:
            raise MergeError(f"{where}: dataset {name!r} is {dt2}{shape2} vs {dt}{shape}")
        if "class_names" in skip and name == "labels":
            continue  # each tar shard's own classes: joined by _merged_classes
        if dattrs != dattrs2:
            raise MergeError(f"{where}: attrs of dataset {name!r} differ ({dattrs2} vs {dattrs})")


def _full_run(settings: dict, n_rows: int) -> dict:
    """The settings an unsharded run of the same data would record."""
    full = {**settings, "shard": "0/1", "row_start": 0, "row_stop": n_rows}
    if settings.get("shard_unit") == "tar":  # every tar; the list's fingerprint (source_fingerprint) stays
        full.update(tar_start=0, tar_stop=settings["tar_count"])
        full.pop("tars_fingerprint", None)
    return full


def _merged_attrs(infos: list[dict], ref: dict, n: int, copy: bool, classes: list[str] | None) -> dict:
    attrs = {k: v for k, v in ref["attrs"].items() if k not in _MERGE_ATTRS and k not in _RUN_ATTRS}
    if ref["unit"] == "tar":
        attrs.pop("tars_fingerprint", None)
        attrs.update(n_rows=n, tar_start=0, tar_stop=ref["tar_count"])
        if classes is not None:
            attrs["class_names"] = classes
    attrs.update(shard="0/1", row_start=0, row_stop=n,
                 settings_json=json.dumps(_full_run(ref["settings"], n), sort_keys=True),
                 created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 merged_from=[os.path.basename(s["path"]) for s in infos], virtual=not copy)
    attrs.pop("complete", None)  # set last, once every dataset is written
    if not copy:
        attrs["note"] = VDS_NOTE
    return attrs


# -- writing -----------------------------------------------------------------------------------
def _dataset_attrs(name: str, dattrs: dict, classes: list[str] | None) -> dict:
    return {**dattrs, "class_names": classes} if name == "labels" and classes is not None else dattrs


def _write_vds(f, infos: list[dict], ref: dict, n: int, out_dir: str, classes: list[str] | None) -> list[str]:
    import h5py

    sources = [os.path.relpath(os.path.abspath(s["path"]), out_dir) for s in infos]
    for name, (_, (dtype, shape, _), dattrs) in ref["datasets"].items():
        if name == "labels" and any("remap" in s for s in infos):
            # Renumbered labels cannot be a view of the shards' own: 8 bytes a row, written out.
            ds = f.create_dataset(name, data=_remapped_labels(infos, n))
            for key, value in _dataset_attrs(name, dattrs, classes).items():
                ds.attrs[key] = value
            continue
        layout = h5py.VirtualLayout(shape=(n, *shape), dtype=dtype)
        for s, rel in zip(infos, sources, strict=True):
            a, b = s["row_start"], s["row_stop"]
            if b > a:  # HDF5 cannot map an empty selection
                layout[a:b] = h5py.VirtualSource(rel, name, shape=(b - a, *shape), dtype=dtype)
        ds = f.create_virtual_dataset(name, layout, fillvalue=None)
        for key, value in _dataset_attrs(name, dattrs, classes).items():
            ds.attrs[key] = value
    return sources


def _remapped_labels(infos: list[dict], n: int) -> np.ndarray:
    import h5py

    out = np.zeros(n, np.int64)
    for s in infos:
        if s["rows"]:
            with h5py.File(s["path"], "r") as src:
                labels = src["labels"][()]
            out[s["row_start"]:s["row_stop"]] = s["remap"][labels] if "remap" in s else labels
    return out


def _write_copy(f, infos: list[dict], ref: dict, n: int, progress: bool, label: str,
                classes: list[str] | None) -> None:
    import h5py
    from tqdm.auto import tqdm

    bar = tqdm(total=n, unit="row", desc=f"merge {label}", disable=not progress,
               dynamic_ncols=True)
    try:
        for name, (_, (dtype, shape, _), dattrs) in ref["datasets"].items():
            # An empty tar shard may lack the labels dataset; row shards all have every dataset.
            holding = [s for s in infos if s["rows"] or s["unit"] == "rows"]
            chunk_rows = max((s["datasets"][name][1][2] or (0,))[0] for s in holding)
            chunks = (min(chunk_rows, n), *shape) if chunk_rows and n else None
            ds = f.create_dataset(name, shape=(n, *shape), dtype=dtype, chunks=chunks)
            for key, value in _dataset_attrs(name, dattrs, classes).items():
                ds.attrs[key] = value
            row_bytes = max(1, int(np.prod(shape, dtype=np.int64)) * max(1, dtype.itemsize))
            block = max(1, _BLOCK_BYTES // row_bytes)
            for s in holding:
                remap = s.get("remap") if name == "labels" else None
                with h5py.File(s["path"], "r") as src:
                    sds = src[name]
                    for a in range(0, s["row_stop"] - s["row_start"], block):
                        b = min(a + block, s["row_stop"] - s["row_start"])
                        ds[s["row_start"] + a:s["row_start"] + b] = sds[a:b] if remap is None else remap[sds[a:b]]
                        if name == "features":
                            bar.update(b - a)
    finally:
        bar.close()


# -- stage two's guard -------------------------------------------------------------------------
def check_sources(file, *, error=MergeError) -> list[str]:
    """Raise ``error`` unless every source file of every virtual dataset of ``file`` is present and fits.

    ``file`` is a path or an open ``h5py.File``. HDF5 silently returns fill values (zeros) for a
    missing VDS source, so readers must call this before trusting a merged file. Relative source
    names are resolved against the merged file's directory, as HDF5 does; a source outside that
    directory (absolute elsewhere, ``..``, or a symlink out of it) is refused, so a hostile merged
    file cannot read rows from other files. Returns the absolute
    source paths checked (empty for an ordinary file).
    """
    import h5py

    own = not isinstance(file, h5py.File)
    f = h5py.File(file, "r") if own else file
    try:
        base = os.path.dirname(os.path.abspath(f.filename))
        needed: dict[str, list] = {}
        for name, ds in f.items():
            if isinstance(ds, h5py.Dataset) and ds.is_virtual:
                for m in ds.virtual_sources():
                    path = m.file_name if os.path.isabs(m.file_name) else os.path.join(base, m.file_name)
                    lo, hi = m.vspace.get_select_bounds()
                    shape = (hi[0] - lo[0] + 1, *ds.shape[1:])
                    needed.setdefault(path, []).append((name, m.dset_name, shape))
        for path, uses in needed.items():
            if not _inside(path, base):
                # A hostile merged file could map rows from any HDF5 file the reader can open.
                raise error(f"{f.filename}: virtual dataset reads {path}, outside the merged file's folder "
                            f"{base}; refused (bneck merge only writes sources beside or below the merge)")
            if not os.path.isfile(path):
                raise error(f"{f.filename}: merged file needs its shard file {path}, which is missing; "
                            "put the shard files back next to it, or re-merge with `bneck merge --copy`")
            try:
                with h5py.File(path, "r") as src:
                    for _, dset_name, shape in uses:
                        if dset_name not in src or tuple(src[dset_name].shape) != tuple(shape):
                            raise error(f"{f.filename}: shard file {path} no longer matches the merge "
                                        f"(dataset {dset_name!r}); re-run `bneck merge`")
                    if not bool(src.attrs.get("complete", False)):
                        raise error(f"{f.filename}: shard file {path} is not a complete feature file")
            except OSError as exc:
                raise error(f"{f.filename}: shard file {path} cannot be read ({exc})") from None
        return sorted(needed)
    finally:
        if own:
            f.close()


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` (symlinks resolved) is ``folder`` or below it."""
    real, top = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, top]) == top

"""Describe a feature file for ``bneck info``: shapes, counts, provenance attrs and bad rows."""

from __future__ import annotations

import collections
import os

import numpy as np

from features.attrs import check_root_attrs, check_shapes, plain, read_checked_attrs


def describe_file(path: str, *, max_bad: int = 20) -> dict:
    """Summary of one HDF5 feature file as plain JSON-able data."""
    import h5py

    from features.merge import check_sources

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:  # h5py's own message does not name the file
        raise OSError(f"{path}: cannot be read as HDF5 ({exc})") from None
    with f:
        checked = read_checked_attrs(f, path)  # sizes before anything is read: the file may be hostile
        if checked.get("producer") != "bneck" or "format_version" not in checked:
            # `bneck extract` of a partial run writes nothing here; anything else is someone else's file.
            raise ValueError(f"{path}: not a bneck feature file (no producer='bneck'/format_version attrs)")
        check_root_attrs(checked, path)
        check_sources(f, error=ValueError)  # a merged file whose shard files are gone would read as zeros
        check_shapes(f, checked, path)
        attrs = {k: v for k, v in checked.items() if k != "settings_json"}
        datasets = {name: {"shape": list(d.shape), "dtype": str(d.dtype),
                           "chunks": list(d.chunks) if d.chunks else None}
                    for name, d in f.items() if isinstance(d, h5py.Dataset)}
        n = len(f["valid"]) if "valid" in f else 0
        valid = f["valid"][()] if "valid" in f else np.ones(n, bool)
        bad_idx = np.flatnonzero(~valid)
        reasons = [r.decode() if isinstance(r, bytes) else r for r in f["reason"][bad_idx]] if n else []
        paths = [p.decode() if isinstance(p, bytes) else p for p in f["paths"][bad_idx[:max_bad]]] if n else []
        info = {
            "path": path,
            "rows": n,
            "task": attrs.get("task", "classification"),
            "valid": int(valid.sum()),
            "bad": int(len(bad_idx)),
            "bad_reasons": dict(collections.Counter(reasons)),
            "bad_rows": [{"row": int(i), "path": p, "reason": r}
                         for i, p, r in zip(bad_idx[:max_bad].tolist(), paths, reasons[:max_bad])],
            "datasets": datasets,
            "attrs": attrs,
        }
        if "labels" in f:
            labels = f["labels"][()]
            names = [plain(x) for x in f["labels"].attrs.get("class_names", [])]
            counts = np.bincount(labels[valid], minlength=len(names)) if len(names) else []
            info["classes"] = {str(nm): int(c) for nm, c in zip(names, counts)}
        if "groups" in f:  # near-duplicates (frames of one video): stage two splits by them
            per_group = collections.Counter(f["groups"].asstr()[()].tolist())
            info["groups"] = {"by": plain(f["groups"].attrs["group_by"]), "count": len(per_group),
                              "rows_min": min(per_group.values(), default=0),
                              "rows_max": max(per_group.values(), default=0)}
        if "targets" in f:
            t = f["targets"][()]
            names = [plain(x) for x in f["targets"].attrs.get("target_names", [])]
            present = np.isfinite(t).sum(axis=0)
            info["targets_present"] = {str(nm): int(c) for nm, c in zip(names, present)}
            info["rows_with_all_targets"] = int(np.isfinite(t).all(axis=1).sum())
    return info


def _span(a: dict) -> str:
    """Which part of the source the file covers: its rows, and for a webdataset source its tars."""
    rows = f"rows [{a.get('row_start')}, {a.get('row_stop')})" if "row_start" in a else f"{a.get('n_rows')} rows"
    if a.get("shard_unit") != "tar":
        return rows
    return f"{rows} from tars [{a.get('tar_start')}, {a.get('tar_stop')}) of {a.get('tar_count')}"


def format_info(info: dict) -> str:
    """Human-readable text for :func:`describe_file`."""
    a = info["attrs"]
    lines = [f"{info['path']}: {info['rows']} rows, {info['valid']} valid, {info['bad']} bad",
             f"  backbone {a.get('backbone')} layer {a.get('layer')} pooling {a.get('pooling')} "
             f"input {a.get('input_size')} precision {a.get('precision')} store {a.get('store_dtype')} "
             f"flip {a.get('flip')} runtime {a.get('runtime')}",
             f"  weights {a.get('weights')} sha256 {str(a.get('weights_sha256'))[:16] or '-'}",
             f"  source {a.get('source_kind')} fingerprint {str(a.get('source_fingerprint'))[:16]} "
             f"shard {a.get('shard')} {_span(a)} "
             f"format v{a.get('format_version')} complete {a.get('complete')}",
             *([f"  int8 calibration: {a['calibration']}"] if a.get("calibration") else []),
             f"  task {info['task']}" + (" (unlabelled: no labels or targets; `bneck predict MODEL FILE` runs a "
                                         "trained head on it)" if info["task"] == "none" else ""),
             "  datasets:"]
    for name, d in info["datasets"].items():
        lines.append(f"    {name:18s} {str(tuple(d['shape'])):22s} {d['dtype']}")
    if "classes" in info:
        lines.append("  classes: " + ", ".join(f"{k}={v}" for k, v in info["classes"].items()))
    if "groups" in info:
        g = info["groups"]
        lines.append(f"  groups: {g['count']} by {g['by']} ({g['rows_min']}-{g['rows_max']} rows each); "
                     "validation splits keep each one on one side")
    if "targets_present" in info:
        lines.append(f"  rows with every target: {info['rows_with_all_targets']}")
    if info["bad"]:
        lines.append("  bad rows: " + ", ".join(f"{k}={v}" for k, v in info["bad_reasons"].items()))
        for r in info["bad_rows"]:
            lines.append(f"    row {r['row']}: {r['path']} ({r['reason']})")
    return "\n".join(lines)

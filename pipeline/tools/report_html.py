"""``bneck report``: one static HTML page per model, and a comparison page when there are several.

    from pipeline.tools.report_html import write_report
    write_report([("models/svm", "test.h5"), ("models/dense", "test.h5")], "report/")

The folder holds ``index.html``, the PNGs it shows and ``report.json`` (the figures, and the list of
files a rerun replaces). Nothing is fetched at view time: no script, no CDN, no server, so the
page opens from disk in any browser, offline. With one model ``index.html`` is that model's page;
with several it is the comparison (a table and overlaid plots per feature file), and each model's
page lives in a subfolder named after it.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import struct
import time

import numpy as np
from tqdm import tqdm

from features.fsutil import atomic_write_bytes
from pipeline.tools import report_plots as plots
from pipeline.tools.report_data import (Run, collect, headline, keypoint_errors, keypoint_pairs, model_card,
                                        provenance, row_rmse, scores_are_probabilities, typical_and_worst,
                                        worst_misclassified)
from pipeline.tools.report_gallery import (PRED_RGB, TRUE_RGB, draw_keypoints, load_images, png_bytes,
                                           row_sources, thumbnail)

GENERATOR = "bneck report"
#: Gallery sizes: thumbnails per gallery and their longer edge in pixels. They bound a page's weight
#: whatever the number of rows: a 10,000-row report holds the same few dozen thumbnails as a 100-row one.
GALLERY = 24
THUMB_SIDE = 128
FACE_SIDE = 192
MAX_BAD_ROWS_LISTED = 200


class ReportError(ValueError):
    """The report cannot be written where asked (an existing folder that is not a bneck report)."""


def check_output(output) -> None:
    """Raise :class:`ReportError` unless ``output`` is absent, empty, or an earlier bneck report."""
    if not os.path.lexists(output):
        return
    if not os.path.isdir(output) or os.path.islink(output):
        raise ReportError(f"{output}: exists and is not a directory; choose another -o")
    if os.listdir(output) and _previous_files(output) is None:
        raise ReportError(f"{output}: a non-empty folder that is not a bneck report (no report.json by "
                          f"{GENERATOR}); choose a new or empty folder so nothing of yours is overwritten")


def _previous_files(output) -> list[str] | None:
    try:
        with open(os.path.join(output, "report.json"), encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return None
    return list(doc.get("files", [])) if isinstance(doc, dict) and doc.get("generator") == GENERATOR else None


def write_report(pairs, output, *, top_k: int = 5, gallery: int = GALLERY, progress: bool = True,
                 trust_pickle: bool = False) -> list[Run]:
    """Score each ``(model_dir, features)`` pair (or take a ready :class:`Run`) and write the report to ``output``.

    Returns the runs, whose ``result`` is exactly what ``bneck evaluate --json`` prints for that pair.
    ``trust_pickle`` loads old ``head.joblib`` heads (see :func:`pipeline.modeldir.load_model_dir`).
    Raises :class:`~pipeline.tools.report_plots.MissingPlots` without matplotlib and
    :class:`ReportError` for an ``output`` it must not overwrite, both before any scoring.
    """
    plots.require_matplotlib()
    check_output(output)
    pairs = list(pairs)
    runs = [p if isinstance(p, Run) else collect(p[0], p[1], top_k=top_k, trust_pickle=trust_pickle)
            for p in tqdm(pairs, desc="report: scoring", unit="model", disable=not progress or len(pairs) < 2)]
    _unique_names(runs)
    out = _Folder(output)
    if len(runs) == 1:
        pages = {runs[0].name: _model_page(runs[0], out, "", gallery=gallery, back=None)}
    else:
        pages = {r.name: _model_page(r, out, r.name, gallery=gallery, back="../index.html")
                 for r in tqdm(runs, desc="report: pages", unit="model", disable=not progress)}
        _comparison_page(runs, out)
    doc = {"generator": GENERATOR, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "models": [{"name": r.name, "page": pages[r.name], **_jsonable(r.result)} for r in runs],
           "images": out.images, "files": sorted(out.files) + ["report.json"]}
    out.finish(json.dumps(doc, indent=1, allow_nan=True).encode())
    return runs


def _unique_names(runs) -> None:
    """Give each run a distinct folder name: the model dir's, then with its feature file, then numbered."""
    seen: dict[str, int] = {}
    for r in runs:
        base = r.name
        if sum(x.name == base for x in runs) > 1:
            base = f"{r.name}-{os.path.splitext(os.path.basename(r.features))[0]}"
        name = base
        while name in seen or name in ("index.html", "report.json"):
            seen[base] = seen.get(base, 1) + 1
            name = f"{base}-{seen[base]}"
        seen[name] = 1
        r.name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


class _Folder:
    """The report folder: files written atomically, the PNGs' sizes noted, an earlier report's files replaced."""

    def __init__(self, root):
        self.root = os.fspath(root)
        self.files: set[str] = set()
        self.images: dict[str, list[int]] = {}
        old = _previous_files(self.root) if os.path.isdir(self.root) else None
        os.makedirs(self.root, exist_ok=True)
        self._old = old or []

    def write(self, rel: str, data: bytes) -> str:
        path = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Not durable: a report is regenerated in seconds, an fsync per thumbnail is not worth it.
        atomic_write_bytes(path, data, durable=False)
        self.files.add(rel)
        if rel.endswith(".png"):
            self.images[rel] = list(png_size(data))
        return rel

    def finish(self, report_json: bytes) -> None:
        # report.json last: until it is written, a rerun still sees the earlier report's list.
        for rel in self._old:
            if rel not in self.files and rel != "report.json" and ".." not in rel.split("/"):
                path = os.path.join(self.root, rel)
                if os.path.isfile(path):
                    os.remove(path)
        for d in {os.path.dirname(r) for r in self._old} - {os.path.dirname(r) for r in self.files}:
            if d and os.path.isdir(os.path.join(self.root, d)) and not os.listdir(os.path.join(self.root, d)):
                shutil.rmtree(os.path.join(self.root, d), ignore_errors=True)
        atomic_write_bytes(os.path.join(self.root, "report.json"), report_json, durable=False)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return struct.unpack(">II", data[16:24])


# -- HTML ------------------------------------------------------------------------------------------

def e(text) -> str:
    """HTML-escaped text; file names that are not valid UTF-8 keep their \\x escapes."""
    return html.escape(str(text).encode("utf-8", "backslashreplace").decode("utf-8"))


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1180px;
padding:0 18px 40px;color:#1d232a;line-height:1.4}
h1{font-size:1.6em;margin:18px 0 4px}h2{border-bottom:2px solid #dde3ea;padding-bottom:3px;margin-top:30px}
h3{margin:18px 0 6px}.sub{color:#5b6672;margin:0 0 10px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:.92em}td,th{padding:3px 9px;border-bottom:1px solid #e6eaee;
text-align:left;vertical-align:top}th{background:#f3f6f9}td.num{text-align:right;font-variant-numeric:tabular-nums}
.card td:first-child{color:#5b6672;white-space:nowrap}.mono{font-family:ui-monospace,Menlo,Consolas,monospace;
font-size:.88em;word-break:break-all}
.metrics{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0}.metric{background:#f3f6f9;border-radius:6px;
padding:8px 14px}.metric b{display:block;font-size:1.35em}.metric span{color:#5b6672;font-size:.85em}
.plots{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}img.plot{max-width:100%;height:auto;
border:1px solid #e6eaee}
.gallery{display:flex;flex-wrap:wrap;gap:8px}.gallery figure{margin:0;width:200px;font-size:.8em;background:#f7f9fb;
border:1px solid #e6eaee;border-radius:4px;padding:4px}.gallery img{display:block;margin:0 auto;
image-rendering:pixelated}.gallery figcaption{margin-top:3px;word-break:break-all}
.missing{display:flex;align-items:center;justify-content:center;height:128px;background:#fbeaea;color:#8a1f1f;
text-align:center;padding:4px}.bad{color:#8a1f1f}.good{color:#1c6b2a}
.legend span{display:inline-block;width:11px;height:11px;margin:0 4px 0 12px;vertical-align:middle}
details summary{cursor:pointer;color:#34526f}
"""


def _page(title: str, subtitle: str, body: list[str]) -> bytes:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"generator\" content=\"{GENERATOR}\"><title>{e(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{CSS}</style>"
            f"</head><body><h1>{e(title)}</h1><p class=\"sub\">{subtitle}</p>\n" + "\n".join(body)
            + f"\n<p class=\"sub\">written by {GENERATOR} on {e(time.strftime('%Y-%m-%d %H:%M'))}</p>"
            "</body></html>\n").encode("utf-8")


def _table(header, rows, classes=None) -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td{_cls(classes, j)}>{c}</td>" for j, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cls(classes, j) -> str:
    return f' class="{classes[j]}"' if classes and classes[j] else ""


def _kv(rows, css="card") -> str:
    return f"<table class=\"{css}\">" + "".join(f"<tr><td>{e(k)}</td><td class=\"mono\">{e(v)}</td></tr>"
                                                for k, v in rows) + "</table>"


def _img(out: _Folder, rel: str, data: bytes, alt: str, css: str = "plot") -> str:
    out.write(rel, data)
    w, h = out.images[rel]
    src = rel.rsplit("/", 1)[-1] if "/" in rel else rel
    return f'<img class="{css}" src="{e(src)}" width="{w}" height="{h}" alt="{e(alt)}">'


def _metrics_boxes(items) -> str:
    return "<div class=\"metrics\">" + "".join(f"<div class=\"metric\"><b>{e(v)}</b><span>{e(k)}</span></div>"
                                               for k, v in items) + "</div>"


# -- one model -------------------------------------------------------------------------------------

def _model_page(run: Run, out: _Folder, folder: str, *, gallery: int, back: str | None) -> str:
    """Write one model's page (and its PNGs) under ``folder``; return the page's path in the report."""
    def rel(name):
        return f"{folder}/{name}" if folder else name

    body = []
    if back:
        body.append(f'<p><a href="{back}">&larr; all models</a></p>')
    body.append("<h2>Results</h2>" + _metrics_boxes(headline(run)))
    body.append("<h2>Model card</h2>" + _kv(model_card(run)))
    first, rest = provenance(run.attrs)
    fold = f"<details><summary>all {len(rest)} other attributes</summary>{_kv(rest)}</details>" if rest else ""
    body.append(f"<h3>Evaluated on <span class=\"mono\">{e(run.features)}</span></h3>" + _kv(first) + fold)
    body.append(_curves_section(run, out, rel))
    if run.task == "classification":
        body.append(_classification_section(run, out, rel, gallery))
    else:
        body.append(_keypoint_section(run, out, rel, gallery))
    body.append(_bad_rows_section(run))
    subtitle = (f"{e(run.meta.get('head'))} head on {e(run.meta.get('features', {}).get('backbone'))}/"
                f"{e(run.meta.get('features', {}).get('layer'))} features, evaluated on {e(run.features)}")
    return out.write(rel("index.html"), _page(f"bneck report: {run.name}", subtitle, body))


def _curves_section(run: Run, out: _Folder, rel) -> str:
    parts = []
    if run.history:
        parts.append(_img(out, rel("learning_curves.png"), plots.learning_curves([(run.name, run.history,
                                                                                   run.best_epoch)]),
                          "learning curves: loss and metric per epoch, train and validation"))
    if run.grid:
        parts.append(_img(out, rel("grid_scores.png"), plots.grid_scores(run.grid),
                          "grid search: cross-validated score per grid value"))
    if not parts:
        return ("<h2>Training</h2><p class=\"sub\">This head has no per-epoch history and no grid search "
                "(a single fit), so there is no curve to draw.</p>")
    table = ""
    if run.grid:
        table = _table(["params", "mean cv score", "std", "rank"],
                       [[f"<span class=\"mono\">{e(json.dumps(g['params']))}</span>", f"{g['mean']:.4f}",
                         f"{g['std']:.4f}", str(g["rank"])] for g in sorted(run.grid, key=lambda g: g["rank"])],
                       [None, "num", "num", "num"])
    return "<h2>Training</h2><div class=\"plots\">" + "".join(parts) + "</div>" + table


def _classification_section(run: Run, out: _Folder, rel, gallery: int) -> str:
    r, names = run.result, run.names
    parts = ["<h2>Classification</h2><div class=\"plots\">",
             _img(out, rel("confusion_matrix.png"), plots.confusion_matrix(r["confusion_matrix"], names),
                  "confusion matrix, normalised per true class"),
             _img(out, rel("per_class.png"), plots.per_class_bars([(run.name, r["per_class"])], names),
                  "precision and recall per class"), "</div>"]
    rows = [[e(c), f"{m['precision']:.3f}", f"{m['recall']:.3f}", str(m["support"])] for c, m in r["per_class"].items()]
    parts.append("<details><summary>precision and recall of every class</summary>"
                 + _table(["class", "precision", "recall", "support"], rows, [None, "num", "num", "num"])
                 + "</details>")
    worst = worst_misclassified(run.truth, run.outputs, gallery)
    n_wrong = int((run.outputs.argmax(axis=1) != run.truth).sum()) if len(run.truth) else 0
    word = "p" if scores_are_probabilities(run.outputs) else "score"
    parts.append(f"<h3>The worst-misclassified images ({len(worst)} of {n_wrong} wrong)</h3>"
                 f"<p class=\"sub\">Sorted by how much higher the head scored the wrong class than the true one; "
                 f"{'p is the predicted probability' if word == 'p' else 'score is the head decision value'}.</p>")
    items = []
    if worst:
        images = load_images(row_sources(run.attrs, run.paths, [int(run.rows[w["i"]]) for w in worst]))
        for k, (w, (arr, reason)) in enumerate(zip(worst, images)):
            row = int(run.rows[w["i"]])
            caption = (f"<b>true</b> {e(names[w['true']])} &middot; <b class=\"bad\">predicted</b> "
                       f"{e(names[w['pred']])}<br>{word}={w['score_pred']:.3f} (true class {w['score_true']:.3f})"
                       f"<br><span class=\"mono\" title=\"{e(run.paths[row])}\">row {row}: "
                       f"{e(os.path.basename(run.paths[row]))}</span>")
            items.append(_figure(out, rel(f"wrong_{k:03d}.png"), arr, reason, run.paths[row], caption))
    else:
        items.append("<p class=\"good\">No misclassified image.</p>")
    parts.append("<div class=\"gallery\">" + "".join(items) + "</div>")
    return "".join(parts)


def _figure(out: _Folder, rel: str, arr, reason: str, path: str, caption: str, *, drawn=None) -> str:
    if arr is None:
        pic = f"<div class=\"missing\">image {e(reason)}:<br>{e(path)}</div>"
    else:
        img = drawn if drawn is not None else thumbnail(arr, THUMB_SIDE)[0]
        pic = _img(out, rel, png_bytes(img), f"row image {path}", css="thumb")
    return f"<figure>{pic}<figcaption>{caption}</figcaption></figure>"


def _keypoint_section(run: Run, out: _Folder, rel, gallery: int) -> str:
    errs = keypoint_errors(run.result, run.names)
    parts = ["<h2>Keypoints</h2><div class=\"plots\">",
             _img(out, rel("keypoint_rmse.png"), plots.keypoint_bars([(run.name, errs)]), "RMSE per keypoint"),
             _img(out, rel("error_cdf.png"), plots.error_cdf([(run.name, row_rmse(run.truth, run.outputs))]),
                  "distribution of the per-face RMSE"), "</div>"]
    parts.append("<details><summary>error of every keypoint</summary>" + _table(
        ["keypoint", "RMSE px", "mean distance px", "values"],
        [[e(x["name"]), f"{x['rmse_px']:.3f}", f"{x['mean_distance_px']:.3f}", str(x["n"])] for x in errs],
        [None, "num", "num", "num"]) + "</details>")
    err = row_rmse(run.truth, run.outputs)
    typical, worst = typical_and_worst(err, max(1, gallery // 2))
    points = keypoint_pairs(run.names)
    legend = (f"<p class=\"legend\"><span style=\"background:rgb{TRUE_RGB}\"></span>true"
              f"<span style=\"background:rgb{PRED_RGB}\"></span>predicted (smaller, on top) &middot; "
              "the subject's left: disc, right: square, centre: diamond "
              "(Kaggle names points from the subject's view: left is on the image's right)</p>")
    parts.append(legend)
    images = load_images(row_sources(run.attrs, run.paths, [int(run.rows[i]) for i in typical + worst]))
    for title, group, offset in (("Typical faces (error nearest the median)", typical, 0),
                                 ("The worst faces", worst, len(typical))):
        items = []
        for k, i in enumerate(group):
            arr, reason = images[offset + k]
            row = int(run.rows[i])
            drawn = None
            if arr is not None:
                img, s = thumbnail(arr, FACE_SIDE)
                drawn = draw_keypoints(img, s, run.truth[i], run.outputs[i], points)
            caption = (f"RMSE {err[i]:.2f} px<br><span class=\"mono\" title=\"{e(run.paths[row])}\">row {row}: "
                       f"{e(os.path.basename(run.paths[row]))}</span>")
            items.append(_figure(out, rel(f"face_{offset + k:03d}.png"), arr, reason, run.paths[row], caption,
                                 drawn=drawn))
        parts.append(f"<h3>{e(title)}</h3><div class=\"gallery faces\">" + "".join(items) + "</div>")
    return "".join(parts)


def _bad_rows_section(run: Run) -> str:
    bad = run.bad_rows
    if not bad:
        return "<h2>Bad rows</h2><p class=\"good\">Every row of the feature file was readable.</p>"
    counts: dict[str, int] = {}
    for _i, _p, why in bad:
        counts[why] = counts.get(why, 0) + 1
    summary = ", ".join(f"{n} {e(why)}" for why, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    shown = bad[:MAX_BAD_ROWS_LISTED]
    more = f" (the first {len(shown)} listed)" if len(bad) > len(shown) else ""
    return (f"<h2>Bad rows</h2><p>{len(bad)} of {run.attrs.get('n_rows', len(run.paths))} rows could not be read "
            f"and were skipped: {summary}{more}.</p>"
            + _table(["row", "path", "reason"], [[str(i), f"<span class=\"mono\">{e(p)}</span>", e(why)]
                                                 for i, p, why in shown], ["num", None, None]))


# -- several models --------------------------------------------------------------------------------

def _comparison_page(runs, out: _Folder) -> None:
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.features, []).append(r)
    body = []
    for g, (features, members) in enumerate(groups.items()):
        body.append(f"<h2>On <span class=\"mono\">{e(features)}</span></h2>")
        body.append(_comparison_table(members))
        pics = []
        with_history = [r for r in members if r.history]
        if with_history:
            pics.append(_img(out, f"compare_{g}_curves.png", plots.learning_curves(
                [(r.name, r.history, r.best_epoch) for r in with_history]), "learning curves of the models"))
        if members[0].task == "classification":
            pics.append(_img(out, f"compare_{g}_per_class.png", plots.per_class_bars(
                [(r.name, r.result["per_class"]) for r in members], members[0].names),
                "precision and recall per class, per model"))
        else:
            pics.append(_img(out, f"compare_{g}_keypoints.png", plots.keypoint_bars(
                [(r.name, keypoint_errors(r.result, r.names)) for r in members]), "RMSE per keypoint, per model"))
            pics.append(_img(out, f"compare_{g}_error_cdf.png", plots.error_cdf(
                [(r.name, row_rmse(r.truth, r.outputs)) for r in members]), "per-face RMSE distribution, per model"))
        body.append("<div class=\"plots\">" + "".join(pics) + "</div>")
    subtitle = f"{len(runs)} models on {len(groups)} feature file{'s' if len(groups) > 1 else ''}"
    out.write("index.html", _page("bneck report: model comparison", subtitle, body))


def _comparison_table(members) -> str:
    cls = members[0].task == "classification"
    key = "accuracy" if cls else "rmse_px"
    best = (max if cls else min)(r.result[key] for r in members)
    header = ["model", "head", "backbone / layer"] + (["accuracy", "top-5"] if cls else ["RMSE px", "MAE px"]) + [
        "rows", "train s", "best epoch", "parameters"]
    rows = []
    for r in members:
        res, prov = r.result, r.meta.get("features", {})
        second = res.get("top5_accuracy") if cls else res.get("mae_px")
        value = f"{res[key]:.4f}" if cls else f"{res[key]:.3f}"
        rows.append([f"<a href=\"{e(r.name)}/index.html\">{e(r.name)}</a>", e(r.meta.get("head")),
                     e(f"{prov.get('backbone')} / {prov.get('layer')}"),
                     f"<b>{value}</b>" if res[key] == best else value,
                     "-" if second is None else f"{second:.4f}" if cls else f"{second:.3f}", str(res["n"]),
                     f"{r.meta.get('training', {}).get('seconds', 0):.1f}",
                     "-" if r.best_epoch is None else str(r.best_epoch),
                     f"<span class=\"mono\">{e(_short_params(r))}</span>"])
    return _table(header, rows, [None, None, None, "num", "num", "num", "num", "num", None])


def _short_params(run: Run) -> str:
    grid = (run.meta.get("training", {}).get("grid") or {}).get("best_params")
    if grid:
        return "grid best " + json.dumps(grid, sort_keys=True)
    params = run.meta.get("params", {})
    text = json.dumps({k: v for k, v in params.items() if v is not None}, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."

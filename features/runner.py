"""The stage-one runner: manifest -> decode (thread pool) -> mapper (model) -> writer thread -> HDF5.

The shard is the unit of work and the chunk is the unit of commit. Decoding runs ahead of the
model in a thread pool (Pillow releases the GIL), the model runs in the main thread, and a writer
thread commits finished chunks so disk I/O hides behind compute.
"""

from __future__ import annotations

import collections
import logging
import os
import dataclasses
import time

import numpy as np

from features import FORMAT_VERSION, backbones, images, keypoints
from features.config import ExtractConfig, ExtractSummary, TooManyBadImages, shard_output
from features.faults import fault_point
from features.mapper import batches, int8
from features.mapper.runtimes import make_extractor, resolve_runtime, resolve_xla
from features.reader.fs import absolute
from features.reader.manifest import Manifest, parse_shard
from features.reader.sources import check_found, read_source
from features.writer import assemble, finished, partial
from features.writer.changes import SourceView
from features.writer.commit import ChunkWriter, check_signal, install_signal_handlers, restore_signal_handlers

log = logging.getLogger("bneck")

# Fault-injection hook for the kill/resume tests: seconds to sleep after each batch, so a
# test can reliably kill the process mid-run. Never set in normal use.
_FAULT_DELAY = float(os.environ.get("BNECK_TEST_BATCH_DELAY", "0") or 0)
# Second testing hook, BNECK_TEST_KILL_AT="POINT:N[:SIGNAL]": SIGKILL (or SIGNAL) this process
# the N-th time a named point is reached, so tests/reliability/ can kill at exact places (before
# the first batch, mid-batch, mid-flush, mid-finalize). Points and details: features.faults.


# Batches submitted to the model before the oldest is collected: the next batch is staged (on
# the GPU: copied to the device) and queued while this one computes, so the device never waits
# for the main thread between batches.
IN_FLIGHT = 2


# Module-level name so tests can intercept collected batches (tests/features/test_runner.py).


def extract(cfg: ExtractConfig) -> ExtractSummary:
    """Run stage one as configured; returns the summary. Raises on fatal errors (nothing finished is lost)."""
    t0 = time.time()
    fault_point("start")
    cfg.check()  # a wrong setting fails here, before the dataset is read
    if cfg.batch_size == "auto":
        from features.mapper.device import resolve_batch_size

        cfg = dataclasses.replace(cfg, batch_size=resolve_batch_size("auto"))
    spec = backbones.get(cfg.backbone)
    input_size = backbones.parse_input_size(cfg.input_size, spec)
    layer = cfg.layer or spec.default_layer
    source_options = {k: v for k, v in cfg.source.items() if v is not None}
    shard = parse_shard(cfg.shard) if cfg.shard else None
    manifest = read_source(cfg.data, progress=cfg.progress, shard=shard, **source_options)
    check_found(cfg.data, manifest)  # a wrong --image-root fails here, before the backbone is built
    part = manifest.part  # a source split by whole tars has read this shard's own tars only: all its rows
    start, stop = (0, len(manifest)) if part or not shard else manifest.shard_range(*shard)
    out = shard_output(cfg.output, cfg.shard)
    runtime = resolve_runtime(cfg.runtime, spec)
    from features import weights as W
    from features.mapper import device

    precision = device.resolve_precision(cfg.precision, task=manifest.task)
    if runtime == "openvino" and precision == "bf16" and not device.cpu_has_bf16():
        # OpenVINO would run the bf16 request in f32 and the attrs would say bf16: record the truth.
        log.warning("this CPU has no native bf16 (AMX or AVX512_BF16): OpenVINO runs --precision bf16 in fp32, "
                    "so the file records precision fp32")
        precision = "fp32"
    if precision == "int8" and manifest.task == "regression":
        log.warning("--precision int8 on keypoint/regression targets: bench/quality.py measured int8 features 42% "
                    "worse in RMSE than fp32 on the demo faces (1.12 vs 0.79 px); --precision auto uses fp32 here")
    if precision == "int8" and not device.cpu_has_int8_dot():
        log.warning("this CPU has no int8 dot-product instructions (VNNI or AMX): --precision int8 runs, but is "
                    "no faster than fp32 here (bench/extract.py on an AVX2-only CPU: ResNet50 5.6 vs 6.0 img/s) "
                    "and changes the features; --precision fp32 is the better choice")
    xla = resolve_xla(cfg.xla, runtime)
    if runtime == "openvino" and precision == "fp16":  # runtime auto resolved to openvino
        raise ValueError("--precision fp16 is a GPU setting; with --runtime openvino use bf16 or fp32")
    # A test set calibrated on the training set's images gets the very same int8 model (cached).
    # stats every file: computed once. A tar shard's rows are its own, so it is compared across shards by
    # the fingerprint of the whole tar list, and resumed by that of its own tars (shard_settings below).
    fingerprint = part.fingerprint if part else manifest.fingerprint()
    cal_manifest = manifest
    if cfg.calibrate_on:
        cal_manifest = read_source(cfg.calibrate_on, **source_options)
    elif part and shard and precision == "int8":
        # Every shard must quantize alike, so calibration spreads over all tars: the one reason a tar
        # shard reads the headers of the others.
        cal_manifest = read_source(cfg.data, progress=cfg.progress, **source_options)
    calibration = int8.calibration_for(precision, runtime, cal_manifest, cfg.calibration_images, input_size,
                                       fingerprint=None if cfg.calibrate_on else fingerprint)
    chunk_rows = cfg.chunk_rows or cfg.batch_size * 8
    shard_settings = {"row_start": start, "row_stop": stop}
    if part:
        shard_settings = {"shard_unit": part.unit, f"{part.unit}_start": part.start, f"{part.unit}_stop": part.stop,
                          f"{part.unit}_count": part.count}
        if shard:  # global rows are unknown here (features.merge numbers them); the own tars resume it
            shard_settings[f"{part.unit}s_fingerprint"] = manifest.fingerprint()
        else:
            shard_settings.update(row_start=0, row_stop=len(manifest))

    def settings_for(winfo):
        return {
            "format_version": FORMAT_VERSION, "backbone": spec.name, "layer": layer, "pooling": cfg.pooling,
            "input_size": list(input_size), "weights": winfo.identity, "weights_sha256": winfo.sha256,
            "seed": cfg.seed, "precision": precision, "store_dtype": cfg.store_dtype, "flip": cfg.flip,
            "runtime": runtime, "xla": xla, "source_kind": manifest.kind, "source_fingerprint": fingerprint,
            "shard": cfg.shard or "0/1", **shard_settings,
            "batch_size": cfg.batch_size, "chunk_rows": chunk_rows,
            **({"calibration": calibration.key} if calibration else {}),
        }

    def already_done():
        finished.remove_stale_partial(out)  # left by a writer killed right after its final rename
        bad = finished.bad_reasons(out)  # the file's own counts, so reruns report what a first run did
        return ExtractSummary(out, stop - start, 0, sum(bad.values()), time.time() - t0, 0,
                              skipped_existing=True, bad_reasons=bad)

    # A Makefile's rerun of a finished extract should cost milliseconds, not a backbone build:
    # when the weights are known without building, the file's attrs are checked first.
    # What a refused rerun compares the source with, to say in words what changed.
    view = SourceView(manifest, start, stop, data=absolute(os.fspath(cfg.data)), image_root=absolute(manifest.root))
    if not cfg.overwrite and os.path.exists(out):
        known = W.known_weights(spec, cfg.weights, cfg.seed)
        if known is not None and finished.check_existing(out, settings_for(known), view):
            return already_done()
    # Weights are resolved before the settings so their hash is part of them.
    # OpenVINO takes a float32 graph and applies bf16 itself; TensorFlow needs the Keras policy.
    policy = None if runtime == "openvino" else device.dtype_policy(precision)
    model, winfo = W.build_backbone(spec, input_size=input_size, layer=layer, weights=cfg.weights,
                                    seed=cfg.seed, dtype_policy=policy, pooling=cfg.pooling)
    fault_point("model_built")
    settings = settings_for(winfo)
    # --overwrite deletes the old output and chunks only under the partial dir's lock (in
    # PartialStore.open), so it cannot pull them away from a writer that is still running.
    if not cfg.overwrite and finished.check_existing(out, settings, view):
        return already_done()

    extractor = make_extractor(runtime, model, spec, cfg, precision, winfo, xla=xla, calibration=calibration)
    startup = time.time() - t0
    pstore = partial.PartialStore(out, settings, n_rows=stop - start, chunk_rows=chunk_rows,
                                feature_shape=extractor.feature_shape, store_dtype=cfg.store_dtype,
                                views=["features"] + (["features_flipped"] if cfg.flip else []), source=view
                                ).open(overwrite=cfg.overwrite)
    try:
        computed, written = _run_chunks(cfg, manifest, start, pstore, extractor, input_size)
        summary = _finish(cfg, manifest, start, stop, pstore, extractor, spec, settings, winfo,
                          computed, written, t0, out)
        summary.startup_seconds = round(startup, 3)
        return summary
    finally:
        pstore.close()


def _run_chunks(cfg, manifest: Manifest, start: int, pstore, extractor, input_size):
    """Compute every missing chunk; returns (rows computed, bytes written)."""
    todo = [k for k in range(pstore.n_chunks) if k not in pstore.done_chunks()]
    if not todo:
        return 0, 0
    rows = [(k, i) for k in todo for i in range(*pstore.chunk_range(k))]
    total_rows = pstore.n_rows
    done_rows = total_rows - len(rows)
    bar = _progress(cfg, total_rows, done_rows, os.path.basename(pstore.out_path))
    writer = ChunkWriter(pstore)
    stop_flag = install_signal_handlers()
    computed, lost = 0, batches.LostRows()
    # The decode threads mirror each image too (in C) for extractors that take the mirrored
    # batch, instead of the main thread copying a whole batch while the model waits for it.
    mirror = cfg.flip and getattr(extractor, "takes_mirrored", False)
    with images.decode_pool(cfg.workers) as pool:
        def decode(i):
            g = start + i
            if g in manifest.row_errors:
                return (None, (0, 0), manifest.row_errors[g]) + ((None,) if mirror else ())
            result = images.decode(manifest.source(g), input_size)
            fault_point("decode")
            if mirror:
                result += (None if result[0] is None else images.mirror(result[0]),)
            return result

        window = collections.deque()
        inflight = collections.deque()  # (rows, pending): submitted to the model, not yet collected
        lookahead = cfg.batch_size * 4
        it = iter(rows)
        buf: dict[int, batches.ChunkBuffer] = {}
        buffers = batches.BufferPool(cfg.store_dtype)
        inputs = batches.BatchRing(IN_FLIGHT + 1, cfg.batch_size, input_size, views=2 if mirror else 1)
        try:
            while True:
                while len(window) < lookahead:
                    nxt = next(it, None)
                    if nxt is None:
                        break
                    window.append((nxt, pool.submit(decode, nxt[1])))
                if window:
                    batch = [window.popleft() for _ in range(min(cfg.batch_size, len(window)))]
                    # Batches never straddle chunks: chunk_rows is a multiple of batch_size and
                    # chunks are consumed whole, so resumed runs see identical batches.
                    results = [(k, i, f.result()) for (k, i), f in batch]
                    views = inputs.assemble(results)
                    inflight.append((results, batches.submit(extractor, *views)))
                    if len(inflight) < IN_FLIGHT:
                        continue  # queue the next batch before waiting for this one
                if not inflight:
                    break
                results, pending = inflight.popleft()
                out = pending.result()
                fault_point("batch")
                lost.add(batches.store_rows(results, out, buf, pstore.chunk_range, buffers),
                         good=sum(r[2][0] is not None for r in results))
                if _FAULT_DELAY:
                    time.sleep(_FAULT_DELAY)
                computed += len(results)
                bar.update(len(results))
                for k in [k for k, chunk in buf.items() if chunk.full]:
                    chunk = buf.pop(k)
                    writer.put(k, chunk.arrays(), written=lambda c=chunk: buffers.give_back(c))
                writer.raise_if_failed()
                if not buf:  # at a chunk boundary: a SIGTERM stops here, losing no collected row
                    check_signal(stop_flag)
        except BaseException:
            for _, f in window:
                f.cancel()
            for _, pending in inflight:
                pending.cancel()
            writer.close(wait=True)  # finished chunks are still committed
            bar.close()
            raise
        finally:
            # A notebook or Ray actor that calls extract() must get its own SIGTERM handling back.
            restore_signal_handlers(stop_flag)
    writer.close(wait=True)
    bar.close()
    warning = lost.warning()
    if warning:
        log.warning("%s", warning)
    return computed, writer.bytes_written


def _progress(cfg, total, initial, name):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc=f"extract {name}", disable=not cfg.progress,
                dynamic_ncols=True, smoothing=0.1)


def _finish(cfg, manifest, start, stop, pstore, extractor, spec, settings, winfo, computed, written, t0, out):
    marks = pstore.markers()  # read once: the summary and the end session both need them
    valid, sizes = marks["valid"], marks["image_size"]
    reasons = collections.Counter(r for r in marks["reason"].tolist() if r)
    n, bad = stop - start, int((~valid).sum())
    run = {"device": getattr(extractor, "device", None) or f"{extractor.runtime} cpu",
           "compute_batch": int(getattr(extractor, "compute_batch", cfg.batch_size)),
           "xla": bool(getattr(extractor, "xla", False)), "decode_workers": cfg.workers or images.default_workers()}
    summary = ExtractSummary(out, n, computed, bad, time.time() - t0, written, bad_reasons=dict(reasons), **run)
    if n and bad / n > cfg.max_bad_fraction:
        # The final file (and so `bneck info`'s list of bad rows) does not exist yet: name them here.
        named = images.name_bad((manifest.paths[start + i], marks["reason"][i]) for i in np.flatnonzero(~valid))
        raise TooManyBadImages(
            f"{bad} of {n} images ({bad / n:.1%}) could not be decoded ({dict(reasons)}), more than "
            f"--max-bad-fraction {cfg.max_bad_fraction}: {named}. All chunks are kept in {pstore.dir}; "
            "rerun with a higher --max-bad-fraction to finish without recomputing, or fix the inputs")
    row_data = {"paths": partial.string_array(manifest.paths[start:stop])}
    if manifest.labels is not None:
        row_data["labels"] = (np.asarray(manifest.labels[start:stop], dtype=np.int64),
                              {"class_names": list(manifest.class_names)})
    if manifest.groups is not None:  # what stage two keeps on one side of a validation split
        row_data["groups"] = (partial.string_array(manifest.groups[start:stop]), {"group_by": manifest.group_by})
    if manifest.targets is not None:
        targets = np.asarray(manifest.targets[start:stop], dtype=np.float32)
        names = list(manifest.target_names or [])
        row_data["targets"] = (targets, {"target_names": names})
        if cfg.flip:
            row_data["targets_flipped"] = (keypoints.flip_targets(targets, names, sizes[:, 1]),
                                           {"target_names": names})
    attrs = {k: v for k, v in settings.items() if k not in ("batch_size", "chunk_rows")}
    attrs.update(preprocessing=spec.preprocessing, task=manifest.task, n_rows=len(manifest),
                 precision_requested=cfg.precision,  # "auto" picks per task and machine: the file says which
                 feature_shape=list(extractor.feature_shape), source_root=absolute(manifest.root),
                 weights_path=winfo.path or "", **{f"run_{k}": v for k, v in run.items() if k != "xla"})
    if manifest.class_names is not None:
        attrs["class_names"] = list(manifest.class_names)
    if manifest.target_names is not None:
        attrs["target_names"] = list(manifest.target_names)
    assemble.finalize(pstore, marks, row_data, attrs)
    # The feature rows were counted as they were written; the end session adds the rest.
    summary.bytes_written += max(0, os.path.getsize(out) - pstore.target.feature_bytes)
    summary.seconds = time.time() - t0
    return summary

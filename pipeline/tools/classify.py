"""Classify images with a full ImageNet model (its 1000-class top included): the API behind ``bneck classify``.

Offline first, like :mod:`features.weights`: the with-top weights file and Keras'
``imagenet_class_index.json`` are looked up in the Keras cache (``$KERAS_HOME/models``, then
``~/.keras/models``; KERAS_HOME read at call time), Keras' own download is tried only when one is
missing, and otherwise the error says which file to fetch and where to put it. Both are checked
before any image is decoded, and a missing pair is reported in one message.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from features import backbones, images
from features.weights import WeightsError, cache_dirs, load_weights_file, prefetch_help

CLASS_INDEX_FILE = "imagenet_class_index.json"
CLASS_INDEX_URL = "https://storage.googleapis.com/download.tensorflow.org/data/imagenet_class_index.json"


def top_file(spec: backbones.BackboneSpec) -> str:
    """The Keras cache name of the ImageNet weights *with* top: the notop name without its suffix."""
    # Every registered application names the two files alike: "..._notop.h5" / "..._no_top.h5" vs "....h5".
    return spec.notop_file.replace("_notop", "").replace("_no_top", "")


def find_in_cache(name: str) -> str | None:
    """The first non-empty ``name`` in the Keras cache directories, or None."""
    for d in cache_dirs():
        p = os.path.join(d, name)
        if os.path.isfile(p) and os.path.getsize(p) > 0:
            return p
    return None


def top_prefetch_help(spec: backbones.BackboneSpec) -> str:
    """:func:`features.weights.prefetch_help` for the with-top weights file."""
    text = prefetch_help(dataclasses.replace(spec, notop_file=top_file(spec)))
    return text.replace("include_top=False, ", "").replace("ImageNet weights for", "ImageNet weights with top for")


def class_index_help() -> str:
    """Instructions for getting the ImageNet class names onto an offline machine."""
    return (f"the ImageNet class names ({CLASS_INDEX_FILE}) are not cached and could not be downloaded.\n"
            f"  On a machine with internet access download {CLASS_INDEX_URL}\n"
            f"  (Keras keeps it as ~/.keras/models/{CLASS_INDEX_FILE} once any decode_predictions has run)\n"
            f"  and copy it to {cache_dirs()[0]}/{CLASS_INDEX_FILE} here (or set KERAS_HOME to a directory "
            f"whose models/ holds it)")


def build_classifier(spec: backbones.BackboneSpec, weights: str = "imagenet"):
    """The full Keras model with top, weights from the cache, Keras' download, or a file."""
    choice = (weights or "imagenet").strip()
    if choice.lower() == "imagenet":
        path = find_in_cache(top_file(spec))
        if path is None:
            try:
                return spec.build_full(weights="imagenet")  # Keras downloads into its cache
            except Exception as exc:  # no network, proxy, disk: all end the same way for the user
                raise WeightsError(top_prefetch_help(spec) + f"\n  (download error: {type(exc).__name__}: {exc})") \
                    from None
    elif os.path.isfile(choice):
        path = choice
    else:
        raise WeightsError(f"--weights {choice!r}: no such file (choose imagenet or a .h5/.weights.h5 path)")
    model = spec.build_full(weights=None)
    try:
        load_weights_file(model, path)
    except WeightsError as exc:
        raise WeightsError(f"{exc}\n  (classify needs the weights *with* the classifier top: {top_file(spec)})") \
            from None
    return model


def class_decoder(spec: backbones.BackboneSpec):
    """A function (scores (N, 1000), top) -> per row [(wnid, label, score), ...], best first."""
    path = find_in_cache(CLASS_INDEX_FILE)
    if path is None:
        try:  # Keras' decode_predictions fetches the file into its cache on first use
            spec.decode_predictions(np.full((1, 1000), 1e-3, np.float32), top=1)
        except Exception as exc:  # noqa: BLE001
            raise WeightsError(class_index_help() + f"\n  (download error: {type(exc).__name__}: {exc})") from None
        return lambda preds, top: [[(str(a), str(b), float(c)) for a, b, c in row]
                                   for row in spec.decode_predictions(preds, top=top)]
    # Read the cached file ourselves: Keras' decoder reads KERAS_HOME at import time only and
    # re-downloads a file whose md5 differs from the one it knows.
    try:
        with open(path, encoding="utf-8") as f:
            index = {int(k): (str(v[0]), str(v[1])) for k, v in json.load(f).items()}
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise WeightsError(f"{path}: not an ImageNet class index ({exc}); delete it and fetch it again") from None

    def decode(preds, top):
        order = np.argsort(-preds, axis=1, kind="stable")[:, :top]
        return [[(*index.get(int(i), (f"class_{i}", f"class_{i}")), float(p[i])) for i in row]
                for p, row in zip(preds, order)]

    return decode


def classify(inputs, *, backbone: str, top_k: int = 5, weights: str = "imagenet", batch_size: int = 16):
    """An iterator of ``{"path", "predictions": [{"wnid", "label", "score"}, ...]}`` per image, best first.

    Args:
        inputs: image files or directories (searched recursively, hidden entries skipped).
        backbone: a registry name (``bneck backbones``); its full Keras application with top is used
            at its default input size, with its own ``preprocess_input``.
        top_k: labels per image.
        weights: ``"imagenet"`` (Keras cache, else download) or a with-top ``.h5``/``.weights.h5`` file.

    Undecodable files yield ``{"path", "error", "detail"}``. Raises :class:`WeightsError` (before any
    image is read) when the weights or the class names cannot be had offline.
    """
    from features.fsutil import expand_paths
    from pipeline.evaluate import check_top_k

    check_top_k(top_k)
    spec = backbones.get(backbone)
    if not callable(getattr(spec, "build_full", None)):
        raise ValueError(f"classify runs an ImageNet classifier; {spec.name} is a {spec.source} image encoder "
                         f"without one: choose a keras.applications entry (`bneck backbones`)")
    problems, model, decode = [], None, None
    try:
        model = build_classifier(spec, weights)
    except WeightsError as exc:
        problems.append(str(exc))
    try:
        decode = class_decoder(spec)
    except WeightsError as exc:
        problems.append(str(exc))
    if problems:
        raise WeightsError("\n".join(problems))
    # A plain function returning a generator, so the errors above surface at the call, not at first next().
    return _run(expand_paths(inputs, keep_missing=True), spec, model, decode, top_k, batch_size)


def _run(paths, spec, model, decode, top_k, batch_size):
    size, preprocess = spec.input_size, spec.preprocess_function
    with images.decode_pool() as pool:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            decoded = images.decode_all(chunk, size, pool=pool)
            ok = [i for i, d in enumerate(decoded) if d[0] is not None]
            rows = {}
            if ok:
                x = preprocess(np.stack([decoded[i][0] for i in ok]).astype(np.float32))
                preds = np.asarray(model.predict(x, batch_size=batch_size, verbose=0), np.float64)
                rows = dict(zip(ok, decode(preds, top_k)))
            for i, path in enumerate(chunk):
                if i in rows:
                    yield {"path": path, "predictions": [{"wnid": a, "label": b, "score": round(c, 6)}
                                                         for a, b, c in rows[i]]}
                else:
                    yield {"path": path, "error": decoded[i][2], "detail": images.REASONS.get(decoded[i][2], "")}

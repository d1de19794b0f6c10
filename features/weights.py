"""Resolve ``--weights imagenet|none|auto|PATH``, build the backbone with them, and record their identity.

Why not just ``weights="imagenet"``: cluster nodes and CI are often offline. We look for the
Keras cache file first (``$KERAS_HOME/models`` or ``~/.keras/models``), try Keras' own download
only when it is missing, and otherwise fail with instructions for pre-fetching the file. Every
result carries the sha256 of the file actually loaded, so stage two can tell two caches apart.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass

from features.backbones import BackboneSpec
from features.random_init import CALIBRATED

log = logging.getLogger("bneck")

WEIGHT_CHOICES = ("imagenet", "none", "auto", "none-raw")
_POLICY_LOCK = threading.Lock()


class WeightsError(RuntimeError):
    """The requested weights cannot be had, or do not fit the architecture."""


@dataclass(frozen=True)
class WeightsInfo:
    """What was loaded: ``kind`` is imagenet|none|file; ``identity`` is what the HDF5 attrs record.

    ``bn`` is ``"calibrated"`` for a random init whose BatchNorm statistics were set from synthetic
    images (:mod:`features.random_init`), else empty: no BatchNorm, or ``--weights none-raw``.
    """

    kind: str
    path: str | None
    sha256: str
    seed: int
    bn: str = ""

    @property
    def identity(self) -> str:
        if self.kind == "none":
            # Files from before the calibration (and none-raw ones) say none(seed=S): the two inits never mix.
            return f"none(seed={self.seed},bn={self.bn})" if self.bn else f"none(seed={self.seed})"
        if self.kind == "imagenet":
            return "imagenet"
        return f"file:{os.path.basename(self.path or '')}"


def sha256_file(path: str, bufsize: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks; of a directory (a KerasHub preset), see :func:`sha256_dir`."""
    if os.path.isdir(path):
        return sha256_dir(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(bufsize), b""):
            h.update(block)
    return h.hexdigest()


def sha256_dir(path: str) -> str:
    """Hex sha256 over every file of a directory: its relative path and content, in sorted order.

    Where the directory lies and its files' times do not count, so a copied preset hashes the same.
    """
    from features.fsutil import walk_files

    h = hashlib.sha256()
    for full in walk_files(path):  # sorted; hidden files (.DS_Store, a download's lock files) skipped
        if os.path.isfile(full):
            rel = os.path.relpath(full, path).replace(os.sep, "/")
            h.update(f"{rel}\0{sha256_file(full)}\n".encode())
    return h.hexdigest()


def is_hub(spec) -> bool:
    """Whether ``spec`` is a KerasHub entry (weights are preset directories, not notop files)."""
    return getattr(spec, "source", "") == "keras-hub"


def cache_dirs() -> list[str]:
    """Where Keras keeps downloaded weights, in lookup order (KERAS_HOME is read now, not at import)."""
    dirs = []
    if os.environ.get("KERAS_HOME"):
        dirs.append(os.path.join(os.environ["KERAS_HOME"], "models"))
    dirs.append(os.path.join(os.path.expanduser("~"), ".keras", "models"))
    return list(dict.fromkeys(dirs))


def find_cached(spec: BackboneSpec) -> str | None:
    """The cached ImageNet notop file for ``spec`` (a KerasHub entry: its preset directory), or None."""
    if is_hub(spec):
        return spec.find_preset()
    for d in cache_dirs():
        p = os.path.join(d, spec.notop_file)
        if os.path.isfile(p) and os.path.getsize(p) > 0:
            return p
    return None


def prefetch_help(spec: BackboneSpec) -> str:
    """Instructions for getting ImageNet weights (a KerasHub entry: its preset) onto an offline machine."""
    if is_hub(spec):
        return spec.prefetch_help()
    return (
        f"ImageNet weights for {spec.name} are not cached and could not be downloaded.\n"
        f"  Either, on a machine with internet access, run\n"
        f"    python -c \"import keras; "
        f"keras.applications.{spec.constructor}(include_top=False, weights='imagenet')\"\n"
        f"  and copy ~/.keras/models/{spec.notop_file} to {cache_dirs()[0]}/ here\n"
        f"  (or set KERAS_HOME to a directory whose models/ holds it);\n"
        f"  or pass the file directly: --weights /path/to/{spec.notop_file}"
    )


def known_weights(spec: BackboneSpec, weights: str = "imagenet", seed: int = 0) -> WeightsInfo | None:
    """What :func:`build_backbone` would load, when that can be told without building; else None.

    A finished extract's rerun compares it with the file's attrs and skips the backbone build
    (seconds for VGG16). Weights that would have to be downloaded first are not known: None.
    """
    choice = (weights or "imagenet").strip()
    if choice.lower() in ("none", "none-raw"):
        calibrated = choice.lower() == "none" and spec.batchnorm  # the contract tests check the registry's flag
        return WeightsInfo("none", None, "", seed, CALIBRATED if calibrated else "")
    if choice.lower() in ("imagenet", "auto"):
        path = find_cached(spec)
        return WeightsInfo("imagenet", path, sha256_file(path), seed) if path else None
    if os.path.isfile(choice) or (is_hub(spec) and os.path.isdir(choice)):
        return WeightsInfo("file", os.path.abspath(choice), sha256_file(choice), seed)
    return None


def build_backbone(spec: BackboneSpec, *, input_size, layer: str | None = None, weights: str = "imagenet",
                   seed: int = 0, dtype_policy: str | None = None, pooling: str = "none"):
    """Build the truncated backbone (``layer`` output) with resolved weights; returns (model, WeightsInfo).

    ``pooling`` matters to token models only: ``cls`` makes the model end in the class token.
    """
    from features.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()  # before keras: TF's native start-up chatter would bury our messages
    import keras

    layer = layer or spec.default_layer
    if layer not in spec.all_layers:
        # Any layer of the model may be asked for; the named ones are just suggestions.
        log.debug("layer %s is not one of the named layers of %s", layer, spec.name)
    with _POLICY_LOCK:
        previous = keras.config.dtype_policy()
        if dtype_policy:
            keras.config.set_dtype_policy(dtype_policy)
        try:
            # Seed before construction so --weights none is reproducible across shards and resumes.
            keras.utils.set_random_seed(seed)
            full, info = _build_with_weights(spec, input_size, weights, seed)
        finally:
            keras.config.set_dtype_policy(previous)
    model = spec.truncate(full, layer, pooling)
    model.trainable = False
    return model, info


def _build_with_weights(spec, input_size, weights, seed):
    choice = (weights or "imagenet").strip()
    if is_hub(spec):
        return _build_hub(spec, input_size, choice, seed)
    if choice.lower() in ("none", "none-raw"):
        log.warning("--weights %s: %s runs with RANDOM weights (seed %d); features are not ImageNet features",
                    choice.lower(), spec.name, seed)
        return random_model(spec, input_size, seed, calibrate=choice.lower() == "none")
    if choice.lower() in ("imagenet", "auto"):
        try:
            return _build_imagenet(spec, input_size, seed)
        except WeightsError:
            if choice.lower() == "imagenet":
                raise
            return random_fallback(spec, input_size, seed, "ImageNet weights")
    return _build_from_file(spec, input_size, choice, seed)


def _build_imagenet(spec, input_size, seed):
    path = find_cached(spec)
    if path is None:
        try:
            spec.build(input_size=spec.input_size, weights="imagenet")  # Keras downloads into its cache
        except Exception as exc:  # no network, proxy, disk: all end the same way for the user
            raise WeightsError(prefetch_help(spec) + f"\n  (download error: {type(exc).__name__}: {exc})") from None
        path = find_cached(spec)
        if path is None:
            raise WeightsError(prefetch_help(spec) + "\n  (Keras reported success but the file is not in the cache)")
    model = spec.build(input_size=input_size, weights=None)
    try:
        model.load_weights(path)
    except Exception as exc:
        raise WeightsError(f"cached ImageNet file {path} does not load into {spec.name}: {exc}; "
                           "delete it and fetch it again") from None
    return model, WeightsInfo("imagenet", path, sha256_file(path), seed)


def _build_hub(spec, input_size, choice, seed):
    """A KerasHub entry: random from the registry's config, its preset (local copy or KaggleHub), or a preset dir."""
    low = choice.lower()
    if low in ("none", "none-raw"):
        log.warning("--weights %s: %s runs with RANDOM weights (seed %d); features are not pretrained features",
                    low, spec.name, seed)
        return random_model(spec, input_size, seed, calibrate=low == "none")
    if low in ("imagenet", "auto"):
        path = spec.find_preset()
        if path is None:
            try:
                spec.build(input_size=input_size, weights=spec.preset)  # KaggleHub downloads into its cache
                path = spec.find_preset()
            except ImportError:
                raise
            except Exception as exc:  # no network, no Kaggle access: the same instructions
                if low == "imagenet":
                    raise WeightsError(spec.prefetch_help() + f"\n  (download error: {type(exc).__name__}: {exc})") \
                        from None
            if path is None and low == "auto":
                return random_fallback(spec, input_size, seed, "preset")
            if path is None:
                raise WeightsError(spec.prefetch_help() + "\n  (KerasHub loaded it, but no copy is in "
                                   + ", ".join(spec.preset_dirs()) + ")")
        return _load_preset_dir(spec, input_size, path), WeightsInfo("imagenet", path, sha256_dir(path), seed)
    if not os.path.isdir(choice):
        raise WeightsError(f"--weights {choice!r}: not a KerasHub preset directory (choose imagenet, none, auto or "
                           f"a folder with config.json and model.weights.h5)\n" + spec.prefetch_help())
    path = os.path.abspath(choice)
    return _load_preset_dir(spec, input_size, path), WeightsInfo("file", path, sha256_dir(path), seed)


def _load_preset_dir(spec, input_size, path):
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise WeightsError(f"--weights {path}: no config.json, so not a KerasHub preset directory\n"
                           + spec.prefetch_help())
    import keras

    try:
        spec.check_converter(path)
        saved = spec.check_dtype(path)
    except ValueError as exc:
        raise WeightsError(str(exc)) from None
    policy = keras.config.dtype_policy().name
    if saved and saved != policy:
        log.info("%s: the preset was saved as %s; it runs as %s (--precision), which the attrs record",
                 path, saved, policy)
    try:
        model = spec.build(input_size=input_size, weights=path)
    except ImportError:
        raise
    except Exception as exc:
        raise WeightsError(f"--weights {path}: the preset does not load as {spec.name} "
                           f"({type(exc).__name__}: {exc})") from None
    if model.dtype_policy.name != policy:  # never record a precision the model does not run in
        raise WeightsError(f"--weights {path}: the preset loaded as {model.dtype_policy.name}, not the {policy} "
                           "that --precision asks for")
    return model


def _build_from_file(spec, input_size, path, seed):
    if not os.path.isfile(path):
        raise WeightsError(f"--weights {path!r}: no such file (choose imagenet, none, auto or a .h5 path)")
    model = spec.build(input_size=input_size, weights=None)
    load_weights_file(model, path)
    return model, WeightsInfo("file", os.path.abspath(path), sha256_file(path), seed)


def load_weights_file(model, path: str) -> None:
    """Load a Keras 3 ``.weights.h5`` or a legacy ``.h5``/``.hdf5`` into ``model`` by layer; clear errors."""
    if path.endswith(".weights.h5"):
        load_keras3_weights(model, path)
    elif path.endswith((".h5", ".hdf5")):
        load_legacy_h5_by_name(model, path)
    else:
        raise WeightsError(f"--weights {path}: expected a Keras .weights.h5 or legacy .h5/.hdf5 file")


def _weighted_layers(model):
    return [layer for layer in model.layers if layer.weights]


def load_legacy_h5_by_name(model, path: str) -> None:
    """Load a legacy Keras .h5 (weights-only or full model) by layer name, ignoring extra (top) layers."""
    import h5py

    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("layer_names", [])]
        if not names:
            raise WeightsError(f"{path}: not a Keras legacy weights file (no 'layer_names' attribute)")
        def weights_of(name):
            g = group[name]
            wnames = [n.decode() if isinstance(n, bytes) else str(n) for n in g.attrs.get("weight_names", [])]
            return [g[n] for n in wnames]

        missing, bad_shape, unmatched = [], [], []
        for layer in _weighted_layers(model):
            if layer.name not in names:
                unmatched.append(layer)
                continue
            values = weights_of(layer.name)
            shapes = [tuple(v.shape) for v in values]
            want = [tuple(w.shape) for w in layer.weights]
            if shapes != want:
                bad_shape.append(f"{layer.name}: file {shapes} vs model {want}")
            else:
                layer.set_weights([v[()] for v in values])
        # The registry renames a notop model's auto-named last layer (ConvNeXt's LayerNormalization):
        # one model layer and one file layer left over, with the same shapes, are that layer.
        used = {layer.name for layer in _weighted_layers(model)}
        spare = [n for n in names if n not in used and weights_of(n)]
        if len(unmatched) == 1 and len(spare) == 1 and (
                [tuple(v.shape) for v in weights_of(spare[0])] == [tuple(w.shape) for w in unmatched[0].weights]):
            unmatched[0].set_weights([v[()] for v in weights_of(spare[0])])
            unmatched = []
        missing = [layer.name for layer in unmatched]
    _raise_mismatch(path, model, missing, bad_shape, names)


def load_keras3_weights(model, path: str) -> None:
    """Load a Keras 3 .weights.h5 saved from the same architecture (with or without its top)."""
    import h5py
    from keras.src.utils.naming import to_snake_case

    # Keras 3 keys layers by snake_case class name plus a counter, in model.layers order, so
    # the notop model's keys are a prefix-compatible subset of the full model's.
    counters: dict[str, int] = {}
    missing, bad_shape = [], []
    with h5py.File(path, "r") as f:
        if "layers" not in f:
            raise WeightsError(f"{path}: not a Keras 3 .weights.h5 file (no 'layers' group)")
        available = list(f["layers"].keys())
        for layer in model.layers:
            base = to_snake_case(layer.__class__.__name__)
            n = counters.get(base, 0)
            counters[base] = n + 1
            key = base if n == 0 else f"{base}_{n}"
            if not layer.weights:
                continue
            if key not in f["layers"] or "vars" not in f["layers"][key]:
                missing.append(f"{layer.name} (key {key})")
                continue
            vars_ = f["layers"][key]["vars"]
            values = [vars_[str(i)][()] for i in range(len(vars_))]
            want = [tuple(w.shape) for w in layer.weights]
            if [v.shape for v in values] != want:
                bad_shape.append(f"{layer.name}: file {[v.shape for v in values]} vs model {want}")
            else:
                layer.set_weights(values)
    _raise_mismatch(path, model, missing, bad_shape, available)


def _raise_mismatch(path, model, missing, bad_shape, available):
    if not (missing or bad_shape):
        return
    lines = [f"--weights {path} does not fit {model.name}:"]
    if missing:
        lines.append(f"  {len(missing)} model layers not in the file: {', '.join(missing[:20])}"
                     + (" ..." if len(missing) > 20 else ""))
    if bad_shape:
        lines.append(f"  {len(bad_shape)} layers with other shapes: " + "; ".join(bad_shape[:10]))
    lines.append(f"  the file has layers: {', '.join(available[:30])}" + (" ..." if len(available) > 30 else ""))
    raise WeightsError("\n".join(lines))


def random_fallback(spec, input_size, seed: int, missing: str):
    """``--weights auto`` with nothing available: the seeded random model, said loudly."""
    log.warning("=" * 70)
    log.warning("--weights auto: no %s for %s (offline, nothing cached).", missing, spec.name)
    log.warning("FALLING BACK TO RANDOM WEIGHTS (seed %d). Features will be far weaker.", seed)
    log.warning("=" * 70)
    # random_model reseeds (the failed attempt consumed random state), so the fallback equals
    # `--weights none --seed S`, which predict/export rebuild from the recorded attrs.
    return random_model(spec, input_size, seed, calibrate=True)


def random_model(spec, input_size, seed: int, *, calibrate: bool = True):
    """The seeded random model of ``spec``, BatchNorm statistics calibrated (``--weights none``) or not
    (``none-raw``: bneck's init before issue 19, moving mean 0 and variance 1); returns (model, WeightsInfo).

    Calibration runs on a float32 model whatever the current dtype policy, and its weights are
    copied into the policy's model, so one seed gives the same weights in every precision.
    """
    import keras

    from features.random_init import calibrate_batchnorm

    keras.utils.set_random_seed(seed)
    if not calibrate:
        return spec.build(input_size=input_size, weights=None), WeightsInfo("none", None, "", seed)
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        model = spec.build(input_size=input_size, weights=None)
    finally:
        keras.config.set_dtype_policy(policy)
    h, w = input_size or spec.input_size
    calibrated = calibrate_batchnorm(model, spec.preprocess_function, seed=seed, input_size=(h, w))
    if policy.name != "float32":
        keras.utils.set_random_seed(seed)
        typed = spec.build(input_size=input_size, weights=None)
        typed.set_weights(model.get_weights())
        model = typed
    return model, WeightsInfo("none", None, "", seed, CALIBRATED if calibrated else "")

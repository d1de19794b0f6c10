"""Rebuild the exact stage-one backbone a model was trained on, from the provenance in model.json.

``predict`` and ``export`` both start here, so new images go through the same decoding,
``preprocess_input``, layer, pooling and weights as the cached features did.
"""

from __future__ import annotations

import logging
import os
import re

import numpy as np

from features.mapper import device

log = logging.getLogger("bneck")


#: Where backbone weights files are looked for by content, besides ``weights_dirs`` and the model directory.
WEIGHTS_PATH_ENV = "BNECK_WEIGHTS_PATH"
_WEIGHT_SUFFIXES = (".h5", ".hdf5")  # what features.weights.load_weights_file reads (.weights.h5 included)


def weights_search_dirs(model_dir=None, weights_dirs=()) -> list[str]:
    """Where a weights file is looked for, in order: ``weights_dirs`` (``--weights DIR``), ``$BNECK_WEIGHTS_PATH``
    (``os.pathsep``-separated), the Keras cache, then the model directory and the folder it sits in."""
    from features.weights import cache_dirs

    dirs = [os.fspath(d) for d in weights_dirs or ()]
    dirs += [d for d in os.environ.get(WEIGHTS_PATH_ENV, "").split(os.pathsep) if d]
    dirs += cache_dirs()
    if model_dir is not None:
        dirs += [os.fspath(model_dir), os.path.dirname(os.path.abspath(model_dir))]
    return list(dict.fromkeys(os.path.abspath(d) for d in dirs))


def find_weights(sha256: str, name: str, dirs) -> str | None:
    """The first file in ``dirs`` whose sha256 is ``sha256``: the recorded file name first, then any weights file.

    A model directory records its backbone weights by content, not by path, so a model copied to
    another machine finds them wherever they were put there.
    """
    from features.weights import sha256_file

    for d in dirs:
        candidate = os.path.join(d, name) if name else ""
        # A KerasHub preset is a directory, found by its name and hashed whole.
        if candidate and os.path.exists(candidate) and sha256_file(candidate) == sha256:
            return candidate
    for d in dirs:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for n in names:
            f = os.path.join(d, n)
            if n.lower().endswith(_WEIGHT_SUFFIXES) and n != name and os.path.isfile(f) and sha256_file(f) == sha256:
                return f
    return None


def weights_argument(prov: dict, *, model_dir=None, weights_dirs=()) -> tuple[str, int]:
    """The ``--weights`` value and seed that reproduce the features' backbone weights.

    A weights file is found by its recorded sha256 (:func:`find_weights` over
    :func:`weights_search_dirs`); the recorded absolute path is only tried as one more place.
    """
    ident = str(prov.get("weights", "imagenet"))
    seed = int(prov.get("seed", 0))
    if ident == "imagenet":
        return "imagenet", seed
    if ident.startswith("none"):
        return random_weights_argument(ident), seed
    recorded = prov.get("weights_path") or ""
    want = prov.get("weights_sha256") or ""
    dirs = weights_search_dirs(model_dir, weights_dirs)
    if recorded:
        dirs = list(dict.fromkeys(dirs + [os.path.dirname(os.path.abspath(recorded))]))
    name = os.path.basename(recorded)
    if not want:  # features made before sha256s were recorded: only the recorded path can be trusted
        if recorded and os.path.isfile(recorded):
            return recorded, seed
        raise FileNotFoundError(f"the features were extracted with weights {ident} from {recorded or 'an unknown path'}"
                                ", which is not here; copy that file back to the same path to rebuild the backbone")
    found = find_weights(want, name, dirs)
    if found is None:
        raise FileNotFoundError(
            f"the backbone weights this model needs ({name or ident}, sha256 {want}) were not found. Looked in: "
            + ", ".join(dirs) + f". Put the file in one of them, name its folder with --weights DIR, "
            f"or add the folder to ${WEIGHTS_PATH_ENV}")
    return found, seed


_RANDOM_IDENTITY = re.compile(r"none\(seed=-?\d+(?:,bn=(?P<bn>[a-z]+))?\)")


def random_weights_argument(ident: str) -> str:
    """``--weights none`` for a calibrated random init (``none(seed=S,bn=calibrated)``), ``none-raw`` for one
    recorded before the BatchNorm calibration (``none(seed=S)``: also every entry without BatchNorm)."""
    from features.random_init import CALIBRATED
    from features.weights import WeightsError

    m = _RANDOM_IDENTITY.fullmatch(ident)
    if m is None or m["bn"] not in (None, CALIBRATED):
        raise WeightsError(f"the features were extracted with random weights {ident!r}, an init this "
                                   "version of bneck does not know (from a newer bneck?); upgrade bneck")
    return "none" if m["bn"] else "none-raw"


def build_backbone_from(prov: dict, *, precision: str | None = None, model_dir=None, weights_dirs=()):
    """The truncated Keras backbone described by ``prov`` (feature attrs), weights checked by sha256."""
    from features import backbones
    from features.weights import WeightsError, build_backbone

    spec = backbones.get(prov["backbone"])
    weights, seed = weights_argument(prov, model_dir=model_dir, weights_dirs=weights_dirs)
    precision = precision or prov.get("precision", "fp32")
    if precision == "int8":  # an OpenVINO + NNCF model of the extraction run; Keras rebuilds the float one
        log.info("features were extracted with an int8 OpenVINO model; the backbone here runs in fp32")
        precision = "fp32"
    if precision == "fp16" and not device.has_gpu():
        log.warning("features were extracted in fp16 on a GPU; rebuilding in fp32 on this CPU")
        precision = "fp32"
    model, info = build_backbone(spec, input_size=tuple(prov["input_size"]), layer=prov["layer"], weights=weights,
                                 seed=seed, dtype_policy=device.dtype_policy(precision),
                                 pooling=prov.get("pooling", "none"))
    want = prov.get("weights_sha256", "")
    if want and info.sha256 != want:
        raise WeightsError(f"the {weights} weights here (sha256 {info.sha256[:12]}) differ from those the features "
                           f"were made with ({want[:12]}); predictions would not match the trained head")
    recorded = str(prov.get("weights", ""))
    if info.kind == "none" and info.identity != recorded:  # random weights have no file hash: compare the init
        raise WeightsError(f"the random init rebuilt here ({info.identity}) is not the one the features were made "
                           f"with ({recorded}); predictions would not match the trained head")
    return spec, model, precision


def make_extractor(prov: dict, *, flip: bool, batch_size: int = 32, precision: str | None = None, model_dir=None,
                   weights_dirs=()):
    """A stage-one :class:`features.mapper.tf_runtime.Extractor` matching ``prov``; returns (spec, extractor)."""
    from features.mapper.tf_runtime import Extractor

    spec, model, _ = build_backbone_from(prov, precision=precision, model_dir=model_dir, weights_dirs=weights_dirs)
    return spec, Extractor(model, spec.preprocess_function, pooling=prov.get("pooling", "none"), flip=flip,
                           batch_size=batch_size)


def as_stored(x: np.ndarray, prov: dict) -> np.ndarray:
    """Round features the way the HDF5 store did, so heads see what they were trained on."""
    return x.astype(prov.get("store_dtype", "float32")).astype(np.float32)


def pool_on_load(x: np.ndarray, pooling: str) -> np.ndarray:
    """Apply the model's on-load pooling to a batch of feature maps (the data views' own rule)."""
    from pipeline.data.views import pool_features

    return pool_features(x, pooling)

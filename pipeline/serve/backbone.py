"""Rebuild the exact stage-one backbone a model was trained on, from the provenance in model.json.

``predict`` and ``export`` both start here, so new images go through the same decoding,
``preprocess_input``, layer, pooling and weights as the cached features did.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from features.mapper import device

log = logging.getLogger("bneck")


def weights_argument(prov: dict) -> tuple[str, int]:
    """The ``--weights`` value and seed that reproduce the features' backbone weights."""
    ident = str(prov.get("weights", "imagenet"))
    seed = int(prov.get("seed", 0))
    if ident == "imagenet":
        return "imagenet", seed
    if ident.startswith("none"):
        return "none", seed
    path = prov.get("weights_path") or ""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"the features were extracted with weights {ident} from {path or 'an unknown path'}, "
                                "which is not here; copy that file back to the same path to rebuild the backbone")
    return path, seed


def build_backbone_from(prov: dict, *, precision: str | None = None):
    """The truncated Keras backbone described by ``prov`` (feature attrs), weights checked by sha256."""
    from features import backbones
    from features.weights import WeightsError, build_backbone

    spec = backbones.get(prov["backbone"])
    weights, seed = weights_argument(prov)
    precision = precision or prov.get("precision", "fp32")
    if precision == "int8":  # an OpenVINO + NNCF model of the extraction run; Keras rebuilds the float one
        log.info("features were extracted with an int8 OpenVINO model; the backbone here runs in fp32")
        precision = "fp32"
    if precision == "fp16" and not device.has_gpu():
        log.warning("features were extracted in fp16 on a GPU; rebuilding in fp32 on this CPU")
        precision = "fp32"
    model, info = build_backbone(spec, input_size=tuple(prov["input_size"]), layer=prov["layer"], weights=weights,
                                 seed=seed, dtype_policy=device.dtype_policy(precision))
    want = prov.get("weights_sha256", "")
    if want and info.sha256 != want:
        raise WeightsError(f"the {weights} weights here (sha256 {info.sha256[:12]}) differ from those the features "
                           f"were made with ({want[:12]}); predictions would not match the trained head")
    return spec, model, precision


def make_extractor(prov: dict, *, flip: bool, batch_size: int = 32, precision: str | None = None):
    """A stage-one :class:`features.mapper.tf_runtime.Extractor` matching ``prov``; returns (spec, extractor)."""
    from features.mapper.tf_runtime import Extractor

    spec, model, _ = build_backbone_from(prov, precision=precision)
    return spec, Extractor(model, spec.preprocess_function, pooling=prov.get("pooling", "none"), flip=flip,
                           batch_size=batch_size)


def as_stored(x: np.ndarray, prov: dict) -> np.ndarray:
    """Round features the way the HDF5 store did, so heads see what they were trained on."""
    return x.astype(prov.get("store_dtype", "float32")).astype(np.float32)


def pool_on_load(x: np.ndarray, pooling: str) -> np.ndarray:
    """Apply the model's on-load pooling to a batch of feature maps (the data views' own rule)."""
    from pipeline.data.views import pool_features

    return pool_features(x, pooling)

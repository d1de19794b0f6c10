"""What every registry entry is: :class:`BackboneSpec` (a ``keras.applications`` constructor).

A spec carries what stage one and stage two need to agree on: the constructor, the backbone's
own preprocessing (never ``rescale=1/255``), the default and smallest input size, the default
bottleneck layer and the named layers one may pick instead, and the file name Keras caches its
ImageNet "notop" weights under. :mod:`features.backbones.hub` adds KerasHub entries.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from dataclasses import dataclass, field

import numpy as np

#: Extraction poolings every entry offers; token models add "mean" (= "avg" over the patch grid) and "cls".
MAP_POOLINGS = ("none", "avg", "max")

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_CLIP_MEAN, _CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def keras_chatter_to_stderr():
    """Send what Keras prints while building (``Downloading data from ...``, its progress bar) to stderr."""
    # Keras writes these to sys.stdout, which is where `--json` puts its one JSON object.
    return contextlib.redirect_stdout(sys.stderr)


def preprocess_affine(mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(kernel (3 in, 3 out), bias (3,)) with ``x @ kernel + bias == preprocess(x)`` for RGB pixels 0..255.

    Every preprocessing of the registry is such a per-pixel affine map: Keras' ``caffe``, ``tf``
    and ``torch`` modes, ``clip`` (OpenAI CLIP's mean/std), and ``none (in model)`` for models
    that rescale inside themselves (EfficientNet, EfficientNetV2, MobileNetV3, ConvNeXt).
    """
    if mode == "caffe":  # RGB -> BGR, then minus the ImageNet BGR means
        return np.eye(3)[:, ::-1], -np.array(_CAFFE_MEAN_BGR)
    if mode == "tf":  # x / 127.5 - 1
        return np.eye(3) / 127.5, -np.ones(3)
    if mode in ("torch", "clip"):  # (x / 255 - mean) / std
        mean, std = (_IMAGENET_MEAN, _IMAGENET_STD) if mode == "torch" else (_CLIP_MEAN, _CLIP_STD)
        std, mean = np.array(std), np.array(mean)
        return np.diag(1.0 / (255.0 * std)), -mean / std
    if mode.startswith("none"):
        return np.eye(3), np.zeros(3)
    raise ValueError(f"unknown preprocessing {mode!r}; expected caffe, tf, torch, clip or 'none (in model)'")


def affine_function(mode: str):
    """``preprocess(x)`` of ``mode`` as a function of float pixels (NumPy arrays or tensors, last axis RGB)."""
    kernel, bias = preprocess_affine(mode)
    if mode.startswith("none"):
        return lambda x: x
    if mode == "caffe":
        mean = np.array(_CAFFE_MEAN_BGR, np.float32)
        return lambda x: x[..., ::-1] - mean
    scale, offset = np.diag(kernel).astype(np.float32), bias.astype(np.float32)
    return lambda x: x * scale + offset


@dataclass(frozen=True)
class BackboneSpec:
    """One frozen ImageNet backbone from ``keras.applications``."""

    name: str
    module: str  # keras.applications submodule, e.g. "vgg16"
    constructor: str  # class-like function in that module, e.g. "VGG16"
    preprocessing: str  # what preprocess_input does: "caffe" | "tf" | "torch" | "none (in model)"
    input_size: tuple[int, int]  # default (height, width)
    min_size: int  # smallest side Keras accepts with include_top=False
    default_layer: str  # the last conv/pool block before the classifier top
    layers: tuple[str, ...] = field(default=())  # other named bottleneck layers, shallow to deep
    notop_file: str = ""  # the Keras cache file name of the ImageNet weights without top
    family: str = ""  # free text shown by `bneck backbones`
    params: int = 0  # parameters of the notop model (shown by `bneck backbones`; checked by the tests)
    gflops: float = 0.0  # at the default size, to the default layer (bench/catalogue.py); 0 = not measured
    # Keras gives some notop outputs a session-counted name ("layer_normalization_3"); the
    # registry renames that last layer so a recorded layer name means the same layer in every run.
    output_name: str = ""
    # Runtimes whose conversion of this entry works; `--runtime auto` picks among these.
    runtimes: tuple[str, ...] = ("tensorflow", "openvino")
    # Whether the model has BatchNormalization layers, whose statistics `--weights none` calibrates
    # (features/random_init.py) and records ("none(seed=S,bn=calibrated)"); the contract tests check it.
    batchnorm: bool = True

    source = "keras.applications"
    fixed_size = False  # True: the weights fit the default input size only

    @property
    def poolings(self) -> tuple[str, ...]:
        """The ``--pooling`` values this entry offers."""
        return MAP_POOLINGS

    def _module(self):
        return importlib.import_module(f"keras.applications.{self.module}")

    def _constructor(self):
        # The public submodules keep preprocess_input; some (mobilenet_v3, convnext) not the constructor.
        return getattr(importlib.import_module("keras.applications"), self.constructor)

    def check_size(self, h: int, w: int) -> None:
        if min(h, w) < self.min_size:
            raise ValueError(
                f"{self.name} needs an input of at least {self.min_size} pixels a side, got {h}x{w}")

    def build(self, *, input_size: tuple[int, int] | None = None, weights=None):
        """Construct the include_top=False Keras model (``weights`` as Keras takes it)."""
        h, w = input_size or self.input_size
        self.check_size(h, w)
        ctor = self._constructor()
        with keras_chatter_to_stderr():
            model = ctor(include_top=False, weights=weights, input_shape=(h, w, 3))
        if self.output_name:
            model.layers[-1].name = self.output_name
        return model

    def build_full(self, *, weights="imagenet"):
        """Construct the full ImageNet classifier (with top) at the default size."""
        ctor = self._constructor()
        with keras_chatter_to_stderr():
            return ctor(include_top=True, weights=weights)

    def truncate(self, full, layer: str, pooling: str = "none"):
        """The model from ``full``'s input to ``layer``'s output (``full`` itself for its last layer)."""
        import keras

        try:
            out = full.get_layer(layer).output
        except ValueError:
            raise ValueError(
                f"{self.name} has no layer {layer!r}; named choices: {', '.join(self.all_layers)} "
                f"(see `bneck backbones --summary {self.name}` for all)"
            ) from None
        return keras.Model(full.input, out, name=f"{self.name}_{layer}") if out is not full.output else full

    def preprocess_input(self, x):
        """The backbone's own Keras ``preprocess_input`` (works on NumPy arrays and tensors)."""
        return self._module().preprocess_input(x)

    @property
    def preprocess_function(self):
        """The Keras ``preprocess_input`` function itself, resolved now (safe to call inside tf.function)."""
        return self._module().preprocess_input

    def decode_predictions(self, preds, top=5):
        """ImageNet top-k decoding for the full model's output (Keras fetches the class names on first use)."""
        with keras_chatter_to_stderr():
            return self._module().decode_predictions(preds, top=top)

    @property
    def all_layers(self) -> tuple[str, ...]:
        """Every named bottleneck layer, the default last."""
        return tuple(x for x in self.layers if x != self.default_layer) + (self.default_layer,)

    def describe(self) -> dict:
        """This entry as a plain dict (one row of ``bneck backbones --json``)."""
        return {**describe_common(self), "keras_application": f"keras.applications.{self.constructor}",
                "imagenet_notop_file": self.notop_file}


def describe_common(spec) -> dict:
    """What every registry entry (Keras application or KerasHub preset) says in ``bneck backbones --json``."""
    return {"name": spec.name, "source": spec.source, "family": spec.family, "params": spec.params,
            "gflops": spec.gflops, "preprocessing": spec.preprocessing, "input_size": list(spec.input_size),
            "min_size": spec.min_size, "fixed_size": spec.fixed_size, "default_layer": spec.default_layer,
            "layers": list(spec.all_layers), "poolings": list(spec.poolings), "runtimes": list(spec.runtimes)}

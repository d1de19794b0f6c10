"""The backbone registry: the only place in bneck that names a Keras application.

Each :class:`BackboneSpec` carries what stage one and stage two need to agree on:
the constructor, the backbone's own ``preprocess_input`` (never ``rescale=1/255``),
the default input size, the default bottleneck layer and the named layers one may
pick instead, and the file name Keras caches its ImageNet "notop" weights under.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from dataclasses import dataclass, field


def _keras_chatter_to_stderr():
    """Send what Keras prints while building (``Downloading data from ...``, its progress bar) to stderr."""
    # Keras writes these to sys.stdout, which is where `--json` puts its one JSON object.
    return contextlib.redirect_stdout(sys.stderr)


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

    def _module(self):
        return importlib.import_module(f"keras.applications.{self.module}")

    def build(self, *, input_size: tuple[int, int] | None = None, weights=None):
        """Construct the include_top=False Keras model (``weights`` as Keras takes it)."""
        h, w = input_size or self.input_size
        if min(h, w) < self.min_size:
            raise ValueError(
                f"{self.name} needs an input of at least {self.min_size}x{self.min_size}, got {h}x{w}"
            )
        ctor = getattr(self._module(), self.constructor)
        with _keras_chatter_to_stderr():
            return ctor(include_top=False, weights=weights, input_shape=(h, w, 3))

    def build_full(self, *, weights="imagenet"):
        """Construct the full ImageNet classifier (with top) at the default size."""
        ctor = getattr(self._module(), self.constructor)
        with _keras_chatter_to_stderr():
            return ctor(include_top=True, weights=weights)

    def preprocess_input(self, x):
        """The backbone's own Keras ``preprocess_input`` (works on NumPy arrays and tensors)."""
        return self._module().preprocess_input(x)

    @property
    def preprocess_function(self):
        """The Keras ``preprocess_input`` function itself, resolved now (safe to call inside tf.function)."""
        return self._module().preprocess_input

    def decode_predictions(self, preds, top=5):
        """ImageNet top-k decoding for the full model's output (Keras fetches the class names on first use)."""
        with _keras_chatter_to_stderr():
            return self._module().decode_predictions(preds, top=top)

    @property
    def all_layers(self) -> tuple[str, ...]:
        """Every named bottleneck layer, the default last."""
        return tuple(x for x in self.layers if x != self.default_layer) + (self.default_layer,)


def _spec(*args, **kw) -> BackboneSpec:
    return BackboneSpec(*args, **kw)


_VGG_LAYERS = ("block3_pool", "block4_conv3", "block4_pool", "block5_conv3")

REGISTRY: dict[str, BackboneSpec] = {
    s.name: s
    for s in [
        _spec("vgg16", "vgg16", "VGG16", "caffe", (224, 224), 32, "block5_pool", _VGG_LAYERS,
              "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "VGG"),
        _spec("vgg19", "vgg19", "VGG19", "caffe", (224, 224), 32, "block5_pool",
              ("block3_pool", "block4_conv4", "block4_pool", "block5_conv4"),
              "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", "VGG"),
        _spec("resnet50", "resnet50", "ResNet50", "caffe", (224, 224), 32, "conv5_block3_out",
              ("conv3_block4_out", "conv4_block6_out"),
              "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "ResNet"),
        _spec("inceptionv3", "inception_v3", "InceptionV3", "tf", (299, 299), 75, "mixed10",
              ("mixed5", "mixed7", "mixed9"),
              "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5", "Inception"),
        _spec("xception", "xception", "Xception", "tf", (299, 299), 71, "block14_sepconv2_act",
              ("block13_sepconv2_bn", "block14_sepconv1_act"),
              "xception_weights_tf_dim_ordering_tf_kernels_notop.h5", "Xception"),
        _spec("mobilenet", "mobilenet", "MobileNet", "tf", (224, 224), 32, "conv_pw_13_relu",
              ("conv_pw_11_relu", "conv_pw_12_relu"),
              "mobilenet_1_0_224_tf_no_top.h5", "MobileNet"),
        _spec("mobilenetv2", "mobilenet_v2", "MobileNetV2", "tf", (224, 224), 32, "out_relu",
              ("block_13_expand_relu", "block_16_project_BN"),
              "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5", "MobileNet"),
        _spec("efficientnetb0", "efficientnet", "EfficientNetB0", "none (in model)", (224, 224), 32,
              "top_activation", ("block6d_add", "block7a_project_bn"),
              "efficientnetb0_notop.h5", "EfficientNet"),
        _spec("densenet121", "densenet", "DenseNet121", "torch", (224, 224), 32, "relu",
              ("pool3_pool", "pool4_pool"),
              "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5", "DenseNet"),
    ]
}

ALIASES = {"vgg-16": "vgg16", "resnet": "resnet50", "inception": "inceptionv3",
           "mobilenet_v2": "mobilenetv2", "efficientnet": "efficientnetb0"}


def get(name: str) -> BackboneSpec:
    """Look a backbone up by name (case-insensitive), with a clear error listing the choices."""
    key = name.lower()
    key = ALIASES.get(key, key)
    if key not in REGISTRY:
        raise KeyError(f"unknown backbone {name!r}; choose one of: {', '.join(REGISTRY)}")
    return REGISTRY[key]


def parse_input_size(text: str | int | None, spec: BackboneSpec) -> tuple[int, int]:
    """Parse ``--input-size`` ("N" or "HxW"); None gives the backbone's default."""
    if text is None or text == "":
        return spec.input_size
    if isinstance(text, int):
        h = w = text
    else:
        parts = str(text).lower().replace("×", "x").split("x")
        try:
            if len(parts) == 1:
                h = w = int(parts[0])
            elif len(parts) == 2:
                h, w = int(parts[0]), int(parts[1])
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"--input-size must be N or HxW, got {text!r}") from None
    if min(h, w) < spec.min_size:
        raise ValueError(f"{spec.name} needs an input of at least {spec.min_size} pixels a side, got {h}x{w}")
    return (h, w)


def describe() -> list[dict]:
    """The registry as plain dicts (for ``bneck backbones --json``)."""
    return [
        {
            "name": s.name,
            "keras_application": f"keras.applications.{s.constructor}",
            "family": s.family,
            "preprocessing": s.preprocessing,
            "input_size": list(s.input_size),
            "min_size": s.min_size,
            "default_layer": s.default_layer,
            "layers": list(s.all_layers),
            "imagenet_notop_file": s.notop_file,
        }
        for s in REGISTRY.values()
    ]

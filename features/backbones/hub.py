"""KerasHub image backbones as registry entries (optional extra ``[hub]``: ``pip install 'bneck[hub]'``).

DINOv2, SigLIP/SigLIP2 and CLIP image encoders and ViT are vision transformers: they return a
token sequence. bneck turns it into what every other backbone gives: with ``--pooling none`` the
patch tokens as an (h, w, C) map (so mirrored views, ``--layer`` and map-pooling heads work as
for a CNN); ``mean`` (= ``avg``) averages the patches; ``cls`` is the class token (SigLIP, which
has none, gives its attention-pooling head instead).

Weights: ``--weights imagenet`` (the default; for these, "the preset's pretrained weights")
loads the KerasHub preset: a local copy first (``$KERAS_HOME/presets/NAME``,
``~/.keras/presets/NAME`` or KaggleHub's cache), else KaggleHub downloads it. ``--weights DIR``
takes a preset directory (``backbone.save_to_preset(DIR)``), hashed like a weights file.
``--weights none`` builds the architecture from the registry's config with random weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import numpy as np

from features.backbones.spec import (
    MAP_POOLINGS,
    affine_function,
    describe_common,
    keras_chatter_to_stderr,
    preprocess_affine,
)

HUB_EXTRA = "pip install 'bneck[hub]'  (keras-hub>=0.32)"


def import_keras_hub():
    """``keras_hub``, or an ImportError that says how to install the extra."""
    try:
        import keras_hub
    except ImportError as exc:
        raise ImportError(f"KerasHub backbones need the optional extra: {HUB_EXTRA} ({exc})") from None
    return keras_hub


#: The Keras packages whose layers a network built on a hub backbone holds, ``{registered package: module
#: prefixes}``: a fine-tuned model (``model.keras``) is read back with these trusted beside Keras' own.
NETWORK_PACKAGES = {"keras_hub": ("keras_hub.",), "bneck": ("features.backbones.tokens",)}


def load_fixes() -> dict:
    """``custom_objects`` with which Keras reads back a saved network holding hub layers ({} without [hub]).

    bneck's own token layer is named so its module need not be imported first. KerasHub 0.32's
    ``ViTPatchingAndEmbedding.get_config`` writes ``num_patches`` and ``num_positions``, which its own
    ``__init__`` refuses, so a saved ViT network does not load back; the fix drops those two derived values.
    """
    try:
        from keras_hub.src.models.vit.vit_layers import ViTPatchingAndEmbedding
    except ImportError:
        return {}
    import inspect

    from features.backbones.tokens import PatchGrid

    fixes = {"bneck>PatchGrid": PatchGrid}
    if "num_patches" not in inspect.signature(ViTPatchingAndEmbedding.__init__).parameters:
        class ViTPatchingFromItsOwnConfig(ViTPatchingAndEmbedding):
            @classmethod
            def from_config(cls, config):
                derived = ("num_patches", "num_positions")
                return ViTPatchingAndEmbedding.from_config({k: v for k, v in config.items() if k not in derived})

        import keras

        # The key Keras looks a class up by when it reads a config (the class name: KerasHub registers none).
        fixes[keras.saving.get_registered_name(ViTPatchingAndEmbedding)] = ViTPatchingFromItsOwnConfig
    return fixes


@dataclass(frozen=True)
class HubSpec:
    """One KerasHub vision transformer (a preset name and the config of its architecture)."""

    name: str
    preset: str  # KerasHub preset name, e.g. "dinov2_small"
    handle: str  # its Kaggle model path, e.g. "keras/dinov2/keras/dinov2_small/1"
    backbone_class: str  # keras_hub.models class built for --weights none, e.g. "DINOV2Backbone"
    config: tuple  # (key, value) pairs of that class's architecture arguments
    preprocessing: str  # the preset's image converter as a registry mode: "torch" | "tf" | "clip"
    input_size: tuple[int, int]
    patch_size: int
    default_layer: str  # the final (normed) token sequence
    layers: tuple[str, ...] = field(default=())  # earlier blocks' outputs, shallow to deep
    family: str = ""
    params: int = 0  # of the --weights none model at the default size (checked by the slow tests)
    gflops: float = 0.0  # at the default size, to the default layer (bench/catalogue.py); 0 = not measured
    fixed_size: bool = True  # position embeddings fit the preset's size only (DINOv2 interpolates)
    class_token: bool = True  # token 0 is a class token
    pooled_layer: str = ""  # a layer whose output is the model's own pooled embedding (SigLIP's head)
    vision_attr: str = ""  # presets holding an image-text model: the attribute with the image encoder
    runtimes: tuple[str, ...] = ("tensorflow", "openvino")  # both convert (tests/features/test_hub_backbones.py)

    source = "keras-hub"
    notop_file = ""
    batchnorm = False  # LayerNorm transformers: their random init keeps its scale (features/random_init.py)

    @property
    def min_size(self) -> int:
        return self.input_size[0] if self.fixed_size else self.patch_size

    @property
    def poolings(self) -> tuple[str, ...]:
        return MAP_POOLINGS + ("mean",) + (("cls",) if self.class_token or self.pooled_layer else ())

    @property
    def all_layers(self) -> tuple[str, ...]:
        return tuple(x for x in self.layers if x != self.default_layer) + (self.default_layer,)

    def check_size(self, h: int, w: int) -> None:
        if self.fixed_size and (h, w) != tuple(self.input_size):
            raise ValueError(f"{self.name} takes {self.input_size[0]}x{self.input_size[1]} inputs only (its position "
                             f"embeddings are trained for that size), got {h}x{w}")
        if h != w:
            raise ValueError(f"{self.name} needs a square input (KerasHub's {self.backbone_class}), got {h}x{w}")
        if h < self.patch_size:
            raise ValueError(f"{self.name} needs an input of at least {self.patch_size} pixels a side, got {h}x{w}")

    def grid(self, h: int, w: int) -> tuple[int, int]:
        """The patch grid of an h x w input."""
        return h // self.patch_size, w // self.patch_size

    def build(self, *, input_size: tuple[int, int] | None = None, weights=None, config: dict | None = None):
        """The KerasHub model: random from ``config`` (default the registry's) when ``weights`` is None,
        else ``Backbone.from_preset(weights)`` (a preset name or a preset directory)."""
        h, w = input_size or self.input_size
        self.check_size(h, w)
        keras_hub = import_keras_hub()
        with keras_chatter_to_stderr():
            if weights is None:
                cls = getattr(keras_hub.models, self.backbone_class)
                return cls(**{**dict(self.config), **(config or {}), "image_shape": (h, w, 3)})
            kwargs = {} if self.fixed_size else {"image_shape": (h, w, 3)}
            import keras

            # The run's dtype policy (--precision) wins over the one the preset was saved with (a bfloat16 or
            # float16 preset loads as float32 weights under --precision fp32): the attrs record what ran.
            # A quantized preset cannot be cast; check_dtype refuses it before this.
            kwargs["dtype"] = keras.config.dtype_policy()
            model = keras_hub.models.Backbone.from_preset(weights, **kwargs)
        return getattr(model, self.vision_attr, model) if self.vision_attr else model

    def _layer_output(self, full, layer: str):
        pyramid = getattr(full, "pyramid_outputs", None) or {}
        if layer in pyramid:
            return pyramid[layer]
        # A preset's saved config names its model, and KerasHub prefixes layer names with it
        # ("dinov2_backbone_layernorm"). Never a bare suffix match: CLIP's "pre_layer_norm" ends in "_layer_norm".
        by_name = {candidate.name: candidate for candidate in full.layers}
        for candidate in (layer, f"{full.name}_{layer}"):
            if candidate in by_name:
                return by_name[candidate].output
        raise ValueError(f"{self.name} has no layer {layer!r}; named choices: {', '.join(self.all_layers)}")

    def truncate(self, full, layer: str, pooling: str = "none"):
        """A model from (B, H, W, 3) preprocessed pixels to ``layer``'s patch map (B, h, w, C), or
        to the class token / pooled embedding (B, C) for ``pooling="cls"``."""
        import keras

        from features.backbones.tokens import PatchGrid

        image_in = keras.tree.flatten(full.input)[0]
        h, w = (int(d) for d in image_in.shape[1:3])
        if pooling == "cls" and self.pooled_layer and layer == self.default_layer:
            out = self._layer_output(full, self.pooled_layer)
        elif pooling == "cls":
            if not self.class_token:
                raise ValueError(f"--pooling cls: {self.name} has no class token; its pooled embedding is the "
                                 f"output of its last layer only (drop --layer), or use --pooling mean")
            out = PatchGrid(self.grid(h, w), take="cls", name="class_token")(self._layer_output(full, layer))
        else:
            out = PatchGrid(self.grid(h, w), name="patch_grid")(self._layer_output(full, layer))
        # The image tensor alone as the input (KerasHub's models take a dict): the truncated model is
        # called on a batch like any Keras application, and its layers stay the hub model's own
        # (encoder_block_K for SigLIP/CLIP), which `finetune --unfreeze` selects by name.
        return keras.Model(image_in, out, name=f"{self.name}_{layer}")

    def preprocess_input(self, x):
        """The preset's image converter (``x * scale + offset`` on RGB 0..255) on arrays or tensors."""
        return affine_function(self.preprocessing)(x)

    @property
    def preprocess_function(self):
        return affine_function(self.preprocessing)

    # --- weights ---------------------------------------------------------------------------------

    def preset_dirs(self) -> list[str]:
        """Where a downloaded copy of the preset is looked for, in order."""
        dirs = []
        if os.environ.get("KERAS_HOME"):
            dirs.append(os.path.join(os.environ["KERAS_HOME"], "presets", self.preset))
        dirs.append(os.path.join(os.path.expanduser("~"), ".keras", "presets", self.preset))
        kaggle = os.environ.get("KAGGLEHUB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "kagglehub")
        dirs.append(os.path.join(kaggle, "models", *self.handle.split("/")))
        return list(dict.fromkeys(dirs))

    def find_preset(self) -> str | None:
        """A local preset directory of this entry (one with a config.json), or None."""
        for d in self.preset_dirs():
            if os.path.isfile(os.path.join(d, "config.json")):
                return d
        return None

    def prefetch_help(self) -> str:
        """Instructions for getting the preset onto an offline machine."""
        return (
            f"KerasHub weights for {self.name} (preset {self.preset!r}) are not here and could not be downloaded.\n"
            f"  On a machine with internet access, run\n"
            f"    python -c \"import keras_hub; keras_hub.models.Backbone.from_preset('{self.preset}')"
            f".save_to_preset('{self.preset}')\"\n"
            f"  (or download https://www.kaggle.com/models/{self.handle}) and copy the folder -- config.json, "
            f"metadata.json, model.weights.h5 (or model_*.weights.h5 with model.weights.json) and "
            f"image_converter.json -- to {self.preset_dirs()[0]} here;\n"
            f"  or pass the folder directly: --weights /path/to/{self.preset}"
        )

    def check_converter(self, preset_dir: str) -> None:
        """Raise ValueError when the preset's image converter is not the registry's preprocessing."""
        path = os.path.join(preset_dir, "image_converter.json")
        if not os.path.isfile(path):
            return  # a backbone saved alone: the registry's preprocessing is the preset family's
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f).get("config", {})
        scale, offset = cfg.get("scale"), cfg.get("offset")
        kernel, bias = preprocess_affine(self.preprocessing)
        want_scale, want_offset = np.diag(kernel), bias
        got_scale = np.broadcast_to(np.asarray(1.0 if scale is None else scale, np.float64), (3,))
        got_offset = np.broadcast_to(np.asarray(0.0 if offset is None else offset, np.float64), (3,))
        if not (np.allclose(got_scale, want_scale, rtol=1e-3) and np.allclose(got_offset, want_offset, atol=1e-3)):
            raise ValueError(
                f"{preset_dir}: its image converter scales pixels by {got_scale.tolist()} and offsets them by "
                f"{got_offset.tolist()}, but {self.name} preprocesses as {self.preprocessing!r} (scale "
                f"{want_scale.tolist()}, offset {want_offset.tolist()}); is it a {self.family} preset?")

    def check_dtype(self, preset_dir: str) -> str | None:
        """The float dtype policy the preset was saved with (None: none recorded); ValueError for a quantized one.

        bneck runs a preset in the dtype ``--precision`` asks for and records that; a quantized preset
        (a ``DTypePolicyMap`` of int8/float8/int4 layers) would run in its own dtype whatever the flag says.
        """
        path = os.path.join(preset_dir, "config.json")
        with open(path, encoding="utf-8") as f:
            dtype = json.load(f).get("config", {}).get("dtype")
        if dtype is None:
            return None
        name = dtype if isinstance(dtype, str) else (dtype.get("config") or {}).get("name")
        kind = dtype if isinstance(dtype, str) else dtype.get("class_name", "")
        if isinstance(name, str) and name in ("float32", "float16", "bfloat16", "mixed_float16", "mixed_bfloat16"):
            return name
        raise ValueError(f"{preset_dir}: the preset is saved quantized ({kind} {name or ''}), which bneck cannot "
                         f"run at the precision --precision asks for and record truthfully; save a float preset "
                         f"(backbone.save_to_preset before quantizing) and use --precision int8 for an int8 "
                         f"OpenVINO model instead")

    def describe(self) -> dict:
        return {**describe_common(self), "keras_hub_preset": self.preset, "keras_hub_class": self.backbone_class,
                "patch_size": self.patch_size, "kaggle_handle": self.handle}


def _dinov2(size, layers, hidden, heads, params):
    cfg = dict(patch_size=14, num_layers=layers, hidden_dim=hidden, num_heads=heads, intermediate_dim=4 * hidden,
               layer_scale_init_value=1.0, position_embedding_shape=(518, 518, 3))
    named = tuple(f"stage{i}" for i in (layers // 2, 3 * layers // 4))
    return HubSpec(f"dinov2_{size}", f"dinov2_{size}", f"keras/dinov2/keras/dinov2_{size}/1", "DINOV2Backbone",
                   tuple(cfg.items()), "torch", (224, 224), 14, "layernorm", named, "DINOv2", params,
                   fixed_size=False)


def _encoder(name, handle_model, cls, preprocessing, size, patch, layers, hidden, heads, params, family, **kw):
    cfg = dict(patch_size=patch, num_layers=layers, hidden_dim=hidden, num_heads=heads, intermediate_dim=4 * hidden)
    named = tuple(f"encoder_block_{i}" for i in (layers // 2 - 1, 3 * layers // 4 - 1))
    return HubSpec(name, name, f"keras/{handle_model}/keras/{name}/{kw.pop('version', 1)}", cls, tuple(cfg.items()),
                   preprocessing, (size, size), patch, kw.pop("default_layer"), named, family, params,
                   vision_attr="vision_encoder", **kw)


#: GFLOPs of one image at the default size to the default layer (bench/catalogue.py, TF's profiler, 2 per MAC).
GFLOPS = {
    "dinov2_small": 12.33, "dinov2_base": 46.49, "dinov2_large": 162.48, "siglip_base_patch16_224": 35.08,
    "siglip2_base_patch16_224": 35.08, "clip_vit_base_patch16": 35.23, "clip_vit_large_patch14": 162.41,
    "vit_base_patch16_224_imagenet": 35.24, "vit_large_patch16_224_imagenet": 123.42
}

ENTRIES: list[HubSpec] = [dataclasses.replace(s, gflops=GFLOPS.get(s.name, 0.0)) for s in [
    _dinov2("small", 12, 384, 6, 22_155_264),
    _dinov2("base", 12, 768, 12, 86_777_856),
    _dinov2("large", 24, 1024, 16, 304_631_808),
    _encoder("siglip_base_patch16_224", "siglip", "SigLIPVisionEncoder", "tf", 224, 16, 12, 768, 12, 92_884_420,
             "SigLIP", default_layer="post_layer_norm", class_token=False, pooled_layer="head"),
    _encoder("siglip2_base_patch16_224", "siglip", "SigLIPVisionEncoder", "tf", 224, 16, 12, 768, 12, 92_884_420,
             "SigLIP2", default_layer="post_layer_norm", class_token=False, pooled_layer="head"),
    _encoder("clip_vit_base_patch16", "clip", "CLIPVisionEncoder", "clip", 224, 16, 12, 768, 12, 85_799_621,
             "CLIP", default_layer="layer_norm", version=3),
    _encoder("clip_vit_large_patch14", "clip", "CLIPVisionEncoder", "clip", 224, 14, 24, 1024, 16, 303_180_033,
             "CLIP", default_layer="layer_norm", version=3),
    HubSpec("vit_base_patch16_224_imagenet", "vit_base_patch16_224_imagenet",
            "keras/vit/keras/vit_base_patch16_224_imagenet/4", "ViTBackbone",
            tuple(dict(patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072).items()),
            "tf", (224, 224), 16, "vit_encoder", (), "ViT", 85_798_656),
    HubSpec("vit_large_patch16_224_imagenet", "vit_large_patch16_224_imagenet",
            "keras/vit/keras/vit_large_patch16_224_imagenet/4", "ViTBackbone",
            tuple(dict(patch_size=16, num_layers=24, num_heads=16, hidden_dim=1024, mlp_dim=4096).items()),
            "tf", (224, 224), 16, "vit_encoder", (), "ViT", 303_301_632),
]]

ALIASES = {"dinov2": "dinov2_small", "dinov2_s14": "dinov2_small", "dinov2_b14": "dinov2_base",
           "dinov2_l14": "dinov2_large", "siglip": "siglip_base_patch16_224", "siglip2": "siglip2_base_patch16_224",
           "clip": "clip_vit_base_patch16", "vit": "vit_base_patch16_224_imagenet"}

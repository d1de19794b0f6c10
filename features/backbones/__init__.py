"""The backbone registry: the only place in bneck that names a model.

:mod:`features.backbones.keras_apps` holds every ``keras.applications`` constructor and
:mod:`features.backbones.hub` the KerasHub image backbones (DINOv2, SigLIP/SigLIP2, CLIP, ViT;
optional extra ``[hub]``). Each entry carries its own preprocessing, sizes, layers and weights.
"""

from features.backbones.hub import HubSpec  # noqa: F401
from features.backbones.registry import ALIASES, REGISTRY, describe, get, parse_input_size  # noqa: F401
from features.backbones.spec import MAP_POOLINGS, BackboneSpec, affine_function, preprocess_affine  # noqa: F401

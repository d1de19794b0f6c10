"""Stitch a trained model directory into ONE Keras model: RGB pixels in, class scores or targets out.

The model is ``Input((H, W, 3), float32 pixel values 0..255, RGB)`` -> the backbone's
``preprocess_input`` as a frozen 1x1 ``Conv2D`` named ``preprocess`` -> the truncated backbone ->
extraction pooling -> on-load pooling -> the head -> ``scores`` (what ``predict_proba`` gives) or
``targets`` (regression, in training-image pixels). Only built-in layers are used, so the
``.keras`` file loads with ``safe_mode=True`` and no custom objects, and the same graph converts
to a TF SavedModel and to TFLite. :mod:`pipeline.serve.export` writes it; ``finetune`` trains it.
:func:`any_size_input` puts a resize in front (``bneck export --any-size``): uint8 of any size in.
"""

from __future__ import annotations

import logging

log = logging.getLogger("bneck")
def preprocessing_layer(mode: str):
    """A built, frozen ``Conv2D(3, 1)`` named "preprocess" computing the backbone's preprocess_input."""
    from keras import layers

    from features.backbones import preprocess_affine

    kernel, bias = preprocess_affine(mode)
    # Every Keras preprocess_input mode is a per-pixel affine map, i.e. a 1x1 conv; a built-in
    # layer needs no custom object (a Lambda would not load with safe_mode=True).
    conv = layers.Conv2D(3, 1, name="preprocess", trainable=False)
    conv.build((None, None, None, 3))
    conv.set_weights([kernel.reshape(1, 1, 3, 3).astype("float32"), bias.astype("float32")])
    return conv


def _head_output(head, meta, x):
    """Apply the head to feature tensor ``x`` with built-in layers; same values as ``head_scores``."""
    # Each head class knows its own Keras form (pipeline.heads.base.Head.keras_output).
    if not callable(getattr(head, "keras_output", None)):
        raise ValueError(f"cannot export a {type(head).__name__} head ({meta.get('head')!r}): it has no Keras form")
    return head.keras_output(x, meta["task"])


def stitch(model_dir, *, weights_dirs=(), trust_pickle: bool = False):
    """(keras.Model pixels -> scores/targets, head, meta, spec, backbone) for a trained model directory.

    ``trust_pickle`` allows a format-v1 ``head.joblib`` (a pickle, which runs code: see ``load_model_dir``).
    """
    import keras
    from keras import layers

    from pipeline.modeldir import load_model_dir
    from pipeline.serve.backbone import build_backbone_from

    head, meta = load_model_dir(model_dir, trust_pickle=trust_pickle)
    prov = meta["features"]
    if prov.get("precision", "fp32") != "fp32":
        log.info("features were extracted in %s; the exported backbone runs in fp32", prov["precision"])
    # fp32 whatever the features used: bf16/fp16 policies are a runtime choice of stage one.
    spec, backbone, _ = build_backbone_from(prov, precision="fp32", model_dir=model_dir, weights_dirs=weights_dirs)
    inp = keras.Input((*(int(v) for v in prov["input_size"]), 3), dtype="float32", name="image")
    x = backbone(preprocessing_layer(prov.get("preprocessing") or spec.preprocessing)(inp))
    pools = {"avg": layers.GlobalAveragePooling2D, "mean": layers.GlobalAveragePooling2D,
             "max": layers.GlobalMaxPooling2D}
    for name, how in (("extract_pool", prov.get("pooling", "none")), ("load_pool", meta.get("pooling", "none"))):
        if how in pools and len(x.shape) == 4:  # on-load pooling is a no-op on pooled features
            x = pools[how](name=name)(x)
    y = _head_output(head, meta, x)
    out = layers.Identity(name="scores" if meta["task"] == "classification" else "targets")(y)
    return keras.Model(inp, out, name="bneck_export"), head, meta, spec, backbone


def any_size_input(model, size):
    """``model`` (float32 pixels at ``size``) behind ``Input((None, None, 3), uint8)`` and a Keras ``Resizing``.

    The resize is bilinear with ``antialias=True``, TensorFlow's counterpart of Pillow's BILINEAR
    (whose kernel also widens when downscaling), rounded back to uint8 like Pillow: an app feeds the
    decoded image as it is. Only libjpeg's reduced-size decode of large JPEGs
    (:mod:`features.images`, step 4) is not reproduced; tests/pipeline/serve/test_export.py measures what that costs.
    The output keeps its name (``scores`` or ``targets``).
    """
    import keras
    from keras import layers

    h, w = (int(v) for v in size)
    inp = keras.Input((None, None, 3), dtype="uint8", name="image")
    x = layers.Resizing(h, w, interpolation="bilinear", antialias=True, name="resize")(inp)
    out = layers.Identity(name=model.output_names[0])(model(x))
    return keras.Model(inp, out, name=f"{model.name}_any_size")

"""Look inside a backbone: its layer table, an architecture plot, and what its filters respond to.

``bneck backbones --summary NAME`` / ``--plot NAME`` and ``bneck visualize-filters`` call in here.
The table and the plot describe the architecture only, so they build the backbone with random
weights and never need ImageNet files.
"""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
from PIL import Image

from features import backbones
from features.fsutil import atomic_path

log = logging.getLogger("bneck")


class MissingTool(RuntimeError):
    """An optional program or package a command needs is not installed."""


def layer_table(name: str, *, input_size=None) -> dict:
    """Every layer of the include_top=False backbone: name, type, output shape, params; plus totals."""
    spec = backbones.get(name)
    size = backbones.parse_input_size(input_size, spec)
    model = spec.build(input_size=size, weights=None)
    named = set(spec.all_layers)
    rows = []
    for layer in model.layers:
        out = layer.output
        shape = [list(o.shape) for o in out] if isinstance(out, (list, tuple)) else list(out.shape)
        mark = "default" if layer.name == spec.default_layer else "named" if layer.name in named else ""
        rows.append({"name": layer.name, "type": type(layer).__name__, "output_shape": shape,
                     "params": int(layer.count_params()), "bottleneck": mark})
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    total = int(model.count_params())
    return {"backbone": spec.name, "input_size": list(size), "layers": rows, "total_params": total,
            "trainable_params": trainable, "non_trainable_params": total - trainable}


def format_layer_table(table: dict) -> str:
    """The layer table as aligned text (``*`` marks the named bottleneck layers, ``**`` the default)."""
    def shape(s):  # (None, 7, 7, 512); a list of shapes for multi-output layers
        if s and isinstance(s[0], list):
            return " ".join(shape(x) for x in s)
        return "(" + ", ".join("None" if d is None else str(d) for d in s) + ")"

    lines = [f"{table['backbone']} at {table['input_size'][0]}x{table['input_size'][1]} (include_top=False)",
             f"  {'layer':28s} {'type':24s} {'output shape':22s} {'params':>10s}"]
    for r in table["layers"]:
        mark = {"default": " **", "named": " *"}.get(r["bottleneck"], "")
        lines.append(f"  {r['name'] + mark:28s} {r['type']:24s} {shape(r['output_shape']):22s} {r['params']:10,d}")
    lines.append(f"  total params {table['total_params']:,d} (trainable {table['trainable_params']:,d}, "
                 f"non-trainable {table['non_trainable_params']:,d});  * bottleneck layer choices, ** the default")
    return "\n".join(lines)


def plot_backbone(name: str, output: str, *, input_size=None) -> str:
    """Draw the backbone's graph with ``keras.utils.plot_model`` (needs pydot and Graphviz's ``dot``)."""
    import keras

    try:
        import pydot  # noqa: F401
    except ImportError:
        raise MissingTool("--plot needs pydot and Graphviz: pip install pydot, and install Graphviz's `dot` "
                          "(apt-get install graphviz / brew install graphviz / conda install graphviz)") from None
    if shutil.which("dot") is None:
        raise MissingTool("--plot needs Graphviz's `dot` program on PATH (pydot is installed): "
                          "apt-get install graphviz / brew install graphviz / conda install graphviz")
    spec = backbones.get(name)
    model = spec.build(input_size=backbones.parse_input_size(input_size, spec), weights=None)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with atomic_path(output, durable=False) as tmp:
        keras.utils.plot_model(model, to_file=tmp, show_shapes=True, show_layer_names=True)
    return output


def parse_filters(text: str) -> list[int]:
    """Parse ``"0-15"``, ``"3,7,9-11"`` into a list of filter indices (ranges inclusive)."""
    out = []
    for part in str(text).replace(" ", "").split(","):
        try:
            lo, _, hi = part.partition("-")
            out += list(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise ValueError(f"--filters must look like 0-15 or 3,7,9-11, got {text!r}") from None
    if not out or min(out) < 0:
        raise ValueError(f"--filters must name at least one filter index >= 0, got {text!r}")
    return out


def deprocess(img: np.ndarray) -> np.ndarray:
    """Map an ascent result to viewable uint8: centre, scale to a std of 0.15 of the range, clip."""
    x = img.astype(np.float64)
    x = (x - x.mean()) / (x.std() + 1e-5) * 0.15 + 0.5
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def grid_image(tiles: np.ndarray, margin: int = 4) -> np.ndarray:
    """Lay (N, S, S, 3) uint8 tiles out in a near-square grid with black margins."""
    n, s = len(tiles), tiles.shape[1]
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.zeros((rows * s + (rows - 1) * margin, cols * s + (cols - 1) * margin, 3), np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        grid[r * (s + margin):r * (s + margin) + s, c * (s + margin):c * (s + margin) + s] = tile
    return grid


def visualize_filters(backbone: str, layer: str, filters, output: str, *, weights: str = "imagenet",
                      steps: int = 30, size: int = 128, step: float = 2.0, seed: int = 0) -> dict:
    """Render what each filter of ``layer`` responds to, by gradient ascent on the input image.

    Each filter gets its own image, starting from grey (128) plus uniform noise (+-10) in pixel
    space. Every step adds ``step`` x the gradient of the filter's mean activation, normalised by
    its RMS (so ``step`` is in pixel levels and the pace does not depend on the layer's scale);
    the backbone's own ``preprocess_input`` is part of the differentiated graph. The images are
    deprocessed to uint8 (:func:`deprocess`) and written as one grid PNG with Pillow, atomically.

    Args:
        backbone, layer: a registry name and any of its layers (``bneck backbones --summary NAME``).
        filters: indices (or a string for :func:`parse_filters`) of the layer's output channels.
        weights: as for ``bneck extract`` (imagenet, none, auto, or a file); ``seed`` seeds ``none``.

    Returns ``{"path", "layer", "filters", "grid_size": [width, height], "activations"}`` where
    ``activations`` holds, per step (the start included), the mean activation of each filter.
    """
    import tensorflow as tf

    from features.weights import build_backbone

    spec = backbones.get(backbone)
    filters = parse_filters(filters) if isinstance(filters, str) else [int(f) for f in filters]
    model, _ = build_backbone(spec, input_size=(size, size), layer=layer, weights=weights, seed=seed)
    channels = int(model.output_shape[-1])
    if max(filters) >= channels:
        raise ValueError(f"{layer} has {channels} filters (0-{channels - 1}); --filters asks for {max(filters)}")
    # Image k is scored on filter k only (a one-hot channel mask), so one batch ascends every filter at once.
    onehot, pre = tf.one_hot(filters, channels)[:, None, None, :], spec.preprocess_function

    def mean_activation(img):
        act = model(pre(img), training=False)  # (F, h, w, C)
        return tf.reduce_mean(tf.reduce_sum(act * onehot, axis=-1), axis=[1, 2])

    @tf.function
    def ascend(img):
        with tf.GradientTape() as tape:
            tape.watch(img)
            act = mean_activation(img)
            total = tf.reduce_sum(act)  # the images are independent: one backward pass serves all
        g = tape.gradient(total, img)
        g = g / (tf.sqrt(tf.reduce_mean(tf.square(g), axis=[1, 2, 3], keepdims=True)) + 1e-8)
        return img + step * g, act

    rng = np.random.default_rng(seed)
    img = tf.constant(128.0 + rng.uniform(-10, 10, (len(filters), size, size, 3)), tf.float32)
    history = []
    for _ in range(int(steps)):
        img, act = ascend(img)
        history.append(act.numpy().tolist())
    history.append(mean_activation(img).numpy().tolist())
    grid = grid_image(np.stack([deprocess(x) for x in img.numpy()]))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with atomic_path(output, durable=False) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    log.info("%d filters of %s/%s -> %s", len(filters), spec.name, layer, output)
    return {"path": output, "layer": layer, "filters": filters, "grid_size": [grid.shape[1], grid.shape[0]],
            "activations": history}

"""Fine-tune a trained model end to end: the stitched backbone + head, with the top of the backbone unfrozen.

Start from a ``bneck train`` model directory: :func:`pipeline.serve.export.stitch` rebuilds pixels ->
frozen 1x1-conv preprocess -> backbone -> pooling -> head with the stage-two weights, then the chosen
top layers of the backbone and the whole head train with SGD on decoded images. The result is a model
directory holding the whole network as ``model.keras`` (built-in layers only, ``safe_mode`` loadable)
with ``model.json`` ``head: "finetuned"``; :class:`FinetunedPredictor`, :func:`export_finetuned` and
:func:`evaluate_on_images` use it like ``Predictor``, ``export`` and ``evaluate`` use a head.

BatchNorm. In Keras 3 a ``BatchNormalization`` layer whose ``trainable`` is False always runs in
inference mode: it normalises with its moving mean/variance and never updates them, whatever
``training`` flag ``fit`` passes down. Freezing BN is therefore exactly the Keras 2 idiom
``base(x, training=False)`` for those layers, while the unfrozen convolutions still get gradients.
That is the default (``train_bn=False``) and the right choice for small datasets: batch statistics
of a few dozen images would overwrite ImageNet's. With ``train_bn=True`` the BN layers *inside the
unfrozen part* train (gamma/beta) and use and update batch statistics; BN layers below stay frozen.
"""

from __future__ import annotations

import logging
import os
import time

import keras
import numpy as np

from features.images import input_contract
from pipeline.curves import history_csv, learning_curve_png
from pipeline.data.keypoint_frame import to_frame, unmirror_widths
from pipeline.evaluate import PassThrough
from pipeline.finetune.data import augment_strengths, image_dataset, make_augment
from pipeline.finetune.epochs import BestEpoch
from pipeline.serve.finetuned import MODEL_FILE
from pipeline.serve.rows import decode_rows, refuse_unlabelled_source, targets_for

log = logging.getLogger("bneck")


def inherited_flip(meta: dict, flip: bool | None = None) -> tuple[bool, str]:
    """Whether to mirror training images, and why: ``flip`` when given, else what the starting model was trained on.

    A head trained without mirrored rows (``training.used_flipped`` false, e.g. ``bneck train --no-flipped``)
    or on features without mirrored views (``features.flip`` false, ``bneck extract --no-flip``) was told
    that mirrors are not the same picture (digits, text): fine-tuning it on mirrored images would teach it
    the opposite. A model.json that records neither keeps the old default, mirroring.
    """
    if flip is not None:
        return bool(flip), "asked for (--flip)" if flip else "asked for (--no-flip)"
    if meta.get("features", {}).get("flip") is False:
        return False, "inherited: the features have no mirrored views (extract --no-flip)"
    used = meta.get("training", {}).get("used_flipped")
    if used is False:
        return False, "inherited: the head was trained without mirrored rows (train --no-flipped)"
    if used is None:
        return True, "model.json does not say whether the head saw mirrored rows; mirroring"
    return True, "inherited: the head was trained with mirrored rows"


def select_trainable(backbone, *, unfreeze=None, unfreeze_last=None, train_bn=False) -> list[str]:
    """Set the backbone layers' ``trainable`` flags; return the names of the layers that will train."""
    weighted = [layer for layer in backbone.layers if layer.weights]
    if unfreeze:
        prefixes = tuple(p for p in str(unfreeze).split(",") if p)
        chosen = [layer for layer in weighted if layer.name.startswith(prefixes)]
        if not chosen:
            blocks = list(dict.fromkeys(layer.name.split("_")[0] for layer in weighted))
            raise ValueError(f"--unfreeze {unfreeze}: no layer with weights starts with that; "
                             f"prefixes in this backbone: {', '.join(blocks)}")
    else:
        n = int(unfreeze_last or 0)
        if not 0 <= n <= len(weighted):
            raise ValueError(f"--unfreeze-last {n}: the backbone has {len(weighted)} layers with weights")
        chosen = weighted[len(weighted) - n:] if n else []
    # BN layers count towards --unfreeze-last either way, so --train-bn never changes which convs train.
    chosen = [layer for layer in chosen if train_bn or not isinstance(layer, keras.layers.BatchNormalization)]
    backbone.trainable = True  # Keras 3 propagates this to every sublayer; then freeze all but the chosen
    keep = {id(layer) for layer in chosen}
    for layer in backbone.layers:
        layer.trainable = id(layer) in keep
    return [layer.name for layer in chosen]


def normalization_layers(layers) -> list:
    """The (non-inverting) Normalization layers with given statistics in ``layers`` and their direct sublayers."""
    return [sub for top in layers for sub in (getattr(top, "layers", None) or [top])
            if isinstance(sub, keras.layers.Normalization) and getattr(sub, "input_variance", None) is not None
            and not sub.invert]


def set_variance(layer, variance) -> None:
    """Give a Normalization layer with given statistics a new variance (the saved config value and the used tensor)."""
    # Keras keeps given statistics as constants: set the config value (saved) and the tensor (used).
    new = np.asarray(variance, np.float64)
    layer.input_variance = new.tolist()
    shape = keras.ops.shape(layer.variance)
    layer.variance = keras.ops.cast(keras.ops.reshape(new, shape), layer.compute_dtype)


def temper_normalization(layers, rel_floor: float = 1e-2) -> int:
    """Floor the variances of the head's Normalization layers at ``rel_floor`` x their median; return how many rose."""
    # A channel that was (nearly) constant in the cached features got a variance near the DenseHead's
    # 1e-6 floor, i.e. a gain of up to 1000. Once the backbone trains, such a channel wakes up and that
    # gain blows the logits up (measured: NaN in the first epoch on the demo digits, VGG16 block4).
    # Raising the floor leaves constant channels' outputs unchanged and caps the gain at 10x typical.
    raised = 0
    for layer in normalization_layers(layers):
        var = np.asarray(layer.input_variance, np.float64)
        new = np.maximum(var, rel_floor * np.median(var))
        raised += int((new > var).sum())
        set_variance(layer, new)
    return raised


class _Saved:
    """What ``save_model_dir`` stores as the head: the whole fine-tuned network (``model.keras``, no pickle)."""

    head_loader = "keras"  # read back by pipeline.serve.finetuned.load_finetuned (checked, safe_mode=True)
    format_version = 1

    head_loader = "keras"  # read back by pipeline.serve.finetuned, never unpickled

    def __init__(self, model):
        self.model = model

    def save(self, dirpath):
        """Write ``model.keras`` without optimizer state (a fresh uncompiled clone with the same weights)."""
        from features.backbones.hub import load_fixes

        fixes = load_fixes()

        def clone_layer(layer):  # as clone_model does, with the fix of a hub layer whose config does not load
            cls = fixes.get(keras.saving.get_registered_name(type(layer)), type(layer))
            return cls.from_config(layer.get_config())

        with keras.saving.CustomObjectScope(fixes):  # the same fixes for the layers of a nested model
            clean = keras.models.clone_model(self.model, clone_function=clone_layer)
        clean.set_weights(self.model.get_weights())
        clean.save(os.path.join(dirpath, MODEL_FILE))


def finetune(model_dir, data, output, *, unfreeze=None, unfreeze_last=None, train_bn=False, lr=1e-4,
             momentum=0.9, epochs=10, batch_size=32, val=None, val_split=0.2, augment=True, flip=None,
             shift=None, zoom=None, rotation=None, brightness=None, channel_shift=None,
             seed=0, source=None, overwrite=False, weights_dirs=(), trust_pickle=False) -> dict:
    """Fine-tune the model directory ``model_dir`` on the images of ``data`` and save it to ``output``.

    Args:
        model_dir: a ``bneck train`` model directory (dense, svm or logreg heads; linear specialists).
        data: a class folder, CSV or Kaggle keypoints CSV (:func:`features.reader.sources.read_source`, options
            in ``source``), decoded by :func:`features.images.load_rgb` rules at the backbone input size
            and held in memory as uint8 (N x H x W x 3 bytes).
        output: the model directory to write (atomically, at the end, with the best epoch's weights).
        unfreeze: comma-separated layer-name prefixes to train (``"block5"``); or
        unfreeze_last: train the last N backbone layers that have weights (0: the head only).
        train_bn: let the BatchNorm layers inside the unfrozen part train (see the module docstring).
        lr, momentum, epochs, batch_size: SGD settings.
        val, val_split: a separate validation source, else a seeded (stratified) fraction of ``data``.
        augment: random augmentation of the training images (in the input pipeline only, never saved
            in the model): for classes the mirror, ``shift``/``zoom``/``rotation`` and the photometric
            ``brightness``/``channel_shift``; for keypoints a flip-aware mirror (x mirrored, left/right
            swapped) and the photometric ones. Strengths as in :data:`pipeline.finetune.data.AUGMENT`
            (None: its default: shift 0.1, zoom 0.1, no rotation, no photometric shifts).
        flip: mirror the training images; None (default) inherits the starting model's choice
            (:func:`inherited_flip`: no mirrors for a head trained without mirrored rows).
        seed: seeds the split, the shuffling, the augmentation and Keras; ``source``: read_source options.
        overwrite: replace an existing model directory at ``output`` (checked before training starts).
        weights_dirs: more folders to find the backbone weights in (by sha256).
        trust_pickle: allow a format-v1 ``head.joblib`` in ``model_dir`` (a pickle, which runs code).

    The starting model is scored on the validation rows first (epoch "0"). The kept epoch is the one
    with the lowest ``val_loss`` (cross-entropy, or masked MSE for keypoints), as ``bneck train`` keeps
    its dense heads' epochs, and only if it is strictly lower than the starting model's; otherwise the
    starting model is written unchanged (``kept_starting_model``: true, ``best_epoch``: -1). ``best_epoch``
    counts like ``bneck train``'s: the 0-based index of the trained epoch (:mod:`pipeline.finetune.epochs`).
    Without validation rows, the lowest training loss, with nothing to compare the start with.
    Returns the saved model.json content.
    """
    from features.reader.sources import read_source
    from pipeline.data.splits import grouped_train_val_split, train_val_split
    from pipeline.evaluate import metrics_for
    from pipeline.heads.dense_fit import masked_mae, masked_mse
    from pipeline.modeldir import check_writable, save_model_dir
    from pipeline.serve.stitch import stitch

    if (unfreeze is None) == (unfreeze_last is None):
        raise ValueError("choose what to unfreeze: --unfreeze PREFIX (e.g. block5) or --unfreeze-last N")
    check_writable(output, overwrite=overwrite)  # fail now, not after an hour of training
    strengths = augment_strengths(shift=shift, zoom=zoom, rotation=rotation, brightness=brightness,
                                  channel_shift=channel_shift)
    t0 = time.time()
    # Read (and check) the sources before the network is stitched: a malformed or unlabelled one fails in ms.
    man = read_source(data, **(source or {}))
    refuse_unlabelled_source(man, data)
    vman = read_source(val, **(source or {})) if val else None
    if vman is not None:
        refuse_unlabelled_source(vman, val)
    model, _, meta, _, backbone = stitch(model_dir, weights_dirs=weights_dirs, trust_pickle=trust_pickle)
    keras.utils.set_random_seed(seed)  # after stitch, which seeds the backbone's own construction
    task, size = meta["task"], tuple(int(v) for v in meta["features"]["input_size"])
    trained = select_trainable(backbone, unfreeze=unfreeze, unfreeze_last=unfreeze_last, train_bn=train_bn)
    flip, flip_reason = inherited_flip(meta, flip)
    head_layers = [layer for layer in model.layers if layer is not backbone]
    for layer in head_layers:  # the head trains too; the preprocess conv and the binary [1-p, p] map never
        layer.trainable = layer.name not in ("preprocess", "binary_proba")
    if not all(np.isfinite(w).all() for w in model.get_weights()):
        raise ValueError(f"{model_dir}: the head has undefined outputs (specialists leaving targets out); "
                         "fine-tune a dense head instead")

    x, hw, rows, bad = decode_rows(man, size)
    y = targets_for(man, meta, rows)
    split = None
    if val:
        xv, hwv, vrows, _ = decode_rows(vman, size)
        yv = targets_for(vman, meta, vrows)
    else:
        cls = task == "classification"
        if man.groups is not None:  # frames of one video: all on one side (pipeline.data.splits)
            tr, va, split = grouped_train_val_split(y if cls else len(y), val_split, stratify=cls, seed=seed,
                                                    groups=np.asarray(man.groups, dtype=object)[rows], by=man.group_by)
            split["classes_not_validated"] = [meta["class_names"][c] for c in split["classes_not_validated"]]
        else:
            tr, va = train_val_split(y if cls else len(y), val_split, stratify=cls, seed=seed)
        x, hw, y, xv, hwv, yv = x[tr], hw[tr], y[tr], x[va], hw[va], y[va]
    # The head predicts in its training frame: targets of other-sized images are moved into it.
    yv_pixels, y, yv = yv, to_frame(meta, y, hw), to_frame(meta, yv, hwv)
    w, wv = (unmirror_widths(meta, sizes[:, 1], len(sizes), size).astype(np.float32) for sizes in (hw, hwv))
    if not len(x):
        raise ValueError(f"{data}: no decodable training images")
    log.info("fine-tuning %s: %d training / %d validation images, %d backbone layers unfrozen (%s)",
             model_dir, len(x), len(xv), len(trained), ", ".join(trained[:6]) + (" ..." if len(trained) > 6 else ""))

    if augment:
        log.info("augmentation: mirror %s, %s; %s", "on" if flip else "off", flip_reason,
                 ", ".join(f"{k} {v:g}" for k, v in strengths.items()))

    if task == "classification":
        loss = keras.losses.SparseCategoricalCrossentropy()
        metric = lambda: keras.metrics.SparseCategoricalAccuracy(name="accuracy")  # noqa: E731
    else:
        loss, metric = masked_mse, lambda: keras.metrics.MeanMetricWrapper(masked_mae, name="mae")
    monitor = "val_loss" if len(xv) else "loss"  # one rule with `bneck train` (pipeline.heads.dense_fit)
    val_ds = image_dataset(xv, yv, wv, batch_size) if len(xv) else None
    # Epoch 0: the starting model exactly as it would be written, before temper_normalization touches it.
    model.compile(loss=loss, metrics=[metric()])
    before = model.evaluate(val_ds, return_dict=True, verbose=0) if val_ds is not None else {}
    if before:
        log.info("epoch 0 (the starting model): %s", " ".join(f"val_{k} {v:.4g}" for k, v in before.items()))
    else:
        log.warning("no validation rows: the epoch with the lowest training loss is kept, and nothing checks "
                    "it against the starting model (give --val or a --val-split above 0)")
    norms = normalization_layers(head_layers)
    start_variances = [np.array(layer.input_variance, np.float64) for layer in norms]
    n_floored = temper_normalization(head_layers)
    # Compiling again drops the functions traced above: they hold the untempered variances as constants.
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr, momentum=momentum), loss=loss, metrics=[metric()])
    aug = make_augment(task, target_names=meta.get("target_names"), flip=flip, seed=seed,
                       strengths=strengths) if augment else None
    train_ds = image_dataset(x, y, w, batch_size, augment=aug, shuffle=True, seed=seed)
    best = BestEpoch(monitor, epochs, baseline=before.get("loss"))
    model.fit(train_ds, validation_data=val_ds, epochs=int(epochs), callbacks=[best, keras.callbacks.TerminateOnNaN()],
              shuffle=False, verbose=0)
    if best.kept_start and best.start_weights is None:
        raise RuntimeError(f"fine-tuning diverged ({monitor} was NaN from the first epoch on); lower --lr "
                           f"(now {lr}); nothing was written")
    if best.kept_start:  # the starting weights are back (BestEpoch); put its statistics back too
        for layer, var in zip(norms, start_variances):
            set_variance(layer, var)
        tried = [v for v in best.history.get(monitor, []) if np.isfinite(v)]
        log.warning("no epoch beat the starting model on validation (%s %.4g; the epochs reached %s): writing the "
                    "starting model unchanged%s", monitor, best.baseline,
                    ", ".join(f"{v:.4g}" for v in tried) or "only NaN",
                    "" if tried else f" (training diverged: lower --lr, now {lr})")
    else:
        log.info("keeping epoch %d of %d (%s %.4g; the starting model had %s)", best.best_epoch + 1, int(epochs),
                 monitor, best.best, "no validation score" if best.baseline is None else f"{best.baseline:.4g}")

    metrics = {}
    if len(xv):
        scores = model.predict(image_dataset(xv, yv, wv, batch_size).map(lambda a, _b: a), verbose=0)
        val_loss = float(np.mean(keras.ops.convert_to_numpy(loss(yv, scores))))  # masked_mse gives per-row values
        metrics = {**metrics_for(PassThrough(), scores, yv_pixels, meta, sizes=hwv), "val_loss": val_loss}
    out_meta = {
        "head": "finetuned", "task": task, "class_names": meta.get("class_names"),
        "target_names": meta.get("target_names"), "target_frame": meta.get("target_frame"),
        "pooling": "none", "features": meta["features"],
        "base_model": {"path": os.path.abspath(model_dir), "head": meta["head"], "metrics": meta.get("metrics", {})},
        "finetune": {"data": str(data), "val": str(val) if val else None, "val_split": None if val else val_split,
                     "split": split,  # by group (video) when the source has groups, else None: by image
                     "unfreeze": unfreeze, "unfreeze_last": unfreeze_last, "train_bn": train_bn,
                     "trainable_backbone_layers": trained,
                     "n_trainable_params": int(sum(np.prod(v.shape) for v in model.trainable_weights)),
                     "lr": lr, "momentum": momentum, "epochs": int(epochs), "batch_size": batch_size,
                     "augment": bool(augment), "flip": bool(flip), "flip_reason": flip_reason,
                     "augmentation": strengths if augment else None, "seed": seed, "monitor": monitor,
                     # 0-based like `bneck train`'s training.best_epoch; -1 with kept_starting_model
                     "best_epoch": best.best_epoch, "kept_starting_model": best.kept_start,
                     "normalization_floored": 0 if best.kept_start else n_floored, "n_train": len(x),
                     "n_val": len(xv), "n_bad_skipped": len(bad),
                     "val_before": {k: float(v) for k, v in before.items()}, "seconds": round(time.time() - t0, 2)},
        "metrics": metrics,
        # model.keras takes pixels: how an app must decode and resize them (features.images).
        "input_contract": input_contract(meta["features"]["input_size"]),
    }
    extra = {"history.csv": history_csv(best.history)}
    png = learning_curve_png(best.history)
    if png:
        extra["learning_curve.png"] = png
    return save_model_dir(output, _Saved(model), out_meta, extra_files=extra, overwrite=overwrite)

"""Which epoch a whole-network run keeps: the best on validation, or the starting model if no epoch beats it.

One rule for ``bneck train`` and ``bneck finetune``: the lowest ``val_loss`` (``loss`` when there is no
validation data) wins, NaN never does, and ``best_epoch`` is Keras' 0-based index of the trained epoch
(row ``best_epoch + 1`` of ``history.csv``), as :class:`pipeline.heads.dense_fit.EpochControl` records it.
Fine-tuning also scores the model it starts from (epoch "0" of the run, before any training step):
an epoch is kept only if it is strictly lower than that, and when none is, ``best_epoch`` is
:data:`START` (-1: "no trained epoch", so ``best_epoch + 1`` is always the number of epochs the kept
weights were trained) and the starting weights are put back.
"""

from __future__ import annotations

import logging
import math
import time

import keras
import numpy as np

log = logging.getLogger("bneck")

#: ``best_epoch`` when no trained epoch beat the starting model: the starting weights were kept.
START = -1


class BestEpoch(keras.callbacks.Callback):
    """Log each epoch, keep a copy of the lowest-``monitor`` epoch's weights (BN statistics included), restore them.

    ``baseline``: the starting model's value of ``monitor`` (None: no starting score, the first finite
    epoch wins). With a baseline, the starting weights are copied when training begins and restored at
    the end if no epoch is strictly lower.
    """

    def __init__(self, monitor: str, epochs: int, baseline: float | None = None):
        super().__init__()
        self.monitor, self.epochs = monitor, epochs
        self.baseline = None if baseline is None or not math.isfinite(baseline) else float(baseline)
        self.best = np.inf if self.baseline is None else self.baseline
        self.best_epoch, self.best_weights, self.start_weights, self.history, self.t0 = START, None, None, {}, 0.0

    @property
    def kept_start(self) -> bool:
        """True when no trained epoch beat the starting model (its weights are the ones restored)."""
        return self.best_epoch == START

    def on_train_begin(self, logs=None):
        if self.baseline is not None:
            self.start_weights = self.model.get_weights()

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = {**(logs or {}), "seconds": time.time() - self.t0}
        for k, v in logs.items():
            self.history.setdefault(k, []).append(float(v))
        log.info("epoch %d/%d: %s", epoch + 1, self.epochs, " ".join(f"{k} {v:.4g}" for k, v in logs.items()))
        value = logs.get(self.monitor, np.nan)
        if value < self.best:  # NaN never counts as an improvement
            self.best, self.best_epoch, self.best_weights = value, epoch, self.model.get_weights()

    def on_train_end(self, logs=None):
        weights = self.best_weights if self.best_weights is not None else self.start_weights
        if weights is not None:
            self.model.set_weights(weights)

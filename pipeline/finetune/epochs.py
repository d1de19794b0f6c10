"""Which epoch a whole-network run keeps: the best on validation, its weights restored at the end."""

from __future__ import annotations

import logging
import time

import keras
import numpy as np

log = logging.getLogger("bneck")


class BestEpoch(keras.callbacks.Callback):
    """Log each epoch, keep a copy of the best epoch's weights (BN statistics included), restore them at the end."""

    def __init__(self, monitor: str, mode: str, epochs: int):
        super().__init__()
        self.monitor, self.sign, self.epochs = monitor, (1 if mode == "max" else -1), epochs
        self.best, self.best_epoch, self.best_weights, self.history, self.t0 = -np.inf, 0, None, {}, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = {**(logs or {}), "seconds": time.time() - self.t0}
        for k, v in logs.items():
            self.history.setdefault(k, []).append(float(v))
        log.info("epoch %d/%d: %s", epoch + 1, self.epochs, " ".join(f"{k} {v:.4g}" for k, v in logs.items()))
        value = self.sign * logs.get(self.monitor, np.nan)
        if value > self.best:  # NaN never counts as an improvement
            self.best, self.best_epoch, self.best_weights = value, epoch + 1, self.model.get_weights()

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)

"""Training machinery of :class:`pipeline.heads.dense.DenseHead`, kept apart from the estimator.

Task inference and the fixed task -> (activation, loss, metric) pairing, NaN-masked regression
losses, feature normalisation statistics streamed from lazy views, the optimizer and its LR
schedule, file-friendly shuffled batches (:class:`Batches`) and the per-epoch control callback
(LR, history, early stopping, best-epoch restore).
"""

import keras
import numpy as np
from keras import ops

from .tasks import TASKS



def _masked_mean(y_true, y_pred, err):
    """Per-row values whose batch mean is the mean of `err` over finite targets only."""
    y_true = ops.cast(y_true, y_pred.dtype)
    mask = ops.isfinite(y_true)
    # Replace NaN *before* subtracting: a NaN in the unselected branch of `where`
    # still poisons the gradient.
    e = ops.where(mask, err(y_pred - ops.where(mask, y_true, ops.zeros_like(y_true))), 0.0)
    # Keras averages the returned vector over rows.  Scaling each row's error sum
    # by rows / finite-count makes that average the masked mean over the whole
    # batch: every present target weighs the same, and an all-NaN batch gives 0.
    n_rows = ops.cast(ops.shape(y_true)[0], y_pred.dtype)
    n_finite = ops.maximum(ops.sum(ops.cast(mask, y_pred.dtype)), 1.0)
    return ops.sum(ops.reshape(e, (ops.shape(e)[0], -1)), axis=-1) * n_rows / n_finite


@keras.saving.register_keras_serializable(package="bneck")
def masked_mse(y_true, y_pred):
    """Mean squared error that ignores NaN (missing) targets."""
    return _masked_mean(y_true, y_pred, ops.square)


@keras.saving.register_keras_serializable(package="bneck")
def masked_mae(y_true, y_pred):
    """Mean absolute error that ignores NaN (missing) targets."""
    return _masked_mean(y_true, y_pred, ops.abs)


def output_spec(task):
    """(activation, loss, metric) of the output layer for `task`; the pairing is fixed here only."""
    if task == "multiclass":
        return "softmax", keras.losses.SparseCategoricalCrossentropy(), \
            keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    if task in ("binary", "multilabel"):  # independent sigmoid(s): never softmax-style CE
        return "sigmoid", keras.losses.BinaryCrossentropy(), keras.metrics.BinaryAccuracy(name="accuracy")
    if task == "regression":
        return "linear", masked_mse, keras.metrics.MeanMetricWrapper(masked_mae, name="mae")
    raise ValueError(f"task must be 'auto' or one of {TASKS}, got {task!r}")


def as_input(X):
    """Keep lazy views (shape + __getitem__) as they are; anything else becomes float32 ndarray."""
    if isinstance(X, np.ndarray) or not (hasattr(X, "shape") and hasattr(X, "__getitem__")):
        return np.asarray(X, dtype=np.float32)
    return X


def channel_stats(X, batch_rows=1024):
    """Per-channel (last axis) mean and variance of X, streamed in row blocks for lazy views."""
    n = len(X)
    total, total_sq, count = 0.0, 0.0, 0
    for s in range(0, n, batch_rows):
        block = X[s:s + batch_rows] if isinstance(X, np.ndarray) else X[np.arange(s, min(s + batch_rows, n))]
        flat = np.asarray(block, dtype=np.float64).reshape(-1, block.shape[-1])
        total, total_sq, count = total + flat.sum(0), total_sq + (flat ** 2).sum(0), count + len(flat)
    mean = total / max(count, 1)
    var = np.maximum(total_sq / max(count, 1) - mean ** 2, 1e-6)  # dead channels must not divide by 0
    return mean.astype(np.float32), var.astype(np.float32)


def make_optimizer(optimizer, learning_rate, momentum, nesterov, lr_decay, epochs):
    """Keras optimizer plus the per-epoch LR function (None for a constant LR) for DenseHead's params."""
    if optimizer == "adam":
        from pipeline.heads.fused_adam import FusedAdam

        opt = FusedAdam(learning_rate=learning_rate)  # Keras's Adam, one fused kernel per variable
    elif optimizer == "sgd":
        opt = keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    decay = {"auto": "linear" if optimizer == "sgd" else "none"}.get(lr_decay, lr_decay)
    if decay not in ("linear", "none"):
        raise ValueError(f"lr_decay must be 'auto', 'linear' or 'none', got {lr_decay!r}")
    lr0, span = float(learning_rate), max(int(epochs) - 1, 1)
    return opt, (lambda e: lr0 * (1.0 - 0.99 * min(e, span) / span)) if decay == "linear" else None


class Batches(keras.utils.PyDataset):
    """Batches of a lazy X by sorted row index, reshuffled every epoch without random access to the whole file."""

    def __init__(self, X, y, batch_size, shuffle, seed=0, window_batches=8):
        super().__init__(workers=1, use_multiprocessing=False)  # HDF5 reads serialise anyway
        self.X, self.y, self.bs, self.shuffle = X, y, int(batch_size), shuffle
        self.window = self.bs * window_batches
        self.rng = np.random.default_rng(seed)
        self._plan()

    def _plan(self):
        n = len(self.X)
        if not self.shuffle:
            self.batches = [np.arange(s, min(s + self.bs, n)) for s in range(0, n, self.bs)]
            return
        # Shuffle rows inside windows of a few batches (each read stays local in
        # the file), cut the result into equal batches and shuffle their order.
        # A random window offset per epoch stops the same rows always sharing a
        # batch; the batch count stays ceil(n / bs), as Keras fixes it at epoch 1.
        edges = np.unique(np.r_[0, np.arange(self.rng.integers(self.window), n, self.window), n])
        rows = np.concatenate([lo + self.rng.permutation(hi - lo) for lo, hi in zip(edges[:-1], edges[1:])])
        batches = [np.sort(rows[i:i + self.bs]) for i in range(0, n, self.bs)]
        self.batches = [batches[i] for i in self.rng.permutation(len(batches))]

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        idx = self.batches[i]
        return np.asarray(self.X[idx], dtype=np.float32), self.y[idx]

    def on_epoch_end(self):
        if self.shuffle:
            self._plan()


class EpochControl(keras.callbacks.Callback):
    """LR schedule, per-epoch history (with lr), early stopping and explicit best-weights restore."""

    def __init__(self, lr_at, monitor, patience):
        super().__init__()
        self.lr_at, self.monitor, self.patience = lr_at, monitor, patience
        self.history, self.best, self.best_epoch, self.best_weights, self.wait = {}, np.inf, 0, None, 0

    def on_epoch_begin(self, epoch, logs=None):
        if self.lr_at is not None:
            self.model.optimizer.learning_rate = self.lr_at(epoch)

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        logs["lr"] = float(self.model.optimizer.learning_rate.numpy())
        for k, v in logs.items():
            self.history.setdefault(k, []).append(float(v))
        current = logs.get(self.monitor, np.nan)
        if current < self.best:  # NaN never counts as an improvement
            self.best, self.best_epoch, self.wait = current, epoch, 0
            self.best_weights = self.model.get_weights()
        else:
            self.wait += 1
            if self.patience is not None and self.wait >= self.patience:
                self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)

"""DenseHead: task/output pairing, NaN-masked regression, early stopping, persistence, lazy views."""

import csv
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.base import clone  # noqa: E402

from pipeline.heads.dense import DenseHead  # noqa: E402
from pipeline.heads.dense_fit import Batches, masked_mse  # noqa: E402
from pipeline.heads.tasks import infer_task  # noqa: E402
from tests.feature_files import FakeView  # noqa: E402


def _blobs(rng, n=120, d=12, k=3):
    """Well-separated Gaussian classes."""
    centers = rng.normal(scale=4.0, size=(k, d))
    y = rng.integers(k, size=n)
    return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y


def _targets(task, rng, X):
    z = X[:, :4] @ rng.normal(size=(4, 3))
    return {"multiclass": z.argmax(1),
            "binary": np.where(z[:, 0] > 0, "yes", "no"),
            "multilabel": (z > 0).astype(int),
            "regression": z.astype(np.float32)}[task], {"multiclass": 3, "binary": 1,
                                                        "multilabel": 3, "regression": 3}[task]


@pytest.mark.parametrize("task, activation, loss_type", [
    ("multiclass", "softmax", keras.losses.SparseCategoricalCrossentropy),
    ("binary", "sigmoid", keras.losses.BinaryCrossentropy),
    ("multilabel", "sigmoid", keras.losses.BinaryCrossentropy),
    ("regression", "linear", None),
])
def test_output_activation_matches_loss(task, activation, loss_type, rng):
    X = rng.normal(size=(64, 8)).astype(np.float32)
    y, n_out = _targets(task, rng, X)
    assert infer_task(y) == task
    head = DenseHead(units=8, epochs=1).fit(X, y)
    assert head.task_ == task and head.n_outputs_ == n_out
    out = head.model_.get_layer("output")
    assert out.activation.__name__ == activation and out.units == n_out
    if loss_type is None:
        assert head.model_.loss is masked_mse
    else:
        assert isinstance(head.model_.loss, loss_type)
    if task != "regression":
        proba = head.predict_proba(X)
        assert proba.shape == (64, 2 if task == "binary" else 3)
        if task != "multilabel":
            np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
        assert set(np.unique(head.predict(X))) <= set(np.unique(y))
    else:
        with pytest.raises(AttributeError):
            head.predict_proba(X)


def test_masked_mse_value_and_gradient_ignore_nan():
    y_true = np.array([[1.0, np.nan, 3.0], [np.nan, np.nan, np.nan], [0.0, 2.0, np.nan]], np.float32)
    y_pred = tf.Variable(np.array([[2.0, 5.0, 3.0], [1.0, 1.0, 1.0], [1.0, 0.0, 7.0]], np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(masked_mse(tf.constant(y_true), y_pred))
    # Finite entries: errors 1, 0, 1, 2 -> squared 1, 0, 1, 4 -> mean 1.5
    np.testing.assert_allclose(float(loss), 1.5, rtol=1e-6)
    grad = tape.gradient(loss, y_pred).numpy()
    assert np.all(np.isfinite(grad))
    assert np.all(grad[~np.isfinite(y_true)] == 0)  # missing targets teach nothing


@pytest.mark.slow  # ~6 s of training
def test_regression_with_missing_targets_learns(rng):
    X = rng.normal(size=(400, 10)).astype(np.float32)
    Y = (X @ rng.normal(size=(10, 4))).astype(np.float32)
    Y[rng.random(Y.shape) < 0.3] = np.nan
    Y[:200, 0] = np.nan  # half the rows lack target 0 but still teach 1..3
    head = DenseHead(units=32, dropout=0.0, learning_rate=1e-2, epochs=40, seed=1).fit(X[:300], Y[:300])
    loss = np.array(head.history_["loss"])
    assert np.all(np.isfinite(loss)) and loss.min() < 0.1 * loss[0]
    pred = head.predict(X[300:])
    assert pred.shape == (100, 4) and np.all(np.isfinite(pred))
    baseline = -np.sqrt(np.nanmean((Y[300:] - np.nanmean(Y[:300], axis=0)) ** 2))
    assert head.score(X[300:], Y[300:]) > 0.3 * baseline  # RMSE < 30% of the mean predictor's


def test_early_stopping_restores_best_epoch(rng):
    # Random labels: the net memorises the training set, so validation loss
    # rises after a few epochs and training must stop and roll back.
    X, Xv = rng.normal(size=(64, 32)).astype(np.float32), rng.normal(size=(64, 32)).astype(np.float32)
    y, yv = rng.integers(3, size=64), rng.integers(3, size=64)
    head = DenseHead(units=128, dropout=0.0, learning_rate=2e-2, epochs=40, patience=4, batch_size=16)
    head.fit(X, y, validation_data=(Xv, yv))
    val = np.array(head.history_["val_loss"])
    assert len(val) < 40, "early stopping should have triggered"
    assert head.best_epoch_ == int(np.argmin(val)) == len(val) - 1 - 4
    final = head.model_.evaluate(Xv, head._encode(yv), batch_size=16, verbose=0)[0]
    np.testing.assert_allclose(final, val.min(), rtol=1e-4)
    assert final < val[-1]


def test_sgd_linear_lr_decay_and_history_csv(rng, tmp_path):
    X, y = _blobs(rng)
    head = DenseHead(optimizer="sgd", learning_rate=0.05, units=8, epochs=5, patience=None).fit(X, y)
    np.testing.assert_allclose(head.history_["lr"], np.linspace(0.05, 0.0005, 5), rtol=1e-5)
    adam = DenseHead(units=8, epochs=3, patience=None).fit(X, y)
    np.testing.assert_allclose(adam.history_["lr"], [1e-3] * 3, rtol=1e-5)  # "auto": no decay
    head.history_csv(tmp_path / "h.csv")
    rows = list(csv.reader(open(tmp_path / "h.csv")))
    assert rows[0][0] == "epoch" and {"loss", "accuracy", "lr"} <= set(rows[0]) and len(rows) == 6


def test_save_load_roundtrip_safe_mode(rng, tmp_path):
    X, y = _blobs(rng)
    labels = np.array(["cat", "dog", "eel"])[y]
    head = DenseHead(units=16, epochs=5, pool="gap").fit(X.reshape(-1, 2, 2, 3), labels)
    head.save(tmp_path / "h")
    # The file alone must load with safe_mode=True (no Lambda / custom objects).
    raw = keras.saving.load_model(tmp_path / "h" / "head.keras", safe_mode=True, compile=False)
    back = DenseHead.load(tmp_path / "h")
    X4 = X.reshape(-1, 2, 2, 3)
    np.testing.assert_allclose(back.predict_proba(X4), head.predict_proba(X4), atol=1e-6)
    np.testing.assert_allclose(raw.predict_on_batch(X4), head.predict_proba(X4), atol=1e-6)
    np.testing.assert_array_equal(back.predict(X4), head.predict(X4))
    assert back.classes_.tolist() == ["cat", "dog", "eel"] and back.get_params() == head.get_params()
    assert back.best_epoch_ == head.best_epoch_ and back.history_ == head.history_
    stitched = head.to_keras()
    assert stitched is not head.model_ and stitched.input_shape == (None, 2, 2, 3)


def test_lazy_view_is_streamed_in_sorted_batches(rng):
    X, y = _blobs(rng, n=260)
    X, y, Xv, yv = X[:200], y[:200], X[200:], y[200:]
    view, vview = FakeView(X), FakeView(Xv)
    head = DenseHead(units=16, epochs=6, learning_rate=1e-2, patience=None, batch_size=32)
    head.fit(view, y, validation_data=(vview, yv))
    assert view.max_rows <= 32 and view.reads >= 6 * 200 // 32  # batch reads, never the whole file
    assert vview.max_rows <= 32 and view.row_reads.min() >= 6  # every row, every epoch
    np.testing.assert_allclose(head.predict_proba(view), head.predict_proba(X), atol=1e-6)
    assert head.score(view, y) > 0.9


def test_lazy_batches_cover_every_row_once_per_epoch():
    y = np.arange(1000)
    batches = Batches(FakeView(np.zeros((1000, 1), np.float32)), y, 64, shuffle=True, seed=3)
    orders = []
    for _ in range(4):
        assert len(batches) == 16  # constant: Keras fixes steps per epoch on the first
        seen = np.concatenate([batches[i][1] for i in range(len(batches))])
        np.testing.assert_array_equal(np.sort(seen), y)
        orders.append(seen)
        batches.on_epoch_end()
    assert not np.array_equal(orders[0], orders[1])


def test_sklearn_protocol(rng):
    head = DenseHead(units=8, task="bogus")  # __init__ validates nothing
    twin = clone(head.set_params(units=4))
    assert twin.get_params()["units"] == 4 and twin is not head
    with pytest.raises(ValueError, match="task"):
        twin.fit(np.zeros((4, 2)), np.array([0, 1, 0, 1]))
    tags = DenseHead(task="multiclass").__sklearn_tags__()
    assert tags.estimator_type == "classifier"

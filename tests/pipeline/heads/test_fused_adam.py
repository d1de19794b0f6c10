"""FusedAdam: the same trajectory as keras.optimizers.Adam, and it survives Keras serialisation."""

import keras
import numpy as np
import pytest

from pipeline.heads.fused_adam import FusedAdam


def _train(opt, X, y, epochs=3):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((X.shape[1],)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    hist = model.fit(X, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0)
    return model, hist.history["loss"]


@pytest.mark.parametrize("lr", [1e-3, 3e-2])
def test_matches_keras_adam(rng, lr):
    X = rng.normal(size=(96, 8)).astype(np.float32)
    y = (X[:, :3].argmax(1)).astype(np.int64)
    ref, ref_loss = _train(keras.optimizers.Adam(learning_rate=lr), X, y)
    got, got_loss = _train(FusedAdam(learning_rate=lr), X, y)
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-5)
    for a, b in zip(got.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # float rounding of the fused kernel


def test_amsgrad_falls_back_and_config_round_trips(rng):
    X = rng.normal(size=(32, 8)).astype(np.float32)
    y = (X[:, :3].argmax(1)).astype(np.int64)
    _, loss = _train(FusedAdam(amsgrad=True), X, y, epochs=1)
    assert np.isfinite(loss).all()
    opt = keras.optimizers.deserialize(keras.optimizers.serialize(FusedAdam(learning_rate=0.5)))
    assert isinstance(opt, FusedAdam) and float(opt.learning_rate) == 0.5

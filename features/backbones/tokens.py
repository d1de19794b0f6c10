"""A token sequence -> the patch grid (B, h, w, C) or the class token (B, C); built only when a hub model is."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="bneck")
class PatchGrid(keras.layers.Layer):
    """Keep the last ``h * w`` tokens as an (h, w, C) map (``take="grid"``), or token 0 (``take="cls"``).

    Prefix tokens (class, registers) come first in every KerasHub vision transformer, so the
    patches are the last ``h * w``. The static token count is not trusted: KerasHub's SigLIP
    embedding reports one token more than it returns.
    """

    def __init__(self, grid, take: str = "grid", **kwargs):
        kwargs.setdefault("autocast", False)  # slicing and reshaping keep the backbone's dtype
        super().__init__(**kwargs)
        self.grid, self.take = (int(grid[0]), int(grid[1])), take

    def call(self, x):
        if self.take == "cls":
            return x[:, 0, :]
        h, w = self.grid
        return ops.reshape(x[:, -(h * w):, :], (-1, h, w, ops.shape(x)[-1]))

    def compute_output_shape(self, input_shape):
        if self.take == "cls":
            return (input_shape[0], input_shape[-1])
        return (input_shape[0], *self.grid, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "grid": list(self.grid), "take": self.take}

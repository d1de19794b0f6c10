"""What every registered head carries besides the scikit-learn estimator API.

A head class is the one place that knows its CLI name, the tasks it learns, the hyper-parameters a
user may set, how it is built from ``bneck train``'s options, how it is written into and read back
from a model directory, and how it becomes Keras layers for export. Callers (train, modeldir,
serve.stitch, the CLI) ask the class; none of them branch on the head's name.

Nothing here imports Keras at module level: the CLI reads these attributes before deciding whether
TensorFlow is needed at all.
"""

from __future__ import annotations

import os
from typing import ClassVar

import numpy as np

__all__ = ["Head", "JOBLIB_FILE", "frozen_dense", "dense_on_features"]

#: The file a joblib-saved head is pickled to (model-directory format v1).
JOBLIB_FILE = "head.joblib"


def frozen_dense(W, b, name, activation=None, *, x=None):
    """A built, non-trainable ``keras.layers.Dense`` computing ``x @ W + b`` (applied to ``x`` if given)."""
    from keras import layers

    dense = layers.Dense(W.shape[1], activation=activation, name=name, trainable=False)
    dense.build((None, W.shape[0]))
    dense.set_weights([np.asarray(W, "float32"), np.asarray(b, "float32")])
    return dense if x is None else dense(x)


def dense_on_features(x, W, b, activation=None):
    """``frozen_dense(W, b)`` on feature tensor ``x`` flattened in C order (as ``as_2d`` flattens rows)."""
    from keras import layers

    flat = layers.Flatten(name="flatten")(x) if len(x.shape) > 2 else x
    if W.shape[0] != flat.shape[-1]:
        raise ValueError(f"the head expects {W.shape[0]} features, the backbone gives {flat.shape[-1]}")
    return frozen_dense(W, b, "head", activation, x=flat)


class Head:
    """Mixin of the class-level behaviour of a head; put it first among the bases of a head estimator.

    Class attributes:
        name: the CLI name (``bneck train --head NAME``), the key in ``HEADS`` and ``model.json["head"]``.
        tasks: the feature-file tasks it learns ("classification", "regression").
        user_params: the keys of ``train(params=...)`` (= ``bneck train`` flag destinations) that apply to
            it; :meth:`applicable_params` may widen them for some options.
        head_loader: the ``model.json["head_loader"]`` value of its saved form ("joblib" or "keras").
        user_options: the ``train`` keyword options beyond ``params`` that only this head uses
            (``groups``, ``specialist_base``); others given to it are refused.
        uses_validation: ``fit`` takes ``validation_data=(X_val, y_val)`` (early stopping).
        saved_files: the files :meth:`save` writes; a model directory must list each with its sha256.
    """

    name: ClassVar[str]
    tasks: ClassVar[tuple[str, ...]]
    user_params: ClassVar[tuple[str, ...]] = ()
    user_options: ClassVar[tuple[str, ...]] = ()
    uses_validation: ClassVar[bool] = False
    head_loader: ClassVar[str] = "joblib"
    saved_files: ClassVar[tuple[str, ...]] = (JOBLIB_FILE,)

    # -- the command line -------------------------------------------------------------------------
    @classmethod
    def applicable_params(cls, options=None) -> tuple[str, ...]:
        """The ``params`` keys that apply with these other ``train`` options (e.g. ``specialist_base``)."""
        return cls.user_params

    @classmethod
    def needs_tensorflow(cls, options=None) -> bool:
        """Whether fitting, saving or loading this head with these options imports TensorFlow."""
        return False

    @classmethod
    def loads_tensorflow(cls, meta: dict) -> bool:
        """Whether loading a saved head of this class imports TensorFlow; ``meta`` is its model.json."""
        return cls.needs_tensorflow(meta.get("head_options") or {})

    @classmethod
    def check_params(cls, params, options=None) -> None:
        """Raise ValueError naming every key of ``params`` or ``options`` that does not apply to this head."""
        allowed = cls.applicable_params(options)
        bad = sorted(k for k in params if k not in allowed)
        if bad:
            raise ValueError(f"--head {cls.name} does not use {', '.join(bad)}; it takes "
                             f"{', '.join(allowed) if allowed else 'no hyper-parameters'}")
        bad = sorted(k for k in (options or {}) if k not in cls.user_options and k != "groups_file")
        if bad:
            raise ValueError(f"--head {cls.name} does not use {', '.join(bad)}")

    # -- building ----------------------------------------------------------------------------------
    @classmethod
    def check_task(cls, task: str) -> None:
        """Raise ValueError unless the head can learn a feature file of ``task``."""
        if task not in cls.tasks:
            wants = "class labels" if cls.tasks == ("classification",) else "keypoint targets"
            raise ValueError(f"--head {cls.name} needs {wants}; this feature file is {task}")

    @classmethod
    def build(cls, task: str, params: dict | None = None, *, seed: int = 0, jobs: int = 1, target_names=None,
              options: dict | None = None):
        """An unfitted head for a feature file of ``task`` with the user's ``params``.

        The default passes ``params`` and ``seed`` to the constructor; heads whose construction needs
        more (target names, a base estimator) override it.
        """
        cls.check_task(task)
        params = dict(params or {})
        cls.check_params(params, options)
        return cls(**{"seed": seed, **params})

    def default_grid(self, params=None) -> dict:
        """Hyper-parameter grid searched by CV when the user gave neither a value nor ``--grid`` ({} = none)."""
        return {}

    def selected_for_refit(self) -> dict:
        """Parameters that repeat what this fitted head chose on validation, for a refit on every row.

        Most heads choose nothing during ``fit`` that a refit would lose ({}); the dense head's
        early-stopped epoch count is one such choice.
        """
        return {}

    # -- the model directory ------------------------------------------------------------------------
    def save(self, dirpath) -> None:
        """Write the fitted head into the (temporary) model directory ``dirpath``: ``head.joblib``."""
        import joblib

        joblib.dump(self, os.path.join(dirpath, JOBLIB_FILE))

    @classmethod
    def load(cls, dirpath):
        """Read back what :meth:`save` wrote (a pickle: load trusted model directories only)."""
        import joblib

        # A pickle knows its own class: any estimator save_model_dir pickled reads back as itself.
        return joblib.load(os.path.join(dirpath, JOBLIB_FILE))

    def training_record(self) -> dict:
        """What ``model.json["training"]`` records about the fitted head beyond the common keys."""
        return {}

    # -- export ------------------------------------------------------------------------------------
    def keras_output(self, x, task: str):
        """Apply the fitted head to the Keras feature tensor ``x`` with built-in layers only.

        The result equals ``predict_proba`` (classification) or ``predict`` (regression) of the
        head on the same features.
        """
        raise ValueError(f"a {type(self).__name__} cannot be exported as Keras layers")

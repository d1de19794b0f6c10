"""What every registered head carries besides the scikit-learn estimator API.

A head class is the one place that knows its CLI name, the tasks it learns, the hyper-parameters a
user may set, how it is built from ``bneck train``'s options, how it is written into and read back
from a model directory, and how it becomes Keras layers for export. Callers (train, modeldir,
serve.stitch, the CLI) ask the class; none of them branch on the head's name.

Nothing here imports Keras at module level: the CLI reads these attributes before deciding whether
TensorFlow is needed at all.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import ClassVar

import numpy as np

__all__ = ["Head", "PickledHead", "UnsafeHeadFile", "JOBLIB_FILE", "SKOPS_FILE", "SAFE_TYPES", "skops_types",
           "type_name", "frozen_dense", "dense_on_features"]

#: The file a joblib-saved head is pickled to (model-directory format v1; read only with ``trust_pickle``).
JOBLIB_FILE = "head.joblib"

#: The file a scikit-learn head is written to: ``skops.io``, no pickle (model-directory format v2).
SKOPS_FILE = "head.skops"

#: What every skops head file may hold besides its head's own classes: containers, numbers, numpy arrays.
SAFE_TYPES = ("builtins.dict", "builtins.list", "builtins.tuple", "builtins.str", "builtins.int", "builtins.float",
              "builtins.bool", "builtins.NoneType", "numpy.ndarray", "numpy.dtype", "numpy.float64", "numpy.float32",
              "numpy.int64", "numpy.int32", "numpy.intc", "numpy.bool_", "numpy.bool", "numpy.str_")

#: skops.io's own guard against a crafted schema too large to walk (bytes of ``schema.json``).
MAX_SCHEMA_BYTES = 64 * 2**20


def type_name(cls) -> str:
    """``module.Class`` as skops names a type in its files (e.g. ``sklearn.pipeline.Pipeline``)."""
    return f"{cls.__module__}.{cls.__qualname__}"


class UnsafeHeadFile(ValueError):
    """A head file that would run code, or holds a type bneck does not trust, and was not loaded."""


def skops_types(path) -> set[str]:
    """Every ``module.Class`` (or function, or operator) a skops file names, read from its schema without loading it."""
    try:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("schema.json")
            if info.file_size > MAX_SCHEMA_BYTES:
                raise UnsafeHeadFile(f"{path}: schema.json of {info.file_size} bytes is too large for a head")
            schema = json.loads(z.read(info))
    except (zipfile.BadZipFile, KeyError, ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, UnsafeHeadFile):
            raise
        raise UnsafeHeadFile(f"{path}: not a skops file ({exc})") from None
    found, stack = set(), [schema]
    while stack:  # iterative: a deeply nested crafted schema cannot exhaust the Python stack here
        node = stack.pop()
        if isinstance(node, dict):
            if "__module__" in node and "__class__" in node:
                found.add(f"{node['__module__']}.{node['__class__']}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


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
        head_loader: the ``model.json["head_loader"]`` value of its saved form ("skops" or "keras").
        user_options: the ``train`` keyword options beyond ``params`` that only this head uses
            (``groups``, ``specialist_base``); others given to it are refused.
        uses_validation: ``fit`` takes ``validation_data=(X_val, y_val)`` (early stopping).
        saved_files: the files :meth:`save` writes; a model directory must list each with its sha256.
        trusted_types: the ``module.Class`` names its skops file may hold besides :data:`SAFE_TYPES`: its own
            class and the scikit-learn estimators inside it. Any other type in the file is refused on load.
        format_version: the lowest model-directory format that can read its saved form (1: keras heads;
            2: skops heads, which a bneck reading only v1 would not know).
        runs_code: loading its files can run code they contain (pickles): refused unless ``trust_pickle``.
    """

    name: ClassVar[str]
    tasks: ClassVar[tuple[str, ...]]
    user_params: ClassVar[tuple[str, ...]] = ()
    user_options: ClassVar[tuple[str, ...]] = ()
    uses_validation: ClassVar[bool] = False
    head_loader: ClassVar[str] = "skops"
    saved_files: ClassVar[tuple[str, ...]] = (SKOPS_FILE,)
    trusted_types: ClassVar[tuple[str, ...]] = ()
    format_version: ClassVar[int] = 2
    runs_code: ClassVar[bool] = False

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

    def refit_record(self) -> dict:
        """What a head refitted on every row chose again by itself, for model.json's ``training.refit``.

        Most heads choose nothing more in a refit ({}); the specialists' leave-one-out alphas are chosen
        afresh on every row, and the saved head's alphas are what a reader of model.json wants to see.
        """
        return {}

    def selected_for_refit(self) -> dict:
        """Parameters that repeat what this fitted head chose on validation, for a refit on every row.

        Most heads choose nothing during ``fit`` that a refit would lose ({}); the dense head's
        early-stopped epoch count is one such choice.
        """
        return {}

    # -- the model directory ------------------------------------------------------------------------
    @classmethod
    def files_to_read(cls, dirpath) -> tuple[str, ...]:
        """The files :meth:`load` reads from ``dirpath``; model.json must list each (default: ``saved_files``).

        Called after every listed file's sha256 was checked; a head whose files depend on what it saved
        (dense specialists) reads its own (checked) index here.
        """
        return tuple(cls.saved_files)

    @classmethod
    def all_trusted_types(cls) -> frozenset[str]:
        """:data:`SAFE_TYPES` plus the class's own ``trusted_types``: all its skops file may name."""
        return frozenset(SAFE_TYPES + cls.trusted_types + (type_name(cls),))

    def saved_loader(self) -> str:
        """The ``head_loader`` that :meth:`save` writes for this very head (some heads have two forms)."""
        return self.head_loader

    @classmethod
    def reads(cls, head_loader: str) -> bool:
        """Whether :meth:`load` reads a directory saved as ``head_loader``."""
        return head_loader == cls.head_loader

    def save(self, dirpath) -> None:
        """Write the fitted head into the (temporary) model directory ``dirpath``: ``head.skops`` (no pickle).

        The types in the written file are checked like :meth:`load` checks them, so a head holding an
        untrusted estimator (a ``base`` of the caller's own) fails here, not on the machine it is sent to.
        """
        import skops.io as sio

        path = os.path.join(dirpath, SKOPS_FILE)
        sio.dump(self, path)
        self.check_types(path)

    @classmethod
    def check_types(cls, path) -> list[str]:
        """The types in the skops file at ``path``; raises :class:`UnsafeHeadFile` naming any not trusted."""
        found = skops_types(path)
        bad = sorted(found - cls.all_trusted_types())
        if bad:
            raise UnsafeHeadFile(f"{path}: refusing to load type(s) {', '.join(bad)}: a {cls.__name__} file holds "
                                 f"only {', '.join(sorted(cls.all_trusted_types() - set(SAFE_TYPES)))} and plain "
                                 "containers, numbers and arrays")
        return sorted(found)

    @classmethod
    def load(cls, dirpath):
        """Read back what :meth:`save` wrote: every type in the file is checked against the trusted list first."""
        import skops.io as sio

        path = os.path.join(dirpath, SKOPS_FILE)
        head = sio.load(path, trusted=cls.check_types(path))
        if not isinstance(head, cls):
            raise UnsafeHeadFile(f"{path}: holds a {type(head).__name__}, not a {cls.__name__}")
        return head

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


class PickledHead:
    """The reader and writer of ``head.joblib``: a pickle, as model directories of format v1 stored heads.

    Unpickling runs whatever code the file names, and the sha256 in ``model.json`` sit in the same
    directory, so they prove integrity, not trust: :func:`pipeline.modeldir.load_model_dir` refuses
    a head of this loader unless told ``trust_pickle``. ``bneck upgrade-model`` rewrites one safely.
    Estimators that are no registered head (the caller's own, in Python) are still written this way.
    """

    head_loader: ClassVar[str] = "joblib"
    saved_files: ClassVar[tuple[str, ...]] = (JOBLIB_FILE,)
    format_version: ClassVar[int] = 1
    runs_code: ClassVar[bool] = True

    @classmethod
    def files_to_read(cls, dirpath) -> tuple[str, ...]:
        return cls.saved_files

    @staticmethod
    def save(head, dirpath) -> None:
        """Pickle ``head`` (any estimator) to ``head.joblib``."""
        import joblib

        joblib.dump(head, os.path.join(dirpath, JOBLIB_FILE))

    @classmethod
    def load(cls, dirpath):
        """Unpickle ``head.joblib``: this runs its code, so only for a directory the caller said it trusts."""
        import joblib

        return joblib.load(os.path.join(dirpath, JOBLIB_FILE))

"""Stage-two heads: scikit-learn estimators trained on cached bottleneck features.

``HEADS`` is the registry: CLI name -> head class. Each class carries its own behaviour (see
:class:`pipeline.heads.base.Head`): the tasks it learns, the hyper-parameters that apply to it
(``HEADS[name].applicable_params(options)``), whether it needs TensorFlow, how it is built from
``bneck train``'s options, saved into and loaded from a model directory, and exported as Keras
layers. Adding a head is one new module plus one entry in :data:`HEAD_CLASSES`.

Importing this package is cheap: the classes (and scikit-learn, ~1 s to import here) load on first
use of ``HEADS`` or a class name, so ``bneck --help`` and ``bneck extract`` never pay for them. No
module of this package imports Keras at import time either.
"""

from importlib import import_module

#: The registry's entries: CLI name -> "module:Class" of this package (loaded on first use).
HEAD_CLASSES = {"dense": "dense:DenseHead", "svm": "linear:SVMHead", "logreg": "linear:LogRegHead",
                "specialists": "specialists:SpecialistsHead"}

#: Valid names for :func:`make_head` and ``bneck train --head``.
HEAD_NAMES = tuple(HEAD_CLASSES)

#: What ``from pipeline.heads import NAME`` finds, and in which module (loaded on first use).
_LAZY = {"Head": "base", "PickledHead": "base", "UnsafeHeadFile": "base", "DenseHead": "dense",
         "load_keras_file": "dense", "SVMHead": "linear", "LogRegHead": "linear",
         "SpecialistsHead": "specialists", "default_groups": "specialists", "DEFAULT_ALPHAS": "specialists",
         "check_grid": "linear", "grid_search": "linear", "parse_grid": "linear", "DEFAULT_C": "linear"}

__all__ = ["HEADS", "HEAD_CLASSES", "HEAD_NAMES", "make_head", "head_class", "loader_for", *_LAZY]


def _load(entry: str):
    module, _, name = entry.partition(":")
    return getattr(import_module(f"{__name__}.{module}"), name)


def __getattr__(name):
    if name == "HEADS":
        heads = {key: _load(entry) for key, entry in HEAD_CLASSES.items()}
        globals()["HEADS"] = heads
        return heads
    if name in _LAZY:
        value = getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _registry() -> dict:
    return globals()["HEADS"] if "HEADS" in globals() else __getattr__("HEADS")


def head_class(name):
    """The registered head class called ``name``, or ValueError listing the valid names."""
    heads = _registry()
    if name not in heads:
        raise ValueError(f"unknown head {name!r}; valid names: {', '.join(heads)}")
    return heads[name]


def make_head(name, **params):
    """Build the head called `name` (one of :data:`HEAD_NAMES`) with the given constructor parameters."""
    return head_class(name)(**params)


def loader_for(head_name, head_loader):
    """The class whose ``load(dirpath)`` reads a model directory saved as ``head_loader``, else None.

    The head's own class when ``head_name`` is registered with that loader. Otherwise
    :class:`PickledHead` for ``"joblib"`` (a pickle of any estimator: format v1 wrote every scikit-learn
    head so, and ``save_model_dir`` still writes one for estimators of the caller's own; reading it
    needs ``trust_pickle``), or the registered class saving that way (``"keras"``: only ever the dense
    head). A ``"skops"`` file is read only by the registered class it names: its trusted types are that
    class's own.
    """
    from .base import Head, PickledHead

    heads = _registry()
    cls = heads.get(head_name)
    if cls is not None and cls.head_loader == head_loader:
        return cls
    if head_loader == PickledHead.head_loader:
        return PickledHead
    if head_loader == Head.head_loader:
        return None
    return next((c for c in heads.values() if c.head_loader == head_loader), None)

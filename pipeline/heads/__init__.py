"""Stage-two heads: scikit-learn estimators trained on cached bottleneck features.

``HEADS`` maps CLI names to classes and :func:`make_head` builds one by name.
:class:`DenseHead` (and ``HEADS``) are imported lazily: importing TensorFlow
costs seconds, and joblib workers that only fit sklearn heads (for example
``SpecialistsHead(n_jobs=2)``) import this package too and should not pay it.
"""

from .linear import LogRegHead, SVMHead, grid_search, parse_grid
from .specialists import SpecialistsHead, default_groups

__all__ = ["HEADS", "HEAD_NAMES", "make_head", "DenseHead", "SVMHead", "LogRegHead",
           "SpecialistsHead", "default_groups", "grid_search", "parse_grid"]

#: Valid names for :func:`make_head`, known without importing TensorFlow.
HEAD_NAMES = ("dense", "svm", "logreg", "specialists")


def __getattr__(name):
    """Import the Keras-backed pieces (``DenseHead``, ``HEADS``) on first access."""
    if name in ("DenseHead", "HEADS"):
        from .dense import DenseHead

        # Cache in the module so later look-ups (and mutations of HEADS) stick.
        globals()["DenseHead"] = DenseHead
        globals()["HEADS"] = {"dense": DenseHead, "svm": SVMHead, "logreg": LogRegHead,
                              "specialists": SpecialistsHead}
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_head(name, **params):
    """Build the head called `name` (one of :data:`HEAD_NAMES`) with the given parameters."""
    if name not in HEAD_NAMES:
        raise ValueError(f"unknown head {name!r}; valid names: {', '.join(HEAD_NAMES)}")
    if name == "dense":
        from .dense import DenseHead

        return DenseHead(**params)
    return {"svm": SVMHead, "logreg": LogRegHead, "specialists": SpecialistsHead}[name](**params)

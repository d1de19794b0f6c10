"""The one error every dataset reader raises for a malformed source: :class:`SourceError`.

Its own module so that the filesystem layer (:mod:`features.reader.fs`) and the shared parsers
(:mod:`features.reader.base`) can both raise it without importing each other.
"""

from __future__ import annotations


class SourceError(ValueError):
    """A dataset source is malformed; the message names the file (and line or row where it applies)."""

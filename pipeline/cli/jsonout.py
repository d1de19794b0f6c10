"""The one JSON writer of ``--json``: strict JSON that any parser (jq, JavaScript, Go) reads.

Python's ``json.dumps`` writes ``NaN`` and ``Infinity`` for non-finite floats, which is not JSON;
a metric that cannot be computed (no rows, a target without predictions) is written as ``null``.
A file name with bytes that are not UTF-8 is written with ``\\xNN`` escapes
(:func:`features.names.printable`), not as lone surrogates that strict parsers reject.
"""

from __future__ import annotations

import json
import math

from features.names import printable


def _strict(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, str):
        return printable(obj)
    if isinstance(obj, dict):
        return {printable(k) if isinstance(k, str) else k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def json_text(obj, *, indent=None) -> str:
    """``obj`` as strict JSON text: non-finite floats become null, file names valid UTF-8."""
    return json.dumps(_strict(obj), indent=indent, allow_nan=False)

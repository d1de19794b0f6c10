"""Alternative execution engines for stage one (``bneck extract --engine ...``).

The local runner (:mod:`features.runner`) is the engine; these modules only distribute its
shards over more machines and merge the results, so every engine writes the same bytes.

* :mod:`features.engines.ray` -- shards on a Ray cluster (the optional ``[ray]`` extra).
"""

ENGINES = ("local", "ray")

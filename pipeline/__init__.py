"""bneck stage two: heads on cached bottleneck features, plus the command-line interface."""

from features import __version__  # noqa: F401  (one version for the whole distribution)

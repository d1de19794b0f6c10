"""bneck stage one: a frozen backbone over a dataset, cached as HDF5 bottleneck features."""

__version__ = "0.1.0"

#: Version of the HDF5 feature-file layout written by :mod:`features.writer.partial`.
FORMAT_VERSION = 1

"""Read-only access to bneck HDF5 feature files: validation, metadata and lazy row views.

:class:`FeatureFile` opens a file; :func:`check_compatible` compares two files' provenance attrs. The
lazy row views it hands out, and :class:`FeatureFileError`, are defined in :mod:`pipeline.data.views`.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from features import FORMAT_VERSION
from features.attrs import check_root_attrs, check_shapes, plain, read_checked_attrs
from pipeline.data.views import FeatureFileError, FeatureView

__all__ = ["FeatureFile", "check_compatible"]

# Attributes compared by check_compatible. Only *stored* attrs are compared: on-load pooling is
# re-applied by the caller, so a file stored with pooling "none" stays compatible with a model
# that pools it on load.
COMPAT_KEYS = ("backbone", "layer", "input_size", "preprocessing", "pooling", "weights_sha256")


class FeatureFile:
    """A bneck HDF5 feature file, opened read-only and validated.

    Use it as a context manager (``with FeatureFile(path) as f: ...``) or call :meth:`close`.
    Opening refuses, with a :class:`FeatureFileError` naming the file, anything that is not an
    HDF5 file written by bneck, a file with attrs of the wrong type or size, with datasets whose
    shapes differ from what its attrs say, a merged file reading shards from outside its folder,
    one with a newer ``format_version`` than this version of bneck supports, or one not marked
    ``complete`` (an interrupted or partial extraction).

    Small per-row arrays (``valid``, ``labels``, ``targets``, ``paths``...) are read into memory
    on access; the feature maps themselves are only read through :meth:`view`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FeatureFileError(f"{self.path}: no such feature file")
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise FeatureFileError(f"{self.path}: not an HDF5 feature file ({exc})") from None
        try:
            self._validate()
        except BaseException:
            self._h5.close()
            raise

    def _validate(self) -> None:
        where = self.path
        # Sizes first (a huge attr is never read), then types: this file may come from anyone.
        attrs = self._attrs = read_checked_attrs(self._h5, where, error=FeatureFileError)
        if attrs.get("producer") != "bneck" or "format_version" not in attrs:
            raise FeatureFileError(
                f"{where}: not a bneck feature file (no producer='bneck'/format_version attrs)")
        check_root_attrs(attrs, where, error=FeatureFileError)
        version = int(attrs["format_version"])
        if version > FORMAT_VERSION:
            raise FeatureFileError(
                f"{where}: format_version {version} is newer than this bneck supports "
                f"({FORMAT_VERSION}); upgrade bneck to read it")
        if not bool(attrs.get("complete", False)):
            raise FeatureFileError(
                f"{where}: incomplete feature file (extraction was interrupted or this is a "
                "partial shard); re-run or resume the extraction / merge the shards")
        # A merged (virtual) file shows fill values where a shard file is missing: refuse it instead.
        from features.merge import check_sources

        check_sources(self._h5, error=FeatureFileError)
        if "features" not in self._h5:
            raise FeatureFileError(f"{where}: missing the 'features' dataset")
        n = self._h5["features"].shape[0]
        task = plain(attrs.get("task", "classification"))
        need = ["valid"] + {"classification": ["labels"], "regression": ["targets"]}.get(task, [])
        for name in ("features_flipped", "targets_flipped", "valid", "labels", "targets",
                     "paths", "reason", "image_size", "groups"):
            if name in self._h5 and self._h5[name].shape[0] != n:
                raise FeatureFileError(
                    f"{where}: dataset {name!r} has {self._h5[name].shape[0]} rows, "
                    f"'features' has {n}")
        for name in need:
            if name not in self._h5:
                raise FeatureFileError(f"{where}: missing the {name!r} dataset")
        check_shapes(self._h5, attrs, where, error=FeatureFileError)

    # -- context manager -------------------------------------------------------------------
    def close(self) -> None:
        """Close the underlying HDF5 handle (views made from it reopen the file lazily)."""
        self._h5.close()

    def __enter__(self) -> "FeatureFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"FeatureFile({str(self.path)!r}, task={self.task!r}, n_rows={self.n_rows}, "
                f"shape={self.feature_shape}, flipped={self.has_flipped})")

    # -- metadata --------------------------------------------------------------------------
    @property
    def attrs(self) -> dict:
        """Root attributes as a plain dict (numpy scalars/arrays converted to Python types)."""
        return dict(self._attrs)

    @property
    def task(self) -> str:
        """``"classification"``, ``"regression"`` or ``"none"`` (unlabelled rows: predict on them, never train)."""
        return self._attrs.get("task", "classification")

    @property
    def class_names(self) -> list[str] | None:
        """Class names (index = label value), or None for regression files."""
        if "labels" not in self._h5:
            return None
        return [str(c) for c in plain(self._h5["labels"].attrs.get("class_names", []))]

    @property
    def target_names(self) -> list[str] | None:
        """Regression target names (one per column of ``targets``), or None."""
        if "targets" not in self._h5:
            return None
        return [str(c) for c in plain(self._h5["targets"].attrs.get("target_names", []))]

    @property
    def n_rows(self) -> int:
        """Number of rows (images), valid or not."""
        return int(self._h5["features"].shape[0])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Stored per-row feature shape: (h, w, c) for maps, (c,) when pooled at extraction."""
        return tuple(int(s) for s in self._h5["features"].shape[1:])

    @property
    def has_flipped(self) -> bool:
        """Whether horizontally mirrored features (``features_flipped``) are stored."""
        return "features_flipped" in self._h5

    @property
    def valid(self) -> np.ndarray:
        """Boolean array, False for rows whose image could not be read (all-zero features)."""
        return self._h5["valid"][()].astype(bool)

    @property
    def labels(self) -> np.ndarray | None:
        """Integer class labels (N,), or None for regression files."""
        return self._h5["labels"][()].astype(np.int64) if "labels" in self._h5 else None

    @property
    def targets(self) -> np.ndarray | None:
        """Regression targets (N, K) float32 with NaN for missing values, or None."""
        return self._h5["targets"][()].astype(np.float32) if "targets" in self._h5 else None

    @property
    def targets_flipped(self) -> np.ndarray | None:
        """Targets matching ``features_flipped`` (mirrored x, left/right swapped), or None."""
        if "targets_flipped" not in self._h5:
            return None
        return self._h5["targets_flipped"][()].astype(np.float32)

    @property
    def paths(self) -> list[str]:
        """Source image paths (or ids), one per row."""
        paths = self._strings("paths")
        return [""] * self.n_rows if paths is None else paths

    @property
    def groups(self) -> list[str] | None:
        """Per row, its group of near-duplicates (the video a frame came from), or None without groups."""
        return self._strings("groups")

    @property
    def group_by(self) -> str | None:
        """What the groups are (``"video"``, a CSV column's name), or None without groups."""
        return str(plain(self._h5["groups"].attrs["group_by"])) if "groups" in self._h5 else None

    @property
    def reasons(self) -> list[str]:
        """Why each invalid row failed ('' for valid rows)."""
        reasons = self._strings("reason")
        return [""] * self.n_rows if reasons is None else reasons

    def _strings(self, name: str) -> list[str] | None:
        """A string dataset as a list of str, or None where the file has no such dataset."""
        return [str(s) for s in self._h5[name].asstr()[()]] if name in self._h5 else None

    @property
    def image_size(self) -> np.ndarray:
        """Original (height, width) per row, int32 (N, 2); zeros for invalid rows."""
        if "image_size" not in self._h5:
            return np.zeros((self.n_rows, 2), np.int32)
        return self._h5["image_size"][()].astype(np.int32)

    # -- features --------------------------------------------------------------------------
    def view(self, rows=None, *, flipped: bool = False, pooling: str = "none") -> FeatureView:
        """Lazy float32 view of ``rows`` (default: all) of the original or mirrored features.

        ``pooling`` ("none", "avg", "max") is applied to each row as it is read; see
        :class:`FeatureView`.
        """
        name = "features_flipped" if flipped else "features"
        if name not in self._h5:
            raise FeatureFileError(f"{self.path}: no flipped features stored (extracted with "
                                   "flip disabled)")
        return FeatureView(self.path, name, rows=rows, pooling=pooling, h5file=self._h5)


def check_compatible(expected: dict, attrs: dict, *, path, keys=COMPAT_KEYS) -> None:
    """Raise FeatureFileError if ``attrs`` differs from ``expected`` on any of ``keys``.

    ``expected`` is typically the feature provenance saved with a model, ``attrs`` the root
    attributes of a feature file about to be used with it. Only keys present in ``expected``
    are checked (a key it lacks cannot be verified); a key missing from ``attrs`` counts as a
    difference. Values are compared after conversion to plain Python types, so ``[224, 224]``
    equals ``(224, 224)`` and a numpy array of the same values.

    Pooling: the *stored* ``pooling`` attrs are compared, not the on-load pooling. A model
    trained on a file stored with pooling "none" and pooled on load keeps that on-load pooling
    in its own metadata and re-applies it, so any file stored with "none" is accepted.
    """
    for key in keys:
        if key not in expected:
            continue
        want = plain(expected[key])
        if key not in attrs:
            raise FeatureFileError(
                f"{path}: incompatible features: attr {key!r} is missing, expected {want!r}")
        found = plain(attrs[key])
        if found != want:
            raise FeatureFileError(
                f"{path}: incompatible features: {key} is {found!r}, expected {want!r}")

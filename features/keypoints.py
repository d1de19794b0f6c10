"""Keypoint column conventions: left/right pairing by name, mirroring, specialist groups.

Mirror convention (pixel centres).  A keypoint coordinate ``x`` is measured in pixels
with the *centre* of pixel column ``c`` at ``x = c`` (so a 96-pixel-wide image spans
``-0.5 .. 95.5``).  Flipping an image left-right moves pixel column ``c`` to
``W - 1 - c``, hence a keypoint at ``x`` moves to ``(W - 1) - x``; ``y`` is unchanged.
After the flip, the point the subject calls "left" sits where "right" used to be, so
every ``left``/``right`` column pair is swapped as well.  The Kaggle Facial Keypoints
data names points from the subject's view: ``left_eye_center`` is on the image's
right-hand side.  Stage two reuses :func:`flip_targets` for flip augmentation, so
stage one and stage two always agree on this convention.
"""

from __future__ import annotations

import json
import re

import numpy as np

_CORE = ("left_eye_center", "right_eye_center", "left_eye_inner_corner", "left_eye_outer_corner",
         "right_eye_inner_corner", "right_eye_outer_corner", "left_eyebrow_inner_end",
         "left_eyebrow_outer_end", "right_eyebrow_inner_end", "right_eyebrow_outer_end", "nose_tip",
         "mouth_left_corner", "mouth_right_corner", "mouth_center_top_lip", "mouth_center_bottom_lip")

#: The 30 Kaggle Facial Keypoints target columns, in the order of Kaggle's training.csv.
KAGGLE_KEYPOINTS = tuple(f"{p}_{axis}" for p in _CORE for axis in ("x", "y"))


def _xy(*points):
    """Expand keypoint names into their ``_x``/``_y`` column names."""
    return tuple(f"{p}_{axis}" for p in points for axis in ("x", "y"))


#: The six specialist groups of Daniel Nouri's facial keypoints tutorial (2014).
SPECIALIST_GROUPS = {
    "eye_centers": _xy("left_eye_center", "right_eye_center"),
    "nose_tip": _xy("nose_tip"),
    "mouth_corners_top_lip": _xy("mouth_left_corner", "mouth_right_corner", "mouth_center_top_lip"),
    "bottom_lip": _xy("mouth_center_bottom_lip"),
    "eye_corners": _xy("left_eye_inner_corner", "right_eye_inner_corner",
                       "left_eye_outer_corner", "right_eye_outer_corner"),
    "eyebrows": _xy("left_eyebrow_inner_end", "right_eyebrow_inner_end",
                    "left_eyebrow_outer_end", "right_eyebrow_outer_end"),
}

_SIDE = {"left": "right", "right": "left"}


def _tokens(name: str) -> list[str]:
    """Lower-case word tokens of a column name (split on ``_``, ``-``, ``.``, spaces)."""
    return [t for t in re.split(r"[^0-9a-z]+", name.lower()) if t]


def flip_pairs(names) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, of names that differ only by a ``left``/``right`` token."""
    keys = {}
    for i, name in enumerate(names):
        keys.setdefault(tuple(_tokens(name)), i)
    pairs = []
    for i, name in enumerate(names):
        toks = _tokens(name)
        if "left" not in toks:
            continue
        mirrored = tuple(_SIDE.get(t, t) for t in toks)
        j = keys.get(mirrored)
        if j is not None and j != i:
            pairs.append((min(i, j), max(i, j)))
    return sorted(set(pairs))


def x_columns(names) -> np.ndarray:
    """Boolean mask of the columns whose name ends in ``_x`` (case-insensitive)."""
    return np.array([str(n).lower().endswith("_x") for n in names], dtype=bool)


def y_columns(names) -> np.ndarray:
    """Boolean mask of the columns whose name ends in ``_y`` (case-insensitive)."""
    return np.array([str(n).lower().endswith("_y") for n in names], dtype=bool)


def rescale_targets(targets, names, from_hw, to_hw) -> np.ndarray:
    """Move keypoint targets from images of size ``from_hw`` to the same images resized to ``to_hw``.

    With the pixel-centre convention the image spans ``-0.5 .. W - 0.5``, so a resize maps
    ``x -> (x + 0.5) * W_to / W_from - 0.5`` (and ``y`` with the heights), as a half-pixel-centre
    resize maps pixels.  Columns that are neither ``*_x`` nor ``*_y`` are left as they are; NaN
    stays NaN.  ``from_hw`` and ``to_hw`` are ``(height, width)``, one pair or one per row ``(N, 2)``.
    """
    t = np.array(targets, dtype=np.float64)
    single = t.ndim == 1
    t = np.atleast_2d(t)
    src = np.broadcast_to(np.asarray(from_hw, np.float64).reshape(-1, 2), (len(t), 2))
    dst = np.broadcast_to(np.asarray(to_hw, np.float64).reshape(-1, 2), (len(t), 2))
    for mask, axis in ((x_columns(names), 1), (y_columns(names), 0)):
        scale = (dst[:, axis] / src[:, axis])[:, None]
        t[:, mask] = (t[:, mask] + 0.5) * scale - 0.5
    return t[0] if single else t


def flip_targets(targets, names, widths) -> np.ndarray:
    """Return the targets of the horizontally mirrored images.

    Every ``*_x`` column becomes ``(width - 1) - x`` (pixel-centre convention, see the
    module docstring), then each ``left``/``right`` column pair is swapped.  NaN stays
    NaN, and flipping twice gives back the input.

    Args:
        targets: Array ``(N, K)`` (or ``(K,)`` for a single row) of keypoint coordinates.
        names: The ``K`` column names, used to find ``x`` columns and left/right pairs.
        widths: Image width in pixels, a scalar or one per row ``(N,)``.

    Returns:
        A new float array with the same shape as ``targets``.
    """
    t = np.array(targets, dtype=np.float64 if np.asarray(targets).dtype == np.float64 else np.float32)
    single = t.ndim == 1
    t = np.atleast_2d(t)
    if t.shape[1] != len(names):
        raise ValueError(f"targets have {t.shape[1]} columns but {len(names)} names were given")
    w = np.asarray(widths, dtype=t.dtype)
    if w.ndim == 1:
        if len(w) != t.shape[0]:
            raise ValueError(f"widths has {len(w)} entries for {t.shape[0]} rows")
        w = w[:, None]
    xs = x_columns(names)
    t[:, xs] = (w - 1) - t[:, xs]
    for i, j in flip_pairs(names):
        t[:, [i, j]] = t[:, [j, i]]
    return t[0] if single else t


def load_groups(path_or_none, names) -> dict[str, list[int]]:
    """Load specialist groups (JSON ``{"group": ["col", ...]}`` or the Nouri defaults) as column indices.

    Args:
        path_or_none: Path of a JSON file overriding the groups, or ``None`` for
            :data:`SPECIALIST_GROUPS`.
        names: The target column names the indices refer to.

    Returns:
        ``{group name: [column index, ...]}`` in the order the groups were given.

    Raises:
        ValueError: If the JSON is malformed, a group is empty, or a column is not
            among ``names`` (the message names the file and the column).
    """
    names = list(names)
    where = "default specialist groups" if path_or_none is None else str(path_or_none)
    if path_or_none is None:
        groups = SPECIALIST_GROUPS
    else:
        try:
            with open(path_or_none, encoding="utf-8") as f:
                groups = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(groups, dict) or not groups:
            raise ValueError(f'{where}: expected a JSON object {{"group": ["column", ...]}}')
    index = {n: i for i, n in enumerate(names)}
    out = {}
    for group, cols in groups.items():
        if isinstance(cols, str) or not isinstance(cols, (list, tuple)) or not cols:
            raise ValueError(f"{where}: group {group!r} must be a non-empty list of column names")
        for c in cols:
            if c not in index:
                hint = " (they need the Kaggle keypoint columns; pass a JSON file)" if path_or_none is None else ""
                raise ValueError(f"{where}: group {group!r} names unknown column {c!r}{hint}")
        if len(set(cols)) != len(cols):
            raise ValueError(f"{where}: group {group!r} lists a column twice")
        out[str(group)] = [index[c] for c in cols]
    return out

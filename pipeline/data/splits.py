"""Validation splits that keep groups of near-duplicates whole: the frames of one video, one subject's photos.

A feature file may carry a ``groups`` dataset (``bneck frames`` records each frame's video, a CSV its
``--group-column``). Frames of one video are near-identical, so a frame held out for validation whose
twin is in training scores what the head memorised, not what it learned: validation accuracy comes out
optimistic, and a C or epoch chosen on it leans towards overfitting. Here every split keeps each group on
one side: the hold-out split of ``bneck train --val-split`` (:func:`grouped_train_val_split`) and the CV
folds of its C grid search and ``--grid`` (:func:`grouped_cv_folds`). Mirrors stay with their original as
before, because a mirrored training row carries its image's group.

Grouping cannot always work. A class all of whose rows are one group (one video per class: ``bneck frames``
over flat ``VIDEO_DIR/<video>.mp4``) can only be validated by putting the whole class out of training, so
such a class stays in training and is reported as not validated. When no class at all can be validated the
split falls back to the row split of before, with a warning that its score is optimistic: training still
gives a usable head (it is refitted on every row), only the number is not to be trusted, and refusing would
break that layout's one-command workflow. Either way model.json records what was done.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

__all__ = ["group_codes", "grouped_cv_folds", "grouped_train_val_split", "train_val_split"]

log = logging.getLogger("bneck")

#: The fallback's warning: what is wrong, what the number means, how to get an honest one.
OPTIMISTIC = ("the validation score is optimistic: its rows have near-duplicates (same {by}) in training. "
              "Give each class several {by}s (bneck frames VIDEO_DIR/<class>/<video>.mp4), or validate on "
              "other {by}s with --val FILE")


def train_val_split(n_or_labels, val_split: float, *, stratify: bool, seed=0):
    """Deterministically split source rows into sorted (train_rows, val_rows) position arrays.

    ``n_or_labels`` is a row count or an array of class labels (one per source row); returned
    positions index it. ``val_split`` is the validation fraction in [0, 1). With ``stratify``
    (labels required) every class keeps its proportion on both sides (largest-remainder
    allocation, so the total matches ``val_split`` even with many small classes); classes with
    a single member always go to training. The split is by source row: flipped copies are
    appended later, so an image and its mirror can never land on different sides.
    """
    if isinstance(n_or_labels, (int, np.integer)):
        n, labels = int(n_or_labels), None
    else:
        labels = np.asarray(n_or_labels)
        n = len(labels)
    if not 0 <= val_split < 1:
        raise ValueError(f"val_split must be in [0, 1), got {val_split!r}")
    if stratify and labels is None:
        raise ValueError("stratify=True needs labels, not a row count")
    empty = np.zeros(0, np.int64)
    if n < 2 or val_split == 0:
        return np.arange(n, dtype=np.int64), empty
    rng = np.random.default_rng(seed)
    n_val = min(max(int(round(val_split * n)), 1), n - 1)
    if not stratify:
        val = rng.permutation(n)[:n_val]
    else:
        classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        cap = np.where(counts >= 2, counts - 1, 0)  # keep >= 1 member of each class in training
        n_val = min(n_val, int(cap.sum()))
        ideal = val_split * counts
        alloc = np.minimum(np.floor(ideal), cap).astype(np.int64)
        # Hand out the rows lost to flooring by largest remainder; random tie-break by seed.
        order = np.lexsort((rng.random(len(classes)), -(ideal - alloc)))
        remaining = n_val - int(alloc.sum())
        while remaining > 0:
            for c in order:
                if remaining > 0 and alloc[c] < cap[c]:
                    alloc[c] += 1
                    remaining -= 1
        val = np.concatenate([rng.permutation(np.flatnonzero(inverse == c))[:alloc[c]]
                              for c in range(len(classes))])
    val = np.sort(val.astype(np.int64))
    return np.setdiff1d(np.arange(n, dtype=np.int64), val), val


def group_codes(groups) -> np.ndarray:
    """Group names (one per row) as int64 codes 0..G-1, in order of first appearance."""
    _, first, inverse = np.unique(np.asarray(groups, dtype=object).astype(str), return_index=True,
                                  return_inverse=True)
    rank = np.argsort(np.argsort(first))  # codes follow the rows, not the sorting of the names
    return rank[inverse.reshape(-1)].astype(np.int64)


def _majority(labels: np.ndarray, codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per group its most common label (ties: the smallest), and the (groups x classes) row counts."""
    counts = np.zeros((n_groups, int(labels.max()) + 1 if len(labels) else 0), np.int64)
    np.add.at(counts, (codes, labels), 1)
    return counts.argmax(axis=1), counts


def grouped_train_val_split(labels, val_split: float, *, groups, stratify: bool, seed=0, by: str = "group"):
    """Split source rows into sorted (train_rows, val_rows, record) with every group wholly on one side.

    ``labels`` is an array of class indices (``stratify``) or a row count; ``groups`` one name or code per
    row. About ``val_split`` of the *groups* go to validation (frames per video vary, so the row fraction
    is near it, not equal; the record says which), stratified by each group's majority class with the same
    largest-remainder rule as :func:`train_val_split` applied to groups, so every
    class keeps at least one group in training. ``record`` is what model.json keeps: ``grouped`` (false
    when it fell back to the row split), ``by``, ``n_groups``, ``n_val_groups``, ``classes_not_validated``
    (names are the caller's: indices here), ``val_fraction`` and ``warning``.
    """
    codes = group_codes(groups)
    n = len(codes)
    y = np.asarray(labels) if stratify else np.zeros(n, np.int64)
    if len(y) != n:
        raise ValueError(f"{len(y)} labels but {n} groups")
    n_groups = int(codes.max()) + 1 if n else 0
    record = {"grouped": True, "by": by, "n_groups": n_groups, "n_val_groups": 0, "classes_not_validated": [],
              "val_fraction": 0.0, "warning": None}
    if n == 0 or val_split == 0:
        return np.arange(n, dtype=np.int64), np.zeros(0, np.int64), record
    major, counts = _majority(y.astype(np.int64), codes, n_groups)
    groups_per_class = (counts > 0).sum(axis=0)
    present = np.flatnonzero(counts.sum(axis=0))
    single = [int(c) for c in present if groups_per_class[c] < 2]
    if len(single) == len(present):  # no class has two groups: nothing can be held out honestly
        tr, va = train_val_split(y if stratify else n, val_split, stratify=stratify, seed=seed)
        warning = (f"every class is a single {by} ({n_groups} {by}s), so a split by {by} would hold whole classes "
                   f"out of training; splitting by row instead, and " + OPTIMISTIC.format(by=by))
        log.warning("%s", warning)
        record.update(grouped=False, classes_not_validated=[], val_fraction=round(len(va) / n, 4), warning=warning)
        return tr, va, record
    gtr, gva = train_val_split(major if stratify else n_groups, val_split, stratify=stratify, seed=seed)
    in_val = np.zeros(n_groups, bool)
    in_val[gva] = True
    # A group's minority rows can leave a class with no training row: give that class its smallest group back.
    for c in present:
        if counts[~in_val, c].sum() == 0:
            held = np.flatnonzero(in_val & (counts[:, c] > 0))
            in_val[held[np.argmin(counts[held].sum(axis=1))]] = False
    val = np.flatnonzero(in_val[codes]).astype(np.int64)
    train = np.flatnonzero(~in_val[codes]).astype(np.int64)
    not_validated = [int(c) for c in present if counts[in_val, c].sum() == 0] if stratify else []
    record.update(n_val_groups=int(in_val.sum()), classes_not_validated=not_validated,
                  val_fraction=round(len(val) / n, 4))
    return train, val, record


def grouped_cv_folds(y, groups, cv: int, *, classifier: bool, seed=0, by: str = "group"):
    """CV folds for GridSearchCV that keep each group in one fold: ``(folds or None, record)``.

    ``y`` and ``groups`` are per training sample (an original and its mirror share their group). Rows of a
    class with a single group are never scored (the class would be absent from training in that fold);
    the others are split by ``StratifiedGroupKFold`` (classification) or ``GroupKFold``, with fewer folds
    when there are fewer groups than ``cv``. ``folds`` is a list of (train, test) index arrays, or None when
    grouped folds are impossible (no class with two groups, or fewer than two groups): the caller then
    falls back to folds by image, and the record's ``warning`` says the CV score is optimistic.
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    codes = group_codes(groups)
    y = np.asarray(y)
    n = len(codes)
    record = {"grouped": True, "by": by, "n_folds": 0, "warning": None}
    scored = np.ones(n, bool)
    if classifier:
        labels = np.unique(y, return_inverse=True)[1].reshape(-1)
        _, counts = _majority(labels, codes, int(codes.max()) + 1 if n else 0)
        single = np.flatnonzero((counts > 0).sum(axis=0) < 2)
        scored = ~np.isin(labels, single)
        # A group with a row that must stay in training stays there whole: scoring its other rows (a subject
        # photographed in several classes) would test the head on near-duplicates of its training rows.
        scored &= ~np.isin(codes, codes[~scored])
    n_scored_groups = len(np.unique(codes[scored]))
    k = min(int(cv), n_scored_groups)
    if classifier and scored.any():  # StratifiedGroupKFold needs a class with at least k rows
        k = min(k, int(np.bincount(labels[scored]).max()))
    if k < 2:
        warning = (f"the grid search's CV folds cannot be split by {by} (too few classes have two {by}s); they go by "
                   "image, so the CV score that chooses the settings is optimistic: its rows have near-duplicates "
                   f"(same {by}) in training")
        log.warning("%s", warning)
        return None, {**record, "grouped": False, "warning": warning}
    if k < int(cv):
        log.info("%d %ss to score: %d CV folds instead of %d", n_scored_groups, by, k, int(cv))
    idx = np.flatnonzero(scored)
    kind = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed) if classifier else GroupKFold(n_splits=k)
    always = np.flatnonzero(~scored)
    folds = []
    with warnings.catch_warnings():  # "the least populated class has only N members": expected with groups
        warnings.simplefilter("ignore", UserWarning)
        splits = list(kind.split(idx, y[idx], codes[idx]))
    for a, b in splits:
        train, test = np.sort(np.concatenate([idx[a], always])), idx[b]
        if classifier:  # a class whose every group is in this test fold cannot be learnt in it: not scored there
            test = test[np.isin(y[test], y[train])]
        if len(test):
            folds.append((train, test))
    return folds, {**record, "n_folds": len(folds)}

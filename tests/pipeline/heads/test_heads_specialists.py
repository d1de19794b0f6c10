"""SpecialistsHead: per-group row selection, accuracy, parallel determinism, default groups."""

import numpy as np
import pytest
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV

from pipeline.heads.specialists import KAGGLE_GROUPS, SpecialistsHead, default_groups

GROUPS = {"a": [0, 1], "b": [2, 3], "c": [4, 5]}


class RowRecorder(RegressorMixin, BaseEstimator):
    """Remembers which rows (column 0 of X holds the row id) and targets it was fitted on."""

    def fit(self, X, y):
        self.ids_ = X[:, 0].astype(int)
        self.y_ = np.asarray(y)
        return self

    def predict(self, X):
        return np.zeros((len(X),) + self.y_.shape[1:])


def _data(rng, n=500):
    """Linear targets; group a present in 30% of rows, b in all, c in ~60% (one coordinate at a time)."""
    X = rng.normal(size=(n, 12))
    X[:, 0] = np.arange(n)  # row id, for RowRecorder; harmless as a feature
    Y = X[:, 1:] @ rng.normal(size=(11, 6)) + 0.1 * rng.normal(size=(n, 6))
    Y[rng.permutation(n)[: int(0.7 * n)], 0:2] = np.nan
    Y[rng.random(n) < 0.2, 4] = np.nan
    Y[rng.random(n) < 0.2, 5] = np.nan  # c needs both 4 and 5
    return X, Y


def test_each_specialist_uses_exactly_its_present_rows(rng):
    X, Y = _data(rng)
    head = SpecialistsHead(base=RowRecorder(), groups=GROUPS).fit(X, Y)
    assert head.n_rows_used_["a"] == 150 and head.n_rows_used_["b"] == 500
    for g, cols in GROUPS.items():
        expected = np.flatnonzero(np.isfinite(Y[:, cols]).all(axis=1))
        np.testing.assert_array_equal(head.estimators_[g].ids_, expected)
        np.testing.assert_array_equal(head.estimators_[g].y_, Y[np.ix_(expected, cols)])
        assert head.n_rows_used_[g] == len(expected)
    assert 200 < head.n_rows_used_["c"] < 400 and head.n_targets_ == 6
    assert head.groups_ == GROUPS


def test_predictions_beat_the_mean(rng):
    X, Y = _data(rng, n=600)
    head = SpecialistsHead(groups=GROUPS).fit(X[:400], Y[:400])
    P = head.predict(X[400:])
    assert P.shape == (200, 6) and np.all(np.isfinite(P))
    Yt = Y[400:]
    mean_rmse = np.sqrt(np.nanmean((Yt - np.nanmean(Y[:400], axis=0)) ** 2))
    assert -head.score(X[400:], Yt) < 0.2 * mean_rmse


@pytest.mark.slow  # ~6 s: joblib workers start
def test_parallel_matches_serial_and_clone(rng):
    X, Y = _data(rng)
    head = SpecialistsHead(groups=GROUPS, n_jobs=1)
    serial = head.fit(X, Y).predict(X)
    twin = clone(head).set_params(n_jobs=2)
    assert twin.get_params()["groups"] == GROUPS and not hasattr(twin, "estimators_")
    np.testing.assert_allclose(twin.fit(X, Y).predict(X), serial, rtol=1e-10, atol=1e-10)
    assert twin.n_rows_used_ == head.n_rows_used_


def test_grid_search_over_base(rng):
    X, Y = _data(rng, n=300)
    search = GridSearchCV(SpecialistsHead(groups=GROUPS),
                          {"base": [Ridge(alpha=0.1), Ridge(alpha=1e5)]}, cv=3).fit(X, Y)
    assert search.best_params_["base"].alpha == 0.1  # score is -RMSE: NaN targets are skipped


def test_errors_are_clear(rng):
    X, Y = _data(rng, n=50)
    Y[1:, 0] = np.nan
    with pytest.raises(ValueError, match="group 'a'"):
        SpecialistsHead(groups=GROUPS).fit(X, Y)
    with pytest.raises(ValueError, match="both group"):
        SpecialistsHead(groups={"a": [0, 1], "b": [1, 2]}).fit(X, Y)


def test_without_groups_every_column_is_its_own_specialist(rng):
    X, Y = _data(rng, n=60)
    head = SpecialistsHead(base=RowRecorder()).fit(X, Y)
    assert head.groups_ == {str(c): [c] for c in range(6)}
    # Each column trains on its own present rows: more than a group that needs both of 4 and 5.
    assert [head.n_rows_used_[str(c)] for c in range(6)] == list(np.isfinite(Y).sum(axis=0))
    assert head.n_rows_used_["2"] == 60 and head.n_rows_used_["0"] < 60


KAGGLE = [p + s for g in KAGGLE_GROUPS.values() for p in g for s in ("_x", "_y")]


def test_default_groups():
    names = sorted(KAGGLE)  # any column order
    groups = default_groups(names)
    assert list(groups) == list(KAGGLE_GROUPS)
    assert {g: len(c) for g, c in groups.items()} == {
        "eye_centers": 4, "nose_tip": 2, "mouth_corners_top_lip": 6,
        "bottom_lip": 2, "eye_corners": 8, "eyebrows": 8}
    assert sorted(c for cols in groups.values() for c in cols) == list(range(30))
    assert [names[c] for c in groups["bottom_lip"]] == ["mouth_center_bottom_lip_x",
                                                        "mouth_center_bottom_lip_y"]
    few = default_groups(["left_eye_center_x", "left_eye_center_y", "nose_tip_x", "nose_tip_y",
                          "chin_x", "chin_y", "score"])
    assert few == {"eye_centers": [0, 1], "nose_tip": [2, 3], "chin": [4, 5], "score": [6]}


def test_each_group_chooses_its_own_alpha_by_cv(rng):
    # Group "clean" is an exact linear function of X, group "noise" is independent of it: leave-one-out
    # must pick a tiny alpha for the first and a large one for the second. A fixed Ridge() (alpha 1) or one
    # alpha shared by all groups fails this.
    from pipeline.heads.specialists import DEFAULT_ALPHAS

    X = rng.normal(size=(120, 40))
    Y = np.column_stack([X @ rng.normal(size=(40, 2)), rng.normal(size=(120, 2))])
    head = SpecialistsHead(groups={"clean": [0, 1], "noise": [2, 3]}).fit(X, Y)
    assert head.alphas_["clean"] <= 1e-2 and head.alphas_["noise"] >= 100
    assert set(head.alphas_.values()) <= set(DEFAULT_ALPHAS)
    fixed = SpecialistsHead(groups={"clean": [0, 1], "noise": [2, 3]}, alpha=3.0).fit(X, Y)
    assert fixed.alphas_ == {"clean": 3.0, "noise": 3.0}  # a value the user gives is used as it is

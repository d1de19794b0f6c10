"""SVMHead / LogRegHead: sklearn protocol, folded linear weights, grid search and grid parsing."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split

from pipeline.heads import HEAD_NAMES, make_head
from pipeline.heads.linear import LogRegHead, SVMHead, grid_search, parse_grid
from tests.feature_files import FakeView


def _data(rng, n_classes, n=150):
    """4-D 'feature maps' whose classes are linearly separable-ish, on uneven scales."""
    X = rng.normal(size=(n, 2, 2, 5)) * rng.uniform(0.1, 10, size=(1, 2, 2, 5)) + 3.0
    y = (X.reshape(n, -1) @ rng.normal(size=(20, n_classes))).argmax(1)
    return X, y


@pytest.mark.parametrize("make", [lambda: SVMHead(C=0.5), lambda: LogRegHead(C=0.5)])
@pytest.mark.parametrize("n_classes", [2, 4])
def test_linear_weights_reproduce_decision_function(make, n_classes, rng):
    X, y = _data(rng, n_classes)
    head = make().fit(X, y)
    W, b = head.linear_weights()
    n_out = 1 if n_classes == 2 else n_classes
    assert W.shape == (20, n_out) and b.shape == (n_out,)
    d = head.decision_function(X).reshape(len(X), -1)
    assert np.allclose(X.reshape(len(X), -1) @ W + b, d)


def test_rbf_svm_has_no_linear_weights(rng):
    X, y = _data(rng, 3)
    head = SVMHead(kernel="rbf").fit(X, y)
    assert head.score(X, y) > 0.5
    with pytest.raises(ValueError, match="only linear heads convert to a Dense layer"):
        head.linear_weights()


@pytest.mark.parametrize("n_classes", [2, 3])
def test_svm_proba_is_a_normalised_score(n_classes, rng):
    X, y = _data(rng, n_classes)
    head = SVMHead().fit(X, y)
    p = head.predict_proba(X)
    assert p.shape == (len(X), n_classes)
    np.testing.assert_allclose(p.sum(1), 1.0)
    np.testing.assert_array_equal(head.classes_[p.argmax(1)], head.predict(X))


def test_logreg_proba_and_lazy_view(rng):
    X, y = _data(rng, 3)
    head = LogRegHead().fit(FakeView(X), y)
    ref = LogRegHead().fit(X.astype(np.float32), y)
    np.testing.assert_allclose(head.predict_proba(FakeView(X)), ref.predict_proba(X), atol=1e-6)
    assert head.pipeline_.named_steps["clf"].max_iter == 1000


def test_svm_default_tol_is_liblinears_and_predicts_like_a_tight_one():
    X, y = load_digits(return_X_y=True)
    Xa, Xb, ya, yb = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    loose, tight = SVMHead(C=10).fit(Xa, ya), SVMHead(C=10, tol=1e-4).fit(Xa, ya)
    assert loose.pipeline_.named_steps["clf"].tol == 1e-2 and tight.pipeline_.named_steps["clf"].tol == 1e-4
    assert SVMHead(kernel="rbf").fit(Xa, ya).pipeline_.named_steps["clf"].tol == 1e-3
    # The looser default is a speed choice, not an accuracy one: the held-out answers barely move.
    assert np.mean(loose.predict(Xb) == tight.predict(Xb)) >= 0.98
    assert abs(loose.score(Xb, yb) - tight.score(Xb, yb)) <= 0.01


def test_sklearn_protocol():
    head = SVMHead(kernel="bogus", C=2.0)  # __init__ stores, never validates
    twin = clone(head)
    assert twin.get_params() == head.get_params() and twin is not head
    twin.set_params(kernel="linear", C=3.0)
    assert twin.C == 3.0 and head.kernel == "bogus"
    with pytest.raises(ValueError, match="kernel"):
        head.fit(np.zeros((4, 2)), [0, 1, 0, 1])


def test_grid_search_logreg_on_digits():
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    search = grid_search(LogRegHead(), {"C": [0.01, 0.1, 1.0]}, Xtr, ytr, cv=3)
    assert isinstance(search, GridSearchCV)
    assert search.best_params_["C"] in (0.01, 0.1, 1.0)
    assert search.score(Xte, yte) > 0.9
    with pytest.raises(ValueError, match="unknown parameter"):
        grid_search(LogRegHead(), {"gamma": [1]}, Xtr, ytr)


def test_parse_grid():
    grid = parse_grid(["C=0.01,0.1,1", "kernel=linear, rbf", "max_iter=100", "class_weight=None,balanced"])
    assert grid == {"C": [0.01, 0.1, 1], "kernel": ["linear", "rbf"], "max_iter": [100],
                    "class_weight": [None, "balanced"]}
    assert isinstance(grid["C"][2], int) and isinstance(parse_grid(["lr=1e-3"])["lr"][0], float)
    for bad in (["C"], ["=1,2"], ["C=1,,2"], ["C="], ["C=1", "C=2"], ["bad name=1"]):
        with pytest.raises(ValueError):
            parse_grid(bad)


def test_make_head():
    assert isinstance(make_head("svm", C=0.1), SVMHead) and make_head("logreg").C == 1.0
    with pytest.raises(ValueError, match="valid names: " + ", ".join(HEAD_NAMES)):
        make_head("xgboost")


def test_grid_search_keeps_an_image_and_its_mirror_in_one_fold():
    X, y = load_digits(return_X_y=True)
    X, y = X[:300], y[:300]
    Xm = np.concatenate([X, X[:, ::-1]])  # rows 300.. are the "mirrors" of rows 0..
    ym = np.concatenate([y, y])
    groups = np.concatenate([np.arange(300), np.arange(300)])
    search = grid_search(LogRegHead(), {"C": [0.1, 1.0]}, Xm, ym, cv=3, groups=groups)
    for train, test in search.cv.split(Xm, ym, groups):
        assert not set(groups[train]) & set(groups[test])
    assert search.best_params_["C"] in (0.1, 1.0)

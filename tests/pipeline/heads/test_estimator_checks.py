"""scikit-learn's own estimator checks over every registered head (issue 19: the contract, checked by sklearn)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from pipeline.heads import HEADS, DenseHead, LogRegHead, SpecialistsHead, SVMHead  # noqa: E402

#: One instance per head, small enough that a fit takes milliseconds (the dense head: a few epochs).
INSTANCES = [SVMHead(), SVMHead(kernel="rbf"), LogRegHead(), SpecialistsHead(),
             DenseHead(task="multiclass", units=8, epochs=3, batch_size=32, patience=None),
             DenseHead(task="regression", units=8, epochs=3, batch_size=32, patience=None)]

SKLEARN_HEADS = [e for e in INSTANCES if not isinstance(e, DenseHead)]
DENSE_HEADS = [e for e in INSTANCES if isinstance(e, DenseHead)]


def expected_failed_checks(estimator):
    """Checks that cannot apply to a head, each with the reason (sklearn reports them as xfail)."""
    if isinstance(estimator, DenseHead):
        regression = {
            # A NaN target is a missing keypoint: the masked loss skips it (infinite targets are refused).
            "check_supervised_y_no_nan": "NaN regression targets mean 'missing' and are masked out of the loss",
        } if estimator.task == "regression" else {}
        return {**regression,
            "check_regressor_multioutput": "Keras computes in float32; predictions are float32, not float64",
            # A neural network trained for 3 epochs from a random start is not an accurate classifier
            # or regressor on sklearn's toy problems; accuracy is pinned in tests/pipeline/heads/test_heads_dense.py.
            "check_classifiers_train": "3 epochs of an MLP are not meant to fit sklearn's toy data",
            "check_regressors_train": "3 epochs of an MLP are not meant to fit sklearn's toy data",
        }
    if isinstance(estimator, SpecialistsHead):
        return {
            # score() is minus the RMSE over the *finite* targets: NaN marks a missing keypoint, and model
            # selection on partly labelled faces must skip it. sklearn's check wants R^2 > 0.5 instead.
            "check_regressors_train": "score is -RMSE over finite targets (NaN = missing keypoint), not R^2",
        }
    return {}


def test_every_registered_head_is_checked():
    assert {type(e) for e in INSTANCES} == set(HEADS.values())


def test_each_registry_key_is_its_class_name():
    assert {name: cls.name for name, cls in HEADS.items()} == {name: name for name in HEADS}


@parametrize_with_checks(SKLEARN_HEADS, expected_failed_checks=expected_failed_checks)
def test_sklearn_heads(estimator, check):
    check(estimator)


@pytest.mark.slow
@parametrize_with_checks(DENSE_HEADS, expected_failed_checks=expected_failed_checks)
def test_dense_head(estimator, check):
    check(estimator)

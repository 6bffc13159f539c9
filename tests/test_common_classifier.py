"""scikit-learn's common estimator checks on the shipped TransferClassifier."""

import pytest
import torch.nn as nn
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator, parametrize_with_checks

from skitl import TransferClassifier


def tiny_mlp():
    """A small MLP whose first layer adapts to any number of features."""
    return nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, 2))


def _estimator():
    return TransferClassifier(
        tiny_mlp,
        strategy="scratch",
        lr=0.05,
        max_epochs=15,
        batch_size=32,
        device="cpu",
        random_state=0,
    )


#: Every check scikit-learn runs passes except these, each for a reason.
EXPECTED_FAILED = {
    "check_methods_subset_invariance": (
        "the network computes in float32; a batch of different size rounds the "
        "matrix products differently, so probabilities differ by ~2e-7, above "
        "the check's 1e-7 tolerance"
    ),
    "check_sample_weight_equivalence_on_dense_data": (
        "weighting equals repeating rows in full-batch training (the loss is "
        "sum(w_i L_i) / sum(w_i)), but in float32 the two sums round differently: "
        "probabilities differ by ~5e-8 (relative 1e-6) after 15 epochs, above the "
        "check's 1e-7 tolerance; tests/test_transfer_weights.py checks it at 1e-5"
    ),
}


@parametrize_with_checks(
    [_estimator()],
    expected_failed_checks=lambda est: EXPECTED_FAILED,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_check_estimator_accepts_the_shipped_class():
    """``check_estimator`` itself starts and runs on the class as shipped."""
    results = check_estimator(
        _estimator(), expected_failed_checks=EXPECTED_FAILED, on_fail=None
    )
    failed = {r["check_name"] for r in results if r["status"] == "failed"}
    assert failed == set(), failed
    assert len(results) > 30


def test_no_transform_attribute():
    """No parameter or method named ``transform``: scikit-learn would take the
    classifier for a transformer (``hasattr(est, "transform")``)."""
    clf = TransferClassifier(tiny_mlp)
    assert not hasattr(clf, "transform")
    pipe = make_pipeline(StandardScaler(), clf)
    assert not hasattr(pipe, "transform")
    assert not hasattr(pipe, "fit_transform")


@pytest.mark.parametrize("name", ["transform", "fit_transform"])
def test_train_transform_is_a_parameter(name):
    assert "train_transform" in TransferClassifier(tiny_mlp).get_params()
    assert name not in TransferClassifier(tiny_mlp).get_params()

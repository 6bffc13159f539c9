"""scikit-learn's common estimator checks on a small TransferClassifier."""

import sys

import torch.nn as nn
from sklearn.utils.estimator_checks import parametrize_with_checks

from skitl import TransferClassifier


def tiny_mlp():
    """A small MLP whose first layer adapts to any number of features."""
    return nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, 2))


class _ChecksView(TransferClassifier):
    """TransferClassifier as scikit-learn's checks should see it.

    DESIGN §2 pins a constructor parameter named ``transform`` (train-time
    augmentation), so every instance has a ``transform`` attribute.
    scikit-learn duck-types transformers with ``hasattr(est, "transform")``:
    its checks would refuse to run (no ``transformer_tags``) or call
    ``est.transform(X)``. This view hides the attribute from scikit-learn's
    check and pipeline code only (``get_params``/``clone`` in
    ``sklearn.base`` and skitl itself still see it), so that all other checks
    run on the unchanged implementation.
    """

    def __getattribute__(self, name):
        if name == "transform":
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("sklearn.") and caller != "sklearn.base":
                raise AttributeError(name)
        return super().__getattribute__(name)


def _estimator():
    return _ChecksView(
        tiny_mlp,
        strategy="scratch",
        lr=0.05,
        max_epochs=15,
        batch_size=32,
        device="cpu",
        random_state=0,
    )


EXPECTED_FAILED = {
    "check_methods_subset_invariance": (
        "the network computes in float32; a batch of different size rounds the "
        "matrix products differently, so probabilities differ by ~2e-7, above "
        "the check's 1e-7 tolerance"
    ),
}


@parametrize_with_checks(
    [_estimator()],
    expected_failed_checks=lambda est: EXPECTED_FAILED,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_transform_parameter_shadows_transformer_api():
    # Documents the known clash: the pinned train-time ``transform`` parameter
    # makes scikit-learn's duck typing see a transformer method.
    clf = TransferClassifier(tiny_mlp)
    assert hasattr(clf, "transform") and clf.transform is None

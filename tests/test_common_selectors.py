"""scikit-learn's and imbalanced-learn's common checks on every selector."""

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from skitl.selection import (
    ConfidentLearningSelector,
    DomainClassifierSelector,
    InfluenceSampleSelector,
    LossSelector,
    RandomSelector,
)

SELECTORS = [
    InfluenceSampleSelector(cv=2, alpha=1e-2, random_state=0),
    InfluenceSampleSelector(cv=2, hessian="identity", random_state=0),
    LossSelector(cv=2, random_state=0),
    RandomSelector(random_state=0),
]
# DomainClassifierSelector is left out of the common checks: it needs a target
# (X_val or sample_domain) that the checks cannot pass; its contract is tested
# in tests/test_target.py.
try:  # cleanlab is optional
    import cleanlab  # noqa: F401

    SELECTORS.append(ConfidentLearningSelector(cv=2, random_state=0))
except ImportError:  # pragma: no cover
    pass


# Every scikit-learn check passes: no expected failures to list.
@parametrize_with_checks(SELECTORS)
def test_sklearn_compatible_selector(estimator, check):
    check(estimator)


#: imbalanced-learn's sampler checks that cannot apply to a cleaning sampler.
IMBLEARN_EXPECTED_FAILED = {
    "check_samplers_fit": (
        "asserts the sampling_strategy_ of a balancing sampler; a cleaning "
        "selector has no sampling strategy"
    ),
    "check_samplers_multiclass_ova": (
        "resamples with a one-hot (multilabel-indicator) y; a selector scores "
        "each sample by its class label and takes a 1-D y only"
    ),
    "check_samplers_pandas_sparse": (
        "sparse DataFrames: selectors score dense inputs through a network and "
        "refuse sparse data with a clear error (tests/test_robustness.py)"
    ),
    "check_sampler_get_feature_names_out": (
        "a selector keeps rows, it does not produce features "
        "(no get_feature_names_out)"
    ),
    "check_sampler_get_feature_names_out_pandas": (
        "a selector keeps rows, it does not produce features "
        "(no get_feature_names_out)"
    ),
}


def _imblearn_checks():
    ec = pytest.importorskip("imblearn.utils.estimator_checks")
    return ec.parametrize_with_checks(
        [s for s in SELECTORS],
        legacy=False,
        expected_failed_checks=lambda est: IMBLEARN_EXPECTED_FAILED,
    )


try:
    _imblearn_parametrize = _imblearn_checks()
except pytest.skip.Exception:  # pragma: no cover - imbalanced-learn missing
    _imblearn_parametrize = pytest.mark.skip(reason="imbalanced-learn not installed")


@_imblearn_parametrize
def test_imblearn_sampler_checks(estimator, check):
    check(estimator)


def test_domain_classifier_needs_a_target():
    X = np.random.RandomState(0).rand(40, 3)
    y = np.arange(40) % 2
    with pytest.raises(ValueError, match="needs a target"):
        DomainClassifierSelector(cv=2).fit(X, y)

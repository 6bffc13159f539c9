"""scikit-learn's and imbalanced-learn's common checks on every selector."""

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from skitl.selection import (
    ConfidentLearningSelector,
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
try:  # cleanlab is optional
    import cleanlab  # noqa: F401

    SELECTORS.append(ConfidentLearningSelector(cv=2, random_state=0))
except ImportError:  # pragma: no cover
    pass


# Every scikit-learn check passes: no expected failures to list.
@parametrize_with_checks(SELECTORS)
def test_sklearn_compatible_selector(estimator, check):
    check(estimator)


@pytest.mark.parametrize("selector", SELECTORS, ids=lambda s: type(s).__name__)
def test_imblearn_sampler_checks(selector):
    """imbalanced-learn's sampler checks that apply to a cleaning sampler.

    Left out, each for a reason: ``check_samplers_fit`` and
    ``check_samplers_fit_resample`` assert the ``sampling_strategy_`` of
    *balancing* samplers, which a cleaning sampler has no use for;
    ``check_samplers_sample_indices`` reads imbalanced-learn's own tags class
    (``sample_indices_`` is tested in test_selectors.py); ``check_samplers_nan``
    and ``check_samplers_string`` expect NaN / string features to pass through,
    which skitl refuses on purpose with a clear error (tests/test_robustness.py).
    """
    ec = pytest.importorskip("imblearn.utils.estimator_checks")
    name = type(selector).__name__
    for check in (
        ec.check_samplers_preserve_dtype,
        ec.check_samplers_2d_target,
        ec.check_samplers_one_label,
        ec.check_samplers_list,
        ec.check_samplers_pandas,
    ):
        check(name, selector)

"""Scoring on the target domain only, for searches over mixed pools.

A ``GridSearchCV`` over a pool of target and auxiliary samples splits the
pool, and by default scores each candidate on the whole held-out part. What
matters for instance-based transfer is the target: :func:`make_target_scorer`
returns a scorer that receives ``sample_domain`` through scikit-learn's
metadata routing and evaluates only the target samples (negative domains).
"""

import numpy as np
import sklearn
from sklearn.metrics import accuracy_score, make_scorer

from .utils import check_sample_domain


def _target_score(y_true, y_pred, *, metric, sample_domain=None, **kwargs):
    # module level, so the scorer pickles for joblib / Dask workers
    if sample_domain is None:
        raise ValueError(
            "The target scorer needs sample_domain; route it with "
            "sklearn.set_config(enable_metadata_routing=True) and pass "
            "sample_domain to the search's fit (or use a plain scorer)."
        )
    _, is_target = check_sample_domain(sample_domain, len(y_true),
                                       require_auxiliary=False)
    return metric(np.asarray(y_true)[is_target], np.asarray(y_pred)[is_target],
                      **kwargs)


def make_target_scorer(score_func=accuracy_score, *, greater_is_better=True, **kwargs):
    """A scorer that evaluates only the target samples of a held-out split.

    Parameters
    ----------
    score_func : callable, default=sklearn.metrics.accuracy_score
        ``score_func(y_true, y_pred, **kwargs)`` computed on the samples whose
        ``sample_domain`` is negative.
    greater_is_better : bool, default=True
        As in :func:`sklearn.metrics.make_scorer`.
    **kwargs
        Passed to ``score_func``.

    Returns
    -------
    scorer : callable
        A scikit-learn scorer that requests ``sample_domain`` (metadata
        routing must be enabled, ``sklearn.set_config(enable_metadata_routing=
        True)``: the scorer is built with ``set_score_request(sample_domain=
        True)``).

    Raises
    ------
    RuntimeError
        When metadata routing is not enabled: the scorer could never receive
        ``sample_domain``.

    Examples
    --------
    >>> import sklearn
    >>> from skitl.metrics import make_target_scorer
    >>> with sklearn.config_context(enable_metadata_routing=True):
    ...     scorer = make_target_scorer()
    """
    if not sklearn.get_config().get("enable_metadata_routing", False):
        raise RuntimeError(
            "make_target_scorer needs metadata routing to receive sample_domain: "
            "call sklearn.set_config(enable_metadata_routing=True) first."
        )
    scorer = make_scorer(_target_score, greater_is_better=greater_is_better,
                         metric=score_func, **kwargs)
    return scorer.set_score_request(sample_domain=True)


__all__ = ["make_target_scorer"]

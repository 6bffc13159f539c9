"""TargetOnlySelector: keep the target samples, remove every auxiliary one."""

import numpy as np

from ._base import BaseSelector
from ._plan import check_target_classes


class TargetOnlySelector(BaseSelector):
    """Remove every auxiliary sample: fine-tune on the target samples alone.

    The reference every instance selection on a mixed pool must beat (if no
    auxiliary sample helps, this wins), and a candidate of a search scored on
    the target (:func:`skitl.model_selection.selector_grid`). Needs
    ``sample_domain``; every class must have a target sample. The class
    floor of the other selectors does not apply: every class keeps its
    target samples.

    Attributes
    ----------
    scores_ : ndarray of shape (n_samples,)
        ``1`` for target samples, ``-1`` for auxiliary ones.
    support_ : ndarray of bool, shape (n_samples,)
        The target samples.
    sample_indices_ : ndarray of int
        Indices of the target samples, ascending.
    n_removed_ : int
        Number of auxiliary samples removed.
    n_protected_ : int
        Always 0.
    classes_ : ndarray
        Class labels seen in ``fit``.
    n_features_in_ : int
        ``X.shape[1]`` of the training array.
    feature_names_in_ : ndarray of str
        Column names, when fitted on a DataFrame with string column names.

    Examples
    --------
    >>> import numpy as np
    >>> from skitl.selection import TargetOnlySelector
    >>> X = np.arange(8.0).reshape(4, 2)
    >>> y = np.array([0, 1, 0, 1])
    >>> TargetOnlySelector().fit(X, y, sample_domain=[-1, -1, 1, 1]).support_
    array([ True,  True, False, False])
    """

    _parameter_constraints = {}
    _class_floor = False

    def __init__(self):
        pass

    def _check_plan(self, plan, y, y_val):
        if plan.target is None:
            raise ValueError("TargetOnlySelector needs sample_domain (negative = target) "
                             "to know which samples to keep.")
        check_target_classes(y, plan.target, self.classes_)

    def _compute_scores(self, plan, X, y, X_val, y_val):
        return np.where(plan.target, 1.0, -1.0)

    def _candidates(self, scores):
        return scores < 0

    def fit(self, X, y, X_val=None, y_val=None, *, sample_domain=None):
        """Keep the target samples of ``(X, y)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...) or torch Dataset
            The pool.
        y : array-like of shape (n_samples,)
            Its labels.
        X_val : array-like, default=None
            Accepted for the shared interface; not used.
        y_val : array-like, default=None
            Accepted for the shared interface; not used.
        sample_domain : array-like of int of shape (n_samples,)
            Negative = target (kept), positive = auxiliary (removed).

        Returns
        -------
        self : TargetOnlySelector
            The fitted selector.
        """
        return super().fit(X, y, X_val, y_val, sample_domain=sample_domain)

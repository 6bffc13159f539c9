"""TargetAgnostic: any imbalanced-learn sampler, in a grid of target-aware selectors."""

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.utils._param_validation import HasMethods

from ._base import _take


class TargetAgnostic(BaseEstimator):
    """Run a sampler that knows nothing of the target, and say so.

    A :class:`~skitl.TransferClassifier` hands its selector the target
    (``X_val`` / ``y_val`` / ``sample_domain``); a plain imbalanced-learn
    sampler such as ``RandomUnderSampler`` cannot take it and fails. Wrapped,
    it accepts the target and ignores it, so it can sit in the same search
    as the target-aware selectors (``{"selector": [None,
    InfluenceSampleSelector(), TargetAgnostic(RandomUnderSampler())]}``).

    Images (``X`` with more than two dimensions) are flattened for the
    sampler and the rows it keeps are taken from the original ``X``; that
    needs a sampler that reports ``sample_indices_`` (the under-samplers
    do). A sampler that synthesises samples (SMOTE) works on 2-D ``X`` only.

    Parameters
    ----------
    sampler : object with ``fit_resample(X, y)``
        The sampler; cloned for every fit.

    Attributes
    ----------
    sampler_ : object
        The fitted clone.
    sample_indices_ : ndarray of int
        Indices of the kept samples, when the sampler reports them.

    Examples
    --------
    >>> import numpy as np
    >>> from imblearn.under_sampling import RandomUnderSampler
    >>> from skitl.selection import TargetAgnostic
    >>> X, y = np.arange(20.0).reshape(10, 2), np.array([0] * 8 + [1] * 2)
    >>> sel = TargetAgnostic(RandomUnderSampler(random_state=0))
    >>> X_kept, y_kept = sel.fit_resample(X, y, sample_domain=[-1] * 5 + [1] * 5)
    >>> np.bincount(y_kept)
    array([2, 2])
    """

    _parameter_constraints = {"sampler": [HasMethods(["fit_resample"])]}

    def __init__(self, sampler):
        self.sampler = sampler

    def fit(self, X, y, X_val=None, y_val=None, *, sample_domain=None):
        """Fit the sampler on ``(X, y)`` (see :meth:`fit_resample`).

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Training inputs.
        y : array-like of shape (n_samples,)
            Labels.
        X_val, y_val : array-like, default=None
            Ignored.
        sample_domain : array-like, default=None
            Ignored.

        Returns
        -------
        self : TargetAgnostic
            The fitted wrapper.
        """
        self.fit_resample(X, y, X_val, y_val, sample_domain=sample_domain)
        return self

    def fit_resample(self, X, y, X_val=None, y_val=None, *, sample_domain=None):
        """Resample ``(X, y)`` with the sampler; the target arguments are ignored.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Training inputs.
        y : array-like of shape (n_samples,)
            Labels.
        X_val, y_val : array-like, default=None
            Ignored: the sampler does not use a target.
        sample_domain : array-like, default=None
            Ignored: the sampler does not use a target.

        Returns
        -------
        X_res : array-like
            The resampled inputs (rows of ``X`` for an under-sampler).
        y_res : array-like
            Their labels.
        """
        self._validate_params()
        sampler = clone(self.sampler)
        arr = np.asarray(X) if not hasattr(X, "iloc") else X
        flat = arr.reshape(len(arr), -1) if getattr(arr, "ndim", 2) > 2 else arr
        X_res, y_res = sampler.fit_resample(flat, y)
        self.sampler_ = sampler
        idx = getattr(sampler, "sample_indices_", None)
        if idx is not None:
            self.sample_indices_ = np.asarray(idx)
            return _take(X, self.sample_indices_), _take(y, self.sample_indices_)
        if flat is not arr:
            raise ValueError(
                f"{type(sampler).__name__} reports no sample_indices_, so its output "
                f"cannot be mapped back to inputs of shape {arr.shape[1:]}; use an "
                "under-sampler, or 2-D X.")
        return X_res, y_res

"""The contract every skitl selector shares.

A selector scores each training sample ("higher score = keep"), turns the
scores into a boolean mask with a removal rule, and hands the kept rows back
through ``fit_resample`` — the imbalanced-learn sampler protocol, so a selector
is a step of ``imblearn.pipeline.Pipeline`` and the ``selector`` of a
:class:`~skitl.TransferClassifier`. There is deliberately no ``transform``: a
scikit-learn ``Pipeline`` cannot drop rows, and a silent pass-through would
hide that nothing was pruned.
"""

import numbers
import warnings
from abc import abstractmethod

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.validation import check_is_fitted
from torch.utils.data import Subset

from ..utils import check_fraction_or_int, check_X, check_y

#: A class keeps at least this many samples whatever the scores say, so that
#: stratified splits and early-stopping validation still see every class.
MIN_SAMPLES_PER_CLASS = 2

#: ... and at least this fraction of its samples.
MIN_CLASS_FRACTION = 0.1


def _class_floor(count):
    return min(count, max(MIN_SAMPLES_PER_CLASS, int(np.ceil(MIN_CLASS_FRACTION * count))))


def removal_mask(scores, y, *, candidates, max_remove=None):
    """Decide which samples to remove, most harmful first, within the guards.

    Parameters
    ----------
    scores : ndarray of shape (n_samples,)
        Selector scores, higher = keep.
    y : ndarray of shape (n_samples,)
        Encoded labels.
    candidates : ndarray of bool, shape (n_samples,)
        Samples the selector's rule would remove (e.g. ``scores < threshold``).
    max_remove : int, optional
        Largest number of samples removed; the lowest-scored candidates go
        first.

    Returns
    -------
    remove : ndarray of bool, shape (n_samples,)
        The samples to drop.
    protected : dict
        ``{class_label: n_candidates_kept}`` for classes whose floor stopped
        removal.

    Notes
    -----
    The rule: candidates are taken in ascending score order (ties broken by
    index, so it is deterministic), at most ``max_remove`` of them, and a class
    never drops below ``max(2, ceil(0.1 * n_class))`` samples (or all of them
    when it has fewer). So no class disappears and fine-tuning keeps data of
    every class.
    """
    n = len(scores)
    order = np.lexsort((np.arange(n), scores))
    order = order[candidates[order]]
    classes, counts = np.unique(y, return_counts=True)
    left = dict(zip(classes.tolist(), counts.tolist(), strict=True))
    floor = {c: _class_floor(k) for c, k in left.items()}
    budget = n if max_remove is None else int(max_remove)
    remove = np.zeros(n, dtype=bool)
    protected = {}
    for i in order:
        if budget <= 0:
            break
        c = y[i].item()
        if left[c] <= floor[c]:
            protected[c] = protected.get(c, 0) + 1
            continue
        remove[i] = True
        left[c] -= 1
        budget -= 1
    return remove, protected


class BaseSelector(BaseEstimator):
    """Base class of skitl selectors: scores, a removal rule, ``fit_resample``.

    Subclasses implement :meth:`_compute_scores` and may override
    :meth:`_candidates`; everything else (validation, the class guards,
    ``support_``, ``fit_resample``) is shared.
    """

    # imbalanced-learn dispatches on this attribute.
    _sampling_type = "clean-sampling"

    @abstractmethod
    def _compute_scores(self, X, y, **fit_params):
        """Return an array of one score per sample (higher = keep)."""

    def _candidates(self, scores):
        threshold = getattr(self, "threshold", None)
        if threshold is None:
            return np.ones(len(scores), dtype=bool)
        return scores < threshold

    def _validate_common(self):
        max_remove = getattr(self, "max_remove", None)
        if max_remove is not None:
            check_fraction_or_int(max_remove, "max_remove")
        threshold = getattr(self, "threshold", None)
        if threshold is not None and (
            not isinstance(threshold, numbers.Real) or isinstance(threshold, bool)
        ):
            raise TypeError(f"threshold must be a real number or None, got {threshold!r}.")
        if threshold is not None and np.isnan(threshold):
            raise ValueError("threshold must not be NaN.")

    def fit(self, X, y, **fit_params):
        """Score every sample of ``(X, y)`` and decide which to keep.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...) or torch Dataset
            Training inputs.
        y : array-like of shape (n_samples,)
            Training labels (any type).
        **fit_params : dict
            Passed to the scoring step (e.g. ``X_val``, ``y_val``).

        Returns
        -------
        self : object
            The fitted selector.

        Notes
        -----
        A fit that fails or is interrupted (``KeyboardInterrupt``) re-raises
        and leaves the selector unfitted: every fitted attribute, including
        those of an earlier fit, is removed.
        """
        try:
            return self._fit_and_select(X, y, **fit_params)
        except BaseException:
            for attr in list(vars(self)):
                if (attr.endswith("_") and not attr.startswith("__")) or attr == "_encoder":
                    delattr(self, attr)
            raise

    def _fit_and_select(self, X, y, **fit_params):
        self._reset()
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y "
                "is None."
            )
        self._validate_common()
        X = check_X(X)
        y = check_y(y, n_samples=len(X))
        self._encoder = LabelEncoder().fit(y)
        if len(self._encoder.classes_) < 2:
            raise ValueError(
                f"y has 1 class ({self._encoder.classes_.tolist()[0]!r}); a selector needs "
                "at least 2 classes."
            )
        y_enc = self._encoder.transform(y)
        self.classes_ = self._encoder.classes_
        if isinstance(X, np.ndarray):
            self.n_features_in_ = int(np.prod(X.shape[1:]))
        scores = np.asarray(self._compute_scores(X, y_enc, **fit_params), dtype=np.float64)
        if scores.shape != (len(y_enc),):
            raise RuntimeError(
                f"{type(self).__name__} produced {scores.shape} scores for "
                f"{len(y_enc)} samples."
            )
        if not np.isfinite(scores).all():
            raise FloatingPointError(
                f"{type(self).__name__} produced {int((~np.isfinite(scores)).sum())} "
                "non-finite scores; check the inputs for extreme values or raise "
                "the damping."
            )
        candidates = np.asarray(self._candidates(scores), dtype=bool)
        max_remove = check_fraction_or_int(
            getattr(self, "max_remove", None), "max_remove", n=len(y_enc)
        )
        remove, protected = removal_mask(
            scores, y_enc, candidates=candidates, max_remove=max_remove
        )
        if protected:
            names = {self.classes_.tolist()[c]: k for c, k in protected.items()}
            warnings.warn(
                f"{type(self).__name__}: kept {sum(protected.values())} samples the "
                f"rule would remove, so that no class falls below its floor of "
                f"max({MIN_SAMPLES_PER_CLASS}, {MIN_CLASS_FRACTION:.0%}) samples "
                f"(kept per class: {names}).",
                UserWarning,
                stacklevel=2,
            )
        self.scores_ = scores
        self.support_ = ~remove
        self.sample_indices_ = np.flatnonzero(self.support_)
        self.n_removed_ = int(remove.sum())
        self.n_protected_ = int(sum(protected.values()))
        return self

    def _reset(self):
        for attr in ("scores_", "support_", "sample_indices_", "n_removed_", "classes_"):
            if attr in self.__dict__:
                delattr(self, attr)

    def fit_resample(self, X, y, **fit_params):
        """Fit, then return the kept samples in their original order.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...) or torch Dataset
            Training inputs.
        y : array-like of shape (n_samples,)
            Training labels.
        **fit_params : dict
            Passed to :meth:`fit`.

        Returns
        -------
        X_kept : same type as X
            The kept rows (a ``torch.utils.data.Subset`` for a Dataset).
        y_kept : same type as y
            The kept labels.
        """
        self.fit(X, y, **fit_params)
        return _take(X, self.sample_indices_), _take(y, self.sample_indices_)

    def get_support(self, indices=False):
        """Mask or indices of the kept samples.

        Parameters
        ----------
        indices : bool, default=False
            Return ascending integer indices instead of a boolean mask.

        Returns
        -------
        support : ndarray
        """
        check_is_fitted(self, "support_")
        return self.sample_indices_ if indices else self.support_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.input_tags.allow_nan = False
        return tags


def _take(data, idx):
    if hasattr(data, "iloc"):
        return data.iloc[idx]
    if isinstance(data, np.ndarray):
        return data[idx]
    try:
        import torch

        if isinstance(data, torch.Tensor):
            return data[torch.as_tensor(idx, dtype=torch.long)]
        if isinstance(data, torch.utils.data.Dataset):
            return Subset(data, idx.tolist())
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    if isinstance(data, list):
        return [data[i] for i in idx]
    return np.asarray(data)[idx]

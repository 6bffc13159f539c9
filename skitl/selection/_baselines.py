"""Baseline selectors any honest comparison with influence needs.

All share :class:`~skitl.selection.BaseSelector`'s contract: ``scores_`` with
"higher = keep", ``support_``, ``sample_indices_``, ``fit_resample``.
"""

import numbers

import numpy as np
from sklearn.base import clone
from sklearn.utils import check_random_state

from ..influence import cross_fit_head_influence
from ._base import BaseSelector
from ._features import compute_features, pretrained_network


class RandomSelector(BaseSelector):
    """Remove a given number (or fraction) of samples uniformly at random.

    The control every pruning result must beat: with ``max_remove`` set to the
    count another selector removed, it tells whether *which* samples were
    removed mattered.

    Parameters
    ----------
    max_remove : int or float in [0, 1), default=0.1
        How many samples to remove (a count or a fraction).
    random_state : int, RandomState instance or None, default=None
        Seeds the draw.

    Attributes
    ----------
    scores_ : ndarray of shape (n_samples,)
        Uniform random numbers; the lowest ``max_remove`` are removed.
    support_, sample_indices_, n_removed_, classes_
        As in :class:`~skitl.InfluenceSampleSelector`.
    """

    def __init__(self, max_remove=0.1, *, random_state=None):
        self.max_remove = max_remove
        self.random_state = random_state

    def _compute_scores(self, X, y):
        return check_random_state(self.random_state).uniform(size=len(y))


class _OutOfFoldSelector(BaseSelector):
    """Shared machinery: out-of-fold head probabilities on pretrained features."""

    def _oof(self, X, y):
        if isinstance(self.cv, bool) or not isinstance(self.cv, numbers.Integral) or self.cv < 2:
            raise ValueError(f"cv must be an int >= 2, got {self.cv!r}.")
        smallest = np.bincount(y).min()
        if self.cv > smallest:
            c = self.classes_.tolist()[np.argmin(np.bincount(y))]
            raise ValueError(
                f"Class {c!r} has {smallest} samples, fewer than cv={self.cv} folds; "
                "lower cv."
            )
        net, head_name = pretrained_network(self.estimator)
        self.estimator_ = None if self.estimator is None else clone(self.estimator)
        F = compute_features(
            net, head_name, X, batch_size=self.batch_size, device=self.device,
            verbose=self.verbose,
        )
        # identity Hessian: only the out-of-fold probabilities are used here,
        # and they do not depend on the curvature.
        res = cross_fit_head_influence(
            F, y, n_classes=len(self.classes_), cv=self.cv, alpha=self.alpha,
            val_trim=0.0, hessian="identity", random_state=self.random_state,
            verbose=self.verbose,
        )
        self.oof_proba_ = res.oof_proba
        self.oof_loss_ = res.oof_loss
        return res


class LossSelector(_OutOfFoldSelector):
    """Remove the samples with the highest out-of-fold loss under the pretrained features.

    A head is fitted on the pretrained network's features with ``cv``-fold
    cross-fitting; each sample's loss is taken from the fold in which it was
    held out. This is the small-loss trick of the noisy-label literature and
    the strongest simple baseline for influence (DESIGN.md measured it to tie
    influence under symmetric noise).

    Parameters
    ----------
    estimator : TransferClassifier, default=None
        Whose pretrained network gives the features; ``None`` uses X itself.
    cv : int, default=5
        Number of stratified folds.
    alpha : float, default=1e-3
        L2 strength of the head, as in :class:`~skitl.InfluenceSampleSelector`.
    threshold : float or None, default=None
        Remove samples whose score ``-loss`` is below it (i.e. loss above
        ``-threshold``); ``None`` leaves the count to ``max_remove``.
    max_remove : int or float in [0, 1), default=0.1
        Largest number (or fraction) of samples removed, highest loss first.
    batch_size : int, default=256
    device : str, default="auto"
    random_state : int, RandomState instance or None, default=None
        Seeds the folds.
    verbose : int, default=0

    Attributes
    ----------
    scores_ : ndarray of shape (n_samples,)
        Minus the out-of-fold cross-entropy (higher = keep).
    oof_proba_ : ndarray of shape (n_samples, n_classes)
    oof_loss_ : ndarray of shape (n_samples,)
    support_, sample_indices_, n_removed_, classes_, estimator_
    """

    def __init__(
        self,
        estimator=None,
        *,
        cv=5,
        alpha=1e-3,
        threshold=None,
        max_remove=0.1,
        batch_size=256,
        device="auto",
        random_state=None,
        verbose=0,
    ):
        self.estimator = estimator
        self.cv = cv
        self.alpha = alpha
        self.threshold = threshold
        self.max_remove = max_remove
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _compute_scores(self, X, y):
        return -self._oof(X, y).oof_loss


class ConfidentLearningSelector(_OutOfFoldSelector):
    """Remove the label issues cleanlab's confident learning finds.

    Out-of-fold probabilities come from a head fitted on the pretrained
    network's features (as in :class:`LossSelector`); cleanlab's
    ``find_label_issues`` then flags the samples. Needs the optional
    dependency: ``pip install "skitl[cleanlab]"``.

    Parameters
    ----------
    estimator : TransferClassifier, default=None
        Whose pretrained network gives the features; ``None`` uses X itself.
    cv : int, default=5
    alpha : float, default=1e-3
    filter_by : str, default="prune_by_noise_rate"
        Passed to ``cleanlab.filter.find_label_issues``.
    max_remove : int or float in [0, 1), default=None
        Caps removal, lowest self-confidence first.
    batch_size : int, default=256
    device : str, default="auto"
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0

    Attributes
    ----------
    scores_ : ndarray of shape (n_samples,)
        Out-of-fold probability of the given label (self-confidence).
    label_issues_ : ndarray of bool
        cleanlab's verdict before the class guards and ``max_remove``.
    oof_proba_, oof_loss_, support_, sample_indices_, n_removed_, classes_, estimator_
    """

    def __init__(
        self,
        estimator=None,
        *,
        cv=5,
        alpha=1e-3,
        filter_by="prune_by_noise_rate",
        max_remove=None,
        batch_size=256,
        device="auto",
        random_state=None,
        verbose=0,
    ):
        self.estimator = estimator
        self.cv = cv
        self.alpha = alpha
        self.filter_by = filter_by
        self.max_remove = max_remove
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _compute_scores(self, X, y):
        try:
            from cleanlab.filter import find_label_issues
        except ImportError as exc:
            raise ImportError(
                "ConfidentLearningSelector needs cleanlab, an optional dependency: "
                'pip install "skitl[cleanlab]"'
            ) from exc
        res = self._oof(X, y)
        self.label_issues_ = np.asarray(
            find_label_issues(labels=y, pred_probs=res.oof_proba, filter_by=self.filter_by),
            dtype=bool,
        )
        return res.oof_proba[np.arange(len(y)), y]

    def _candidates(self, scores):
        return self.label_issues_

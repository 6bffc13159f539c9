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
import sys
import warnings
from abc import abstractmethod

import numpy as np
from sklearn.base import BaseEstimator, _fit_context
from sklearn.preprocessing import LabelEncoder
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from torch.utils.data import Subset

from ..utils import check_sample_domain, check_X, check_y, resolve_count, validate_X
from ._plan import make_plan

#: A class keeps at least this many samples whatever the scores say, so that
#: stratified splits and early-stopping validation still see every class.
MIN_SAMPLES_PER_CLASS = 2

#: ... and at least this fraction of its samples.
MIN_CLASS_FRACTION = 0.1

#: ``max_remove``: a count, a fraction of the training set, or None.
MAX_REMOVE = [
    None,
    Interval(numbers.Integral, 0, None, closed="left"),
    Interval(numbers.Real, 0, 1, closed="left"),
]


def _class_floor(count):
    return min(count, max(MIN_SAMPLES_PER_CLASS, int(np.ceil(MIN_CLASS_FRACTION * count))))


def removal_mask(scores, y, *, candidates, max_remove=None, class_floor=True):
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
    class_floor : bool, default=True
        Whether each class keeps its floor (below). ``False`` only for rules
        that keep every class by construction (e.g. target-only training).

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
    floor = {c: (_class_floor(k) if class_floor else 0) for c, k in left.items()}
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


class SupportMixin:
    """``get_support`` of an estimator that keeps rows (``support_`` and
    ``sample_indices_`` set by its ``fit``)."""

    def get_support(self, indices=False):
        """Mask or indices of the samples kept at the last fit.

        Parameters
        ----------
        indices : bool, default=False
            Return ascending integer indices instead of a boolean mask.

        Returns
        -------
        support : ndarray
            ``support_``, or ``sample_indices_`` when ``indices=True``.
        """
        check_is_fitted(self, "support_")
        return self.sample_indices_ if indices else self.support_


class BaseSelector(SupportMixin, BaseEstimator):
    """Base class of skitl selectors: scores, a removal rule, ``fit_resample``.

    Subclasses implement :meth:`_compute_scores` and may override
    :meth:`_check_plan`, :meth:`_candidates` and :meth:`_removal_count`;
    everything else (validation, the fit plan, the target set, the class
    guards, ``support_``, ``fit_resample``) is shared. Subclasses extend
    ``BaseSelector._parameter_constraints`` with their own parameters and
    list in ``_scoring_params`` the ones that change their scores (the
    allow-list the score cache is keyed by).

    Every selector takes the same target information in :meth:`fit`: a
    separate validation set ``X_val`` / ``y_val`` from the target
    distribution, and / or ``sample_domain`` (one integer per training
    sample: negative for the target domain, positive for source / auxiliary
    domains, skada's convention). With ``sample_domain`` only auxiliary
    samples are removal candidates unless ``remove_from="all"``.
    """

    # imbalanced-learn dispatches on this attribute.
    _sampling_type = "clean-sampling"

    _parameter_constraints = {
        "remove_from": [StrOptions({"auxiliary", "all"})],
    }

    #: Parameters that change the scores (not the removal rule, not plumbing).
    _scoring_params = ()

    #: Whether each class keeps its floor of samples whatever the rule says.
    _class_floor = True

    @abstractmethod
    def _compute_scores(self, plan, X, y, X_val, y_val):
        """Return an array of one score per sample (higher = keep)."""

    def _make_plan(self, y, y_val, target):
        """The fit plan (:class:`~skitl.selection._plan.FitPlan`); subclasses add
        derived settings and checks by overriding :meth:`_check_plan`."""
        plan = make_plan(self, y, y_val, target, **self._derived_settings(y_val, target))
        self._check_plan(plan, y, y_val)
        return plan

    def _derived_settings(self, y_val, target):
        """Settings derived from the parameters that change the scores."""
        return {}

    def _check_plan(self, plan, y, y_val):
        """Checks between parameters and the data, before any network is built."""

    def _candidates(self, scores):
        threshold = getattr(self, "threshold", None)
        if threshold is None:
            return np.ones(len(scores), dtype=bool)
        return scores < threshold

    def _removal_count(self, plan, scores, y, candidates):
        """The most samples the rule may remove (None: no cap)."""
        return resolve_count(getattr(self, "max_remove", None), len(y))

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y, X_val=None, y_val=None, *, sample_domain=None):
        """Score every sample of ``(X, y)`` and decide which to keep.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...) or torch Dataset
            Training inputs.
        y : array-like of shape (n_samples,)
            Training labels (any type).
        X_val : array-like or torch Dataset, default=None
            A validation set from the target distribution (assumed clean).
            What a selector does with it is described in its class
            documentation.
        y_val : array-like of shape (n_val,), default=None
            Its labels, all of them classes of ``y``.
        sample_domain : array-like of int of shape (n_samples,), default=None
            Domain of each training sample: negative for the target domain,
            positive for source / auxiliary domains (skada's convention).
            Requested through metadata routing (``set_fit_request``), so it
            passes through ``Pipeline`` and ``GridSearchCV``.

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
            return self._fit_and_select(X, y, X_val, y_val, sample_domain)
        except BaseException:
            for attr in list(vars(self)):
                if (attr.endswith("_") and not attr.startswith("__")) or attr == "_encoder":
                    delattr(self, attr)
            raise

    def _validate_inputs(self, X, y, X_val, y_val, sample_domain):
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y "
                "is None."
            )
        X = validate_X(self, X, reset=True)
        y = check_y(y, n_samples=len(X))
        self._encoder = LabelEncoder().fit(y)
        if len(self._encoder.classes_) < 2:
            raise ValueError(
                f"y has 1 class ({self._encoder.classes_.tolist()[0]!r}); a selector "
                "needs at least 2 classes."
            )
        self.classes_ = self._encoder.classes_
        y_enc = self._encoder.transform(y)
        if (X_val is None) != (y_val is None):
            raise ValueError("Pass both X_val and y_val, or neither.")
        if X_val is not None:
            X_val = check_X(X_val, name="X_val")
            y_val = check_y(y_val, name="y_val", n_samples=len(X_val))
            if isinstance(X, np.ndarray) and isinstance(X_val, np.ndarray) \
                    and X_val.shape[1:] != X.shape[1:]:
                raise ValueError(
                    f"X_val has per-sample shape {X_val.shape[1:]} but X has "
                    f"{X.shape[1:]}."
                )
            unseen = np.setdiff1d(np.unique(y_val), self.classes_)
            if len(unseen):
                raise ValueError(
                    f"y_val contains labels not present in y: {unseen.tolist()}."
                )
            y_val = self._encoder.transform(y_val)
        target = None
        if sample_domain is not None:
            _, target = check_sample_domain(sample_domain, len(y_enc))
        return X, y_enc, X_val, y_val, target

    def _fit_and_select(self, X, y, X_val, y_val, sample_domain):
        self._reset()
        X, y_enc, X_val, y_val, target = self._validate_inputs(
            X, y, X_val, y_val, sample_domain
        )
        plan = self._make_plan(y_enc, y_val, target)
        scores = np.asarray(self._compute_scores(plan, X, y_enc, X_val, y_val),
                            dtype=np.float64)
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
        if target is not None and getattr(self, "remove_from", "auxiliary") == "auxiliary":
            candidates &= ~target
        max_remove = self._removal_count(plan, scores, y_enc, candidates)
        remove, protected = removal_mask(
            scores, y_enc, candidates=candidates, max_remove=max_remove,
            class_floor=self._class_floor,
        )
        if protected:
            names = {self.classes_.tolist()[c]: k for c, k in protected.items()}
            warnings.warn(
                f"{type(self).__name__}: kept {sum(protected.values())} samples the "
                f"rule would remove, so that no class falls below its floor of "
                f"max({MIN_SAMPLES_PER_CLASS}, {MIN_CLASS_FRACTION:.0%}) samples "
                f"(kept per class: {names}).",
                UserWarning,
                stacklevel=3,
            )
        self.scores_ = scores
        self.support_ = ~remove
        self.sample_indices_ = np.flatnonzero(self.support_)
        self.n_removed_ = int(remove.sum())
        self.n_protected_ = int(sum(protected.values()))
        return self

    def _reset(self):
        for attr in [a for a in vars(self) if a.endswith("_") and not a.startswith("__")]:
            delattr(self, attr)

    def fit_resample(self, X, y, X_val=None, y_val=None, *, sample_domain=None):
        """Fit, then return the kept samples in their original order.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...) or torch Dataset
            Training inputs.
        y : array-like of shape (n_samples,)
            Training labels.
        X_val : array-like or torch Dataset, default=None
            Target validation set, see :meth:`fit`.
        y_val : array-like of shape (n_val,), default=None
            Its labels.
        sample_domain : array-like of int of shape (n_samples,), default=None
            Domain of each training sample, see :meth:`fit`.

        Returns
        -------
        X_kept : same type as X
            The kept rows (a ``torch.utils.data.Subset`` for a Dataset).
        y_kept : same type as y
            The kept labels.
        """
        self.fit(X, y, X_val, y_val, sample_domain=sample_domain)
        return _take(X, self.sample_indices_), _take(y, self.sample_indices_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.input_tags.allow_nan = False
        return _sampler_tags(tags)


def _sampler_tags(tags):
    """imbalanced-learn's sampler tags when it is in use, else scikit-learn's.

    imbalanced-learn (an optional dependency) reads its own tag classes for
    samplers: a selector declares itself a sampler that reports
    ``sample_indices_`` and accepts DataFrames. It is never imported from
    here: importing it changes scikit-learn's global list of metadata-routing
    methods, which breaks ``clone`` of estimators configured before.
    """
    if "imblearn" not in sys.modules:
        return tags
    from imblearn.utils._tags import InputTags, SamplerTags, Tags

    inputs = InputTags(
        **{f: getattr(tags.input_tags, f) for f in tags.input_tags.__slots__
           if hasattr(tags.input_tags, f)}
    )
    inputs.dataframe = True
    out = Tags(
        estimator_type="sampler",
        target_tags=tags.target_tags,
        transformer_tags=None,
        classifier_tags=None,
        regressor_tags=None,
        sampler_tags=SamplerTags(sample_indices=True),
    )
    for name in ("array_api_support", "no_validation", "non_deterministic",
                 "requires_fit", "_skip_test"):
        setattr(out, name, getattr(tags, name))
    out.input_tags = inputs
    return out


def _take(data, idx):
    if hasattr(data, "iloc"):
        return data.iloc[idx]
    if isinstance(data, np.ndarray):
        return data[idx]
    import torch

    if isinstance(data, torch.Tensor):
        return data[torch.as_tensor(idx, dtype=torch.long)]
    if isinstance(data, torch.utils.data.Dataset):
        return Subset(data, idx.tolist())
    if isinstance(data, list):
        return [data[i] for i in idx]
    return np.asarray(data)[idx]

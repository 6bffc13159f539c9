"""skitl selectors as steps of skada's domain-adaptation pipelines.

`skada <https://scikit-adaptation.github.io/>`_ (scikit-adaptation) chains
domain-adaptation steps with ``skada.make_da_pipeline``. A skitl selector has
``fit_resample`` and no ``transform``, so it cannot be such a step itself;
:class:`SelectorAdapter` makes it one, the way skada's own sub-sampling steps
(``skada.Subsampler``) work: at ``fit`` its ``fit_transform`` returns the kept
rows with their labels and per-sample metadata (``sample_domain``,
``sample_weight``, ``target_labels``), and the steps after it, the estimator
included, train on those rows only; at ``predict`` its ``transform`` passes
every row through unchanged.

skada hides the target labels from the steps of a pipeline: by default
(``mask_target_labels=True``) it overwrites them with ``-1`` before a step
sees ``y``. The adapter therefore takes the target labels as separately
routed metadata, ``target_labels`` -- the full-length array of true labels
that skada's ``SupervisedScorer`` reads::

    pipe = make_da_pipeline(SelectorAdapter(InfluenceSampleSelector()),
                            LogisticRegression())
    pipe.fit(X, y_masked, sample_domain=sample_domain, target_labels=y_true)

skada is imported only by :func:`make_selection_pipeline`; importing this
module, and the adapter itself, need nothing beyond skitl.
"""

import importlib
import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.utils._param_validation import HasMethods
from sklearn.utils.validation import check_consistent_length, check_is_fitted

from .selection import InfluenceSampleSelector
from .selection._base import SupportMixin, _class_floor, _take

__all__ = ["SelectorAdapter", "make_selection_pipeline"]

#: skada's placeholder for a hidden (masked) classification label.
_MASKED_LABEL = -1

_INSTALL = 'pip install "skitl[skada]"'


def _import_skada():
    """skada, or an ImportError that says how to install it."""
    try:
        return importlib.import_module("skada")
    except ImportError as exc:
        raise ImportError(
            "skitl.skada needs skada (scikit-adaptation), which is not installed; "
            f"install it with: {_INSTALL}"
        ) from exc


def _masked(y):
    """Boolean mask of the labels skada has hidden (``-1``, or NaN for floats)."""
    y = np.asarray(y)
    if y.dtype.kind in "iu":
        return y == _MASKED_LABEL
    if y.dtype.kind == "f":
        return np.isnan(y) | (y == _MASKED_LABEL)
    if y.dtype.kind == "O":
        return np.fromiter((isinstance(v, numbers.Real) and v == _MASKED_LABEL for v in y),
                           dtype=bool, count=len(y))
    return np.zeros(len(y), dtype=bool)


def _column(values, name, n_samples):
    """A per-sample metadata array as a 1-D ndarray (a scalar is broadcast)."""
    if values is None:
        return None
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = np.full(n_samples, arr.item())
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}.")
    return arr


class SelectorAdapter(SupportMixin, BaseEstimator):
    """Make a skitl selector a step of ``skada.make_da_pipeline``.

    At ``fit`` (skada calls ``fit_transform``), a clone of ``selector`` is
    fitted on the rows the step receives, with their ``sample_domain`` and
    with the target labels, and the step returns only the rows it keeps --
    features, labels and per-sample metadata -- so that every later step,
    and the pipeline's estimator, trains on them. This is how skada's own
    ``Subsampler`` drops rows. At ``predict`` / ``score``, ``transform``
    returns its input unchanged: selection is a training-time decision.

    **Target labels.** skada masks the labels of the target rows
    (``sample_domain < 0``) with ``-1`` before any step sees ``y``
    (``make_da_pipeline(..., mask_target_labels=True)``, the default). The
    adapter takes them as separately routed metadata, ``target_labels``: a
    full-length array of true labels (its source entries are not used), the
    array skada's ``SupervisedScorer`` reads to score the target. It is
    requested by default, so ``pipe.fit(X, y, sample_domain=...,
    target_labels=y_true)`` and ``GridSearchCV(...).fit(X, y,
    sample_domain=..., target_labels=y_true)`` route it (and split it with
    ``X``). The selector sees ``y`` with the target entries taken from
    ``target_labels``; target labels that are not masked (a pipeline built
    with ``mask_target_labels=False``) are used as they are.

    **What trains the estimator.** skada drops the rows whose label is
    masked before an estimator that does not take ``sample_domain`` (any
    scikit-learn classifier). By default (``train_on_target=False``) the
    adapter passes the labels on as it received them, so under masking the
    estimator trains on the source rows the selector kept, and the target
    rows only judge. With ``train_on_target=True`` the kept target rows go
    on with their labels from ``target_labels``, and the estimator trains on
    them too (skitl's setting: fine-tune on the target and the auxiliary
    rows kept).

    **Class floor.** A skitl selector never lets a class drop below
    ``max(2, ceil(0.1 n_class))`` samples, counted on every row it sees. The
    adapter counts that floor again on the rows that stay in training (the
    kept rows whose label is not masked) and, where a class falls below it,
    puts back the removed rows of that class with the highest scores, with a
    ``UserWarning``; so the estimator sees every class that had training
    rows, and fewer rows than the selector chose may be removed. Selectors
    without a floor (``TargetOnlySelector``, samplers wrapped in
    ``TargetAgnostic``) are left as they are.

    Parameters
    ----------
    selector : skitl selector, default=None
        The selector (``InfluenceSampleSelector``, ``DomainClassifierSelector``,
        ``LossSelector``, ``RandomSelector``, ...), cloned for every fit; any
        object with ``fit(X, y, *, sample_domain=None)`` that sets
        ``sample_indices_`` (each row kept at most once). ``None`` uses
        ``InfluenceSampleSelector()`` on ``X`` as features. Its parameters
        are searchable as ``<step name>__selector__<parameter>``.
    train_on_target : bool, default=False
        Whether the kept target rows go on to the estimator labelled with
        ``target_labels`` (``True``), or with the labels the step received
        (``False``: masked under skada's default, so skada drops them before
        the estimator).

    Attributes
    ----------
    selector_ : object
        The fitted clone of ``selector``.
    support_ : ndarray of bool, shape (n_samples,)
        Rows kept (after the class floor below).
    sample_indices_ : ndarray of int
        Indices of the kept rows, ascending: the rows the step returns.
    n_removed_ : int
        Number of rows removed.
    n_restored_ : int
        Rows the selector removed and the adapter put back so that no class
        of the training rows falls below its floor.
    n_train_ : int
        Kept rows whose label is not masked: the rows an estimator without
        ``sample_domain`` trains on.

    See Also
    --------
    make_selection_pipeline : ``skada.make_da_pipeline`` with the adapter as
        its first step.

    Notes
    -----
    skada's ``make_da_pipeline`` wraps the adapter in ``skada.Shared``, which
    masks the target labels by writing ``-1`` into the ``y`` the pipeline's
    ``fit`` receives, in place. Pass ``y`` already masked (as
    ``skada.datasets.DomainAwareDataset.pack(..., mask_target_labels=True)``
    returns it) or a copy, and never the same array object as
    ``target_labels`` (the adapter raises when it finds ``target_labels``
    masked). In a search, do not rely on ``make_da_pipeline(...,
    mask_target_labels=False)``: ``skada.Shared.get_params`` leaves that
    setting out, so every clone masks again; route ``target_labels`` and set
    ``train_on_target`` instead.

    Examples
    --------
    >>> import numpy as np
    >>> from skitl.selection import DomainClassifierSelector
    >>> from skitl.skada import SelectorAdapter
    >>> rng = np.random.RandomState(0)
    >>> X = np.r_[rng.randn(40, 2), rng.randn(40, 2) + 1]
    >>> y_true = np.tile([0, 1], 40)
    >>> sample_domain = np.r_[np.full(40, -2), np.full(40, 1)]
    >>> y = np.where(sample_domain < 0, -1, y_true)  # skada's masked labels
    >>> step = SelectorAdapter(DomainClassifierSelector(max_remove=10, random_state=0))
    >>> X_kept, y_kept, params = step.fit_transform(
    ...     X, y, sample_domain=sample_domain, target_labels=y_true)
    >>> step.n_removed_, len(X_kept)
    (10, 70)
    >>> sorted(params)
    ['sample_domain', 'target_labels']
    """

    __metadata_request__fit = {"sample_domain": True, "target_labels": True,
                               "sample_weight": True}
    __metadata_request__transform = {"sample_domain": True, "allow_source": True}

    _parameter_constraints = {
        "selector": [None, HasMethods(["fit"])],
        "train_on_target": ["boolean"],
    }

    def __init__(self, selector=None, *, train_on_target=False):
        self.selector = selector
        self.train_on_target = train_on_target

    def fit(self, X, y=None, *, sample_domain=None, sample_weight=None,
            target_labels=None):
        """Fit the selector and decide which rows to keep (see :meth:`fit_transform`).

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Training inputs (features, or images for a selector with a
            network).
        y : array-like of shape (n_samples,)
            Labels, target entries possibly masked (``-1``) by skada.
        sample_domain : array-like of int of shape (n_samples,), default=None
            Domain of each row: negative for target, positive for source
            (skada's convention). ``None``: the masked rows of ``y`` are the
            target, as skada infers it; no masked row means no domain.
        sample_weight : array-like of shape (n_samples,), default=None
            Passed on for the kept rows; it does not change the selection.
        target_labels : array-like of shape (n_samples,), default=None
            True labels; the entries of the target rows are read.

        Returns
        -------
        self : SelectorAdapter
            The fitted adapter.
        """
        self.fit_transform(X, y, sample_domain=sample_domain,
                           sample_weight=sample_weight, target_labels=target_labels)
        return self

    def fit_transform(self, X, y=None, *, sample_domain=None, sample_weight=None,
                      target_labels=None):
        """Fit the selector and return the kept rows, skada-style.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Training inputs (features, or images for a selector with a
            network).
        y : array-like of shape (n_samples,)
            Labels, target entries possibly masked (``-1``) by skada.
        sample_domain : array-like of int of shape (n_samples,), default=None
            Domain of each row: negative for target, positive for source
            (skada's convention). ``None``: the masked rows of ``y`` are the
            target, as skada infers it; no masked row means no domain.
        sample_weight : array-like of shape (n_samples,), default=None
            Passed on for the kept rows; it does not change the selection.
        target_labels : array-like of shape (n_samples,), default=None
            True labels; the entries of the target rows are read. Required
            when the target rows of ``y`` are masked.

        Returns
        -------
        X_kept : array-like
            The kept rows of ``X``, in their original order.
        y_kept : ndarray
            Their labels: as received, or from ``target_labels`` for the
            target rows when ``train_on_target=True``.
        params : dict
            ``sample_domain``, ``sample_weight`` and ``target_labels`` of the
            kept rows (those that were given or inferred), which skada hands
            to the later steps.
        """
        self._validate_params()
        for attr in [a for a in vars(self) if a.endswith("_") and not a.startswith("_")]:
            delattr(self, attr)
        if y is None:
            raise ValueError("SelectorAdapter requires y (the labels, target entries "
                             "possibly masked).")
        y = np.asarray(y)
        n = len(y)
        check_consistent_length(X, y)
        sample_domain = _column(sample_domain, "sample_domain", n)
        sample_weight = _column(sample_weight, "sample_weight", n)
        target_labels = _column(target_labels, "target_labels", n)
        check_consistent_length(y, *(a for a in (sample_domain, sample_weight,
                                                 target_labels) if a is not None))
        masked = _masked(y)
        if sample_domain is None and masked.any():
            # skada's inference: masked rows are the target (-2), the rest source (1)
            sample_domain = np.where(masked, -2, 1)
        target = (np.zeros(n, dtype=bool) if sample_domain is None
                  else np.asarray(sample_domain) < 0)

        y_sel = self._selector_labels(y, masked, target, target_labels)
        selector = InfluenceSampleSelector() if self.selector is None else self.selector
        self.selector_ = clone(selector)
        if sample_domain is None:
            self.selector_.fit(X, y_sel)
        else:
            self.selector_.fit(X, y_sel, sample_domain=sample_domain)
        support = self._support(n)

        y_out = y_sel if self.train_on_target else y
        train = ~_masked(y_out)
        self.n_restored_ = 0
        if getattr(self.selector_, "_class_floor", False):
            support = self._apply_floor(support, y_out, train)
        if not (support & train).any():
            raise ValueError(
                f"{type(selector).__name__} kept no row with an unmasked label, so "
                "skada leaves the estimator nothing to train on (it drops the rows "
                "whose label is masked). Set train_on_target=True to train on the "
                "kept target rows with their target_labels.")
        self.support_ = support
        self.sample_indices_ = np.flatnonzero(support)
        self.n_removed_ = int(n - support.sum())
        self.n_train_ = int((support & train).sum())

        idx = self.sample_indices_
        params = {name: value[idx] for name, value in (
            ("sample_domain", sample_domain), ("sample_weight", sample_weight),
            ("target_labels", target_labels)) if value is not None}
        return _take(X, idx), y_out[idx], params

    def transform(self, X, y=None, *, sample_domain=None, allow_source=False):
        """Return ``X`` unchanged: selection applies to training only.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Inputs to predict or score.
        y : array-like of shape (n_samples,), default=None
            Ignored.
        sample_domain : array-like of int of shape (n_samples,), default=None
            Ignored (accepted because skada routes it to every step).
        allow_source : bool, default=False
            Ignored (accepted because skada routes it to every step).

        Returns
        -------
        X : array-like
            The input itself.
        """
        check_is_fitted(self, "support_")
        return X

    def _selector_labels(self, y, masked, target, target_labels):
        """``y`` with the target entries taken from ``target_labels``."""
        if target_labels is None:
            hidden = masked & target
            if hidden.any():
                raise ValueError(
                    f"{int(hidden.sum())} target rows (sample_domain < 0) arrive with "
                    f"masked labels ({_MASKED_LABEL}): skada's make_da_pipeline hides "
                    "them before a step sees y (mask_target_labels=True, its default, "
                    "which GridSearchCV's clone restores even when the pipeline was "
                    "built with False). Pass the true labels as metadata: "
                    "fit(X, y, sample_domain=..., target_labels=y_true), the array "
                    "skada's SupervisedScorer reads.")
            if masked.any():
                raise ValueError(
                    f"{int(masked.sum())} source rows have the masked label "
                    f"{_MASKED_LABEL}; source rows need their labels.")
            return y
        bad = target & _masked(target_labels)
        if bad.any():
            raise ValueError(
                f"target_labels holds the masked label {_MASKED_LABEL} on "
                f"{int(bad.sum())} of the {int(target.sum())} target rows. If it is the "
                "same array as the y given to the pipeline, skada overwrote its target "
                "entries in place (skada.Shared masks y in place); pass a separate "
                "array of true labels (target_labels=y_true.copy()).")
        if (masked & ~target).any():
            raise ValueError(
                f"{int((masked & ~target).sum())} source rows have the masked label "
                f"{_MASKED_LABEL}; source rows need their labels.")
        dtype = np.result_type(y.dtype, target_labels.dtype)
        y_sel = y.astype(dtype, copy=True)
        y_sel[target] = target_labels[target]
        return y_sel

    def _support(self, n):
        """The selector's kept rows as a boolean mask."""
        support = getattr(self.selector_, "support_", None)
        if support is not None:
            return np.asarray(support, dtype=bool).copy()
        idx = getattr(self.selector_, "sample_indices_", None)
        if idx is None:
            raise TypeError(
                f"{type(self.selector_).__name__} set no sample_indices_ in fit; "
                "SelectorAdapter needs a selector that reports the rows it keeps.")
        idx = np.asarray(idx)
        if len(np.unique(idx)) != len(idx):
            raise ValueError(
                f"{type(self.selector_).__name__} kept some rows more than once "
                "(an over-sampler); SelectorAdapter takes selections only.")
        support = np.zeros(n, dtype=bool)
        support[idx] = True
        return support

    def _apply_floor(self, support, y_out, train):
        """Put back removed training rows of classes below their floor."""
        scores = getattr(self.selector_, "scores_", None)
        n = len(support)
        scores = np.zeros(n) if scores is None else np.asarray(scores, dtype=float)
        restored = {}
        labels = y_out[train]
        for label in np.unique(labels):
            in_class = train & (y_out == label)
            floor = _class_floor(int(in_class.sum()))
            missing = floor - int((support & in_class).sum())
            if missing <= 0:
                continue
            removed = np.flatnonzero(in_class & ~support)
            # the selector removes lowest scores first (ties by index): undo the
            # last removals first
            order = removed[np.lexsort((removed, scores[removed]))][::-1]
            support[order[:missing]] = True
            restored[label.item() if isinstance(label, np.generic) else label] = missing
        if restored:
            self.n_restored_ = int(sum(restored.values()))
            warnings.warn(
                f"SelectorAdapter: put back {self.n_restored_} rows the "
                f"{type(self.selector_).__name__} removed, so that no class of the rows "
                "that stay in training (unmasked labels) falls below its floor of "
                f"max(2, 10%) samples (put back per class: {restored}).",
                UserWarning, stacklevel=3)
        return support


def make_selection_pipeline(selector, *steps, train_on_target=False, memory=None,
                            verbose=False):
    """``skada.make_da_pipeline`` with a skitl selector as its first step.

    Shorthand for ``make_da_pipeline(SelectorAdapter(selector,
    train_on_target=train_on_target), *steps, memory=memory,
    verbose=verbose)``; the adapter's step is named ``"selectoradapter"``,
    so the selector's parameters are ``selectoradapter__selector__<name>``.

    Parameters
    ----------
    selector : skitl selector or None
        The selector (see :class:`SelectorAdapter`).
    *steps : estimators
        The steps after it, the last one the estimator (skada wraps each in
        ``skada.Shared`` unless it is a skada selector already).
    train_on_target : bool, default=False
        Whether the kept target rows train the estimator, labelled with the
        routed ``target_labels`` (see :class:`SelectorAdapter`).
    memory : str or object with the joblib.Memory interface, default=None
        Caches the fitted transformers, as in ``make_da_pipeline``.
    verbose : bool, default=False
        Print the time each step takes to fit.

    Returns
    -------
    pipeline : sklearn.pipeline.Pipeline
        The domain-adaptation pipeline.

    Raises
    ------
    ImportError
        When skada is not installed.
    """
    if not steps:
        raise TypeError("make_selection_pipeline needs at least one step after the "
                        "selector (the estimator).")
    skada = _import_skada()
    return skada.make_da_pipeline(
        SelectorAdapter(selector, train_on_target=train_on_target), *steps,
        memory=memory, verbose=verbose)

"""Cross-validation that tests on the target and trains on everything else."""

import numbers

import numpy as np
from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit
from sklearn.model_selection._split import _build_repr
from sklearn.utils import check_random_state
from sklearn.utils.metadata_routing import _MetadataRequester
from sklearn.utils.validation import _num_samples, check_consistent_length, column_or_1d

from ..utils import check_sample_domain


def _target_labels(y, sample_domain, n_splits, name):
    """The target rows and their labels; errors that name the problem."""
    if sample_domain is None:
        raise ValueError(
            f"{name}.split needs sample_domain (negative = target): pass it to "
            "split, or route it through a search with "
            "sklearn.set_config(enable_metadata_routing=True) and "
            "search.fit(X, y, sample_domain=...).")
    if y is None:
        raise ValueError(f"{name} stratifies the target folds by class and needs y.")
    y = column_or_1d(y)
    check_consistent_length(y, sample_domain)
    _, target = check_sample_domain(sample_domain, len(y), require_auxiliary=False)
    rows = np.flatnonzero(target)
    classes, counts = np.unique(y[rows], return_counts=True)
    short = counts < n_splits
    if short.any():
        c = classes[short][np.argmin(counts[short])].item()
        raise ValueError(
            f"{name}(n_splits={n_splits}): class {c!r} has "
            f"{int(counts[classes == c][0])} target sample(s), fewer than n_splits; "
            "every test fold must hold every class of the target. Lower n_splits "
            f"or mark more target samples (a class held only by auxiliary samples "
            "is never tested).")
    return rows, y[rows]


def _complement(n, test):
    keep = np.ones(n, dtype=bool)
    keep[test] = False
    return np.flatnonzero(keep)


class _TargetSplitter(_MetadataRequester):
    # sample_domain is requested by default: a search routes it to split
    __metadata_request__split = {"sample_domain": True}

    def __repr__(self):
        return _build_repr(self)

    def get_n_splits(self, X=None, y=None, groups=None, *, sample_domain=None):
        """The number of splits.

        Parameters
        ----------
        X, y, groups : object
            Ignored, for compatibility.
        sample_domain : object
            Ignored, for compatibility.

        Returns
        -------
        n_splits : int
        """
        return self.n_splits

    def split(self, X, y=None, groups=None, *, sample_domain=None):
        """Training and test indices: test folds of target samples only.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Only its length is used.
        y : array-like of shape (n_samples,)
            Labels; the target folds are stratified by them.
        groups : object
            Ignored, for compatibility.
        sample_domain : array-like of int of shape (n_samples,)
            Negative = target, positive = auxiliary (skada's convention);
            routed by a search when metadata routing is enabled.

        Yields
        ------
        train : ndarray of int
            Every auxiliary sample and the target samples of the other folds.
        test : ndarray of int
            The target samples of this fold.
        """
        rows, y_t = _target_labels(y, sample_domain, self._min_per_class(),
                                   type(self).__name__)
        n = _num_samples(X)
        check_consistent_length(np.empty(n), y)
        for _, test in self._inner().split(np.zeros(len(rows)), y_t):
            test = rows[test]
            yield _complement(n, test), test


class TargetStratifiedKFold(_TargetSplitter):
    """K folds of the target samples as test sets; every auxiliary sample trains.

    For a pool that mixes target samples (``sample_domain < 0``) with
    auxiliary ones (``> 0``), a search must judge each candidate on the
    target only, and every candidate must see all the auxiliary data it may
    select from. Each test fold is a stratified fold of the target samples;
    its training set is everything else (all auxiliary samples and the other
    target folds). Score the search with
    :func:`skitl.metrics.make_target_scorer`.

    ``sample_domain`` is requested by default (like skada's splitters): with
    ``sklearn.set_config(enable_metadata_routing=True)`` a ``GridSearchCV``
    routes it from its ``fit`` to ``split``. Without routing, pass the splits
    themselves: ``cv=list(splitter.split(X, y, sample_domain=sd))``.

    When the target is a separate set ``X_val`` rather than part of the pool,
    put it into the pool first with :func:`stack_target`.

    Parameters
    ----------
    n_splits : int, default=5
        Number of folds (at least 2). Every class of the target needs at
        least this many target samples.
    shuffle : bool, default=False
        Shuffle each class's target samples before splitting.
    random_state : int, RandomState instance or None, default=None
        Seeds the shuffling (only with ``shuffle=True``).

    See Also
    --------
    TargetStratifiedShuffleSplit : random target test sets, repeated.
    skitl.metrics.make_target_scorer : scores a search on the target only.

    Examples
    --------
    >>> import numpy as np
    >>> from skitl.model_selection import TargetStratifiedKFold
    >>> y = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    >>> sd = np.array([-1, -1, -1, -1, 1, 1, 1, 1])
    >>> for train, test in TargetStratifiedKFold(2).split(y, y, sample_domain=sd):
    ...     print(train, test)
    [2 3 4 5 6 7] [0 1]
    [0 1 4 5 6 7] [2 3]
    """

    def __init__(self, n_splits=5, *, shuffle=False, random_state=None):
        self.n_splits = n_splits
        self.shuffle = shuffle
        self.random_state = random_state

    def _min_per_class(self):
        if not isinstance(self.n_splits, numbers.Integral) or self.n_splits < 2:
            raise ValueError(f"n_splits must be an int >= 2, got {self.n_splits!r}.")
        return self.n_splits

    def _inner(self):
        return StratifiedKFold(self.n_splits, shuffle=self.shuffle,
                               random_state=self.random_state if self.shuffle else None)


class TargetStratifiedShuffleSplit(_TargetSplitter):
    """Random stratified target test sets, repeated; every auxiliary sample trains.

    Like :class:`TargetStratifiedKFold`, but each split draws its own
    stratified test set of target samples (``test_size`` of them), so the
    number of splits is free: with a small target, more splits average out
    more of the fold-to-fold noise.

    Parameters
    ----------
    n_splits : int, default=10
        Number of splits.
    test_size : float or int, default=0.2
        Fraction (or number) of the target samples in each test set; at
        least one per class.
    random_state : int, RandomState instance or None, default=None
        Seeds the draws.

    See Also
    --------
    TargetStratifiedKFold : each target sample tested once.
    """

    def __init__(self, n_splits=10, *, test_size=0.2, random_state=None):
        self.n_splits = n_splits
        self.test_size = test_size
        self.random_state = random_state

    def _min_per_class(self):
        if not isinstance(self.n_splits, numbers.Integral) or self.n_splits < 1:
            raise ValueError(f"n_splits must be an int >= 1, got {self.n_splits!r}.")
        return 2  # one target sample of each class to test, one to train

    def _inner(self):
        return StratifiedShuffleSplit(self.n_splits, test_size=self.test_size,
                                      random_state=check_random_state(self.random_state))


def stack_target(X, y, X_val, y_val, *, sample_domain=None):
    """Put a separate target set into the pool, marked as target.

    A search splits only what it is fitted on; to judge candidates on a
    target set given as ``X_val``, stack it into the pool and mark it with
    ``sample_domain`` (its rows ``-1``). With
    ``InfluenceSampleSelector(target_validation="whole")`` the scores on the
    stacked pool are those of ``fit(X, y, X_val=..., y_val=...)``: the head
    is fitted on the auxiliary part and validated on the whole target.

    Parameters
    ----------
    X : ndarray of shape (n, ...)
        The pool.
    y : array-like of shape (n,)
        Its labels.
    X_val : ndarray of shape (m, ...)
        The target set.
    y_val : array-like of shape (m,)
        Its labels.
    sample_domain : array-like of int of shape (n,), default=None
        Domains of the pool's samples (negative ones stay target);
        ``None``: every pool sample is auxiliary (``1``).

    Returns
    -------
    X_all : ndarray of shape (n + m, ...)
    y_all : ndarray of shape (n + m,)
    sample_domain_all : ndarray of int64 of shape (n + m,)
        The pool's domains, then ``-1`` for the target set.
    """
    X, X_val = np.asarray(X), np.asarray(X_val)
    y, y_val = column_or_1d(y), column_or_1d(y_val)
    check_consistent_length(X, y)
    check_consistent_length(X_val, y_val)
    if X.shape[1:] != X_val.shape[1:]:
        raise ValueError(f"X_val has per-sample shape {X_val.shape[1:]} but X has "
                         f"{X.shape[1:]}.")
    if len(y) == 0 or len(y_val) == 0:
        raise ValueError(f"X has {len(y)} and X_val {len(y_val)} samples; both need some.")
    sd = (np.ones(len(y), dtype=np.int64) if sample_domain is None
          else column_or_1d(sample_domain))
    check_consistent_length(y, sd)
    # validated with the target rows appended (integers, no 0)
    sd_all, _ = check_sample_domain(
        np.concatenate([sd, np.full(len(y_val), -1)]), len(y) + len(y_val),
        require_auxiliary=False)
    return np.concatenate([X, X_val]), np.concatenate([y, y_val]), sd_all

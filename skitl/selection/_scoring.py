"""Shared machinery of the selectors that score through a pretrained network.

:class:`FeatureSelector` builds the network (by asking its ``estimator``),
computes head features once, caches the scores with ``memory``, and resolves
``max_remove="auto"`` from the target loss of refitted heads.
"""

import contextlib
import numbers
import os
import tempfile

import numpy as np
import torch
from sklearn.base import clone
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions

from ..utils import flush_denormal, resolve_count
from ._amount import EvalFold, choose_removal_count
from ._base import MAX_REMOVE, BaseSelector, check_cv_classes
from ._features import (
    cached_scores,
    compute_features,
    cross_fit_folds,
    pretrained_network,
    val_folds,
)


class FeatureSelector(BaseSelector):
    """Base of the selectors that score head features of a pretrained network.

    Subclasses implement ``_score(net, head_name, X, y, X_val, y_val,
    is_target)`` returning ``(scores, info, auto)``: ``info`` becomes a
    fitted attribute, ``auto`` is ``None`` or ``(F, folds)`` for
    ``max_remove="auto"`` (the features of every training sample and the
    :class:`~skitl.selection._amount.EvalFold` list).
    """

    _parameter_constraints = {
        **BaseSelector._parameter_constraints,
        "estimator": [None, HasMethods(["_pretrained_network"])],
        "alpha": [Interval(numbers.Real, 0, None, closed="left")],
        "cv": [Interval(numbers.Integral, 2, None, closed="left")],
        "max_remove": [*MAX_REMOVE, StrOptions({"auto"})],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "memory": [None, str, HasMethods(["cache"])],
        "feature_dir": [None, "boolean", str],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def _network(self):
        net, head_name = pretrained_network(self.estimator)
        self.estimator_ = None if self.estimator is None else clone(self.estimator)
        return net, head_name

    def _features(self, net, head_name, X):
        return compute_features(
            net, head_name, X, batch_size=self.batch_size, device=self.device,
            verbose=self.verbose, out=getattr(self, "_feature_path", None),
        )

    @contextlib.contextmanager
    def _feature_store(self):
        """Where the features of this fit live: memory, or memmaps on disk.

        ``feature_dir=True`` uses a temporary directory, a string a directory
        of the user's (a private subdirectory is created in it); either way
        the files are removed when ``fit`` ends.
        """
        if self.feature_dir is None or self.feature_dir is False:
            yield
            return
        parent = None if self.feature_dir is True else os.fspath(self.feature_dir)
        if parent is not None:
            os.makedirs(parent, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="skitl-features-", dir=parent) as path:
            self._feature_path = path
            try:
                yield
            finally:
                del self._feature_path

    def _compute_scores(self, X, y, X_val, y_val, is_target):
        self._check_folds(y, y_val, is_target)
        net, head_name = self._network()
        # subnormal activations of small pretrained CNNs slow the CPU ~20x
        with flush_denormal():
            scores, info, auto = cached_scores(self, net, head_name, X, y, X_val, y_val,
                                               is_target)
        self._auto = auto
        self._store(info)
        return scores

    def _store(self, info):
        """Set the fitted attributes the scoring step reported."""
        for name, value in info.items():
            setattr(self, name, value)

    def _check_folds(self, y, y_val, is_target):
        """Every class to be split into ``cv`` folds has ``cv`` samples.

        Here: the pool is cross-fitted when no ``X_val`` is given, and the
        target samples are split to judge ``max_remove="auto"``.
        """
        if y_val is not None:
            return
        check_cv_classes(y, self.cv, self.classes_, hint="lower cv or pass X_val / y_val")
        if is_target is not None and isinstance(self.max_remove, str):
            _check_target_classes(y, is_target, self.cv, self.classes_)

    def _auto_with_fixed_order(self, F, y, F_val, y_val, is_target, scores):
        """``max_remove="auto"`` material for scores that do not depend on a fold.

        The candidates are ordered by ``scores`` in every fold; the folds are
        those of the validation set, the target samples or the pool.
        """
        if not isinstance(self.max_remove, str):
            return None
        if F_val is not None:
            folds = val_folds(y_val, self.cv, self.random_state)
            return F, fold_evals(F, y, folds, [scores] * len(folds), F_val=F_val,
                                 y_val=y_val)
        folds = cross_fit_folds(y, self.cv, self.random_state, is_target)
        return F, fold_evals(F, y, folds, [scores] * len(folds))

    def _removal_count(self, scores, y, candidates):
        if not (isinstance(self.max_remove, str) and self.max_remove == "auto"):
            return resolve_count(self.max_remove, len(y))
        if self._auto is None:
            raise ValueError(
                f"{type(self).__name__}(max_remove='auto') needs the target loss of "
                "refitted heads, which this configuration does not provide."
            )
        F, folds = self._auto
        count, search = choose_removal_count(
            F, y, len(self.classes_), candidates, folds, alpha=self.alpha
        )
        self.removal_search_ = search
        return count

    def _fit_and_select(self, *args):
        try:
            with self._feature_store():
                return super()._fit_and_select(*args)
        finally:
            # the cached features are needed during fit only
            self._auto = None


def fold_evals(F, y, folds, order_scores, weights=None, F_val=None, y_val=None):
    """:class:`EvalFold` objects for cross-fitted folds or validation folds.

    Parameters
    ----------
    F : ndarray of shape (n, d)
        Training features.
    y : ndarray of int of shape (n,)
    folds : list of (ndarray, ndarray)
        ``(train_idx, eval_idx)``: into the training set, or, with ``F_val``,
        ``(rest_idx, fold_idx)`` into the validation set (the head is then
        fitted on all training samples).
    order_scores : list of ndarray
        Per fold, scores of every training sample computed without the fold.
    weights : list of ndarray, optional
        Per fold, weights of the held-out samples.
    F_val, y_val : ndarray, optional
        A user-given validation set.

    Returns
    -------
    evals : list of EvalFold
    """
    out = []
    every = np.arange(len(y))
    for f, (a, b) in enumerate(folds):
        w = None if weights is None else weights[f]
        if F_val is None:
            out.append(EvalFold(a, F[b], y[b], w, order_scores[f]))
        else:
            out.append(EvalFold(every, F_val[b], y_val[b], w, order_scores[f]))
    return out


def _check_target_classes(y, is_target, cv, classes):
    # A class with no target sample has no target loss to judge its samples by:
    # every auxiliary sample of it would look harmful.
    missing = np.setdiff1d(np.unique(y), np.unique(y[is_target]))
    if len(missing):
        raise ValueError(
            f"Class(es) {classes[missing].tolist()} have no target sample "
            "(sample_domain < 0), so the target cannot judge their samples; mark "
            "target samples of every class, or pass X_val, y_val covering them."
        )
    check_cv_classes(y[is_target], cv, classes,
                     where=" among the target samples (sample_domain < 0)",
                     hint="lower cv, or mark more target samples")

"""Shared machinery of the selectors that score through a pretrained network.

:class:`FeatureSelector` builds the network (by asking its ``estimator``),
runs the scoring step through the score cache (``memory``), and resolves
``max_remove="auto"`` from the target loss of refitted heads on the held-out
folds the scoring step returned.
"""

import contextlib
import dataclasses
import numbers
import os
import tempfile

import numpy as np
import torch
from sklearn.base import clone
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions

from ..influence._crossfit import make_folds
from ..influence._results import EvalFolds
from ..utils import flush_denormal, resolve_count
from ._amount import EvalFold, choose_removal_count
from ._base import MAX_REMOVE, BaseSelector
from ._features import cached_scores, compute_features, pretrained_network
from ._plan import check_target_classes, warn_small_folds


@dataclasses.dataclass
class Scored:
    """What a selector's scoring step returns (and the score cache stores).

    Attributes
    ----------
    scores : ndarray of shape (n,)
        One score per training sample (higher = keep).
    attrs : dict
        Fitted attributes to set (``influence_``, ``network_``, ...).
    F, F_val : array-like or None
        Head features of the training and validation samples.
    eval_folds : EvalFolds or None
        Held-out target folds for ``max_remove="auto"``.
    """

    scores: np.ndarray
    attrs: dict
    F: object = None
    F_val: object = None
    eval_folds: EvalFolds = None


class FeatureSelector(BaseSelector):
    """Base of the selectors that score head features of a pretrained network.

    Subclasses implement ``_score(plan, net, head_name, X, y, X_val, y_val)``
    returning a :class:`Scored`.
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

    _scoring_params = ("alpha", "cv", "random_state")

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

    def _check_plan(self, plan, y, y_val):
        """Checks of the held-out folds that judge ``max_remove="auto"``.

        Folds are made over ``X_val`` or over the target samples; a class
        with fewer samples than ``cv`` gets fewer folds, with a warning,
        instead of an error; a class without any target sample is an error
        (the target cannot judge it). Subclasses add the checks of their
        own scoring.
        """
        if not plan.auto:
            return
        what = "judging max_remove='auto'"
        if y_val is not None:
            warn_small_folds(y_val, self.cv, self.classes_, what=what)
        elif plan.target is not None:
            check_target_classes(y, plan.target, self.classes_)
            warn_small_folds(y, self.cv, self.classes_, target=plan.target, what=what)
        else:
            warn_small_folds(y, self.cv, self.classes_, what=what)

    def _compute_scores(self, plan, X, y, X_val, y_val):
        net, head_name = self._network()
        # subnormal activations of small pretrained CNNs slow the CPU ~20x
        with flush_denormal():
            scored = cached_scores(self, plan, net, head_name, X, y, X_val, y_val)
        self._scored = scored
        for name, value in scored.attrs.items():
            setattr(self, name, value)
        return scored.scores

    def _fixed_order_folds(self, plan, y, y_val, scores):
        """Held-out folds for scores that do not depend on a fold.

        The candidates are ordered by ``scores`` in every fold; the folds are
        those of the validation set, the target samples or the pool. Made
        whatever the rule (they cost one small array), so that a cached
        result serves ``max_remove="auto"`` too; ``None`` when the samples
        cannot be split at all.
        """
        k = len(self.classes_)
        try:
            if plan.mode == "validation_set":
                fold_of, n = make_folds(y_val, self.cv, n_classes=k,
                                        random_state=self.random_state, adapt=True)
                on = "val"
            else:
                fold_of, n = make_folds(y, self.cv, n_classes=k, target=plan.target,
                                        random_state=self.random_state, adapt=True)
                on = "train"
        except ValueError:
            return None
        return EvalFolds(fold_of=fold_of, on=on, weights=[None] * n,
                         order=np.broadcast_to(scores, (n, len(scores))))

    def _removal_count(self, plan, scores, y, candidates):
        if not plan.auto:
            return resolve_count(self.max_remove, len(y))
        scored = self._scored
        ev = scored.eval_folds
        folds = []
        for f in range(ev.n_folds):
            train, held = ev.fold(f)
            if ev.on == "val":
                F_eval, y_eval = scored.F_val[held], self._y_val[held]
                train = np.arange(len(y))
            else:
                F_eval, y_eval = scored.F[held], y[held]
            folds.append(EvalFold(train, np.asarray(F_eval), y_eval, ev.weights[f],
                                  ev.order[f]))
        count, search = choose_removal_count(
            scored.F, y, len(self.classes_), candidates, folds, alpha=self._rule_alpha()
        )
        self.removal_search_ = search
        return count

    def _rule_alpha(self):
        """The head's L2 strength when ``max_remove="auto"`` refits heads."""
        return self.alpha

    def _fit_and_select(self, X, y, X_val, y_val, sample_domain):
        try:
            with self._feature_store():
                return super()._fit_and_select(X, y, X_val, y_val, sample_domain)
        finally:
            # the cached features are needed during fit only
            self._scored = None
            self._y_val = None

    def _validate_inputs(self, X, y, X_val, y_val, sample_domain):
        out = super()._validate_inputs(X, y, X_val, y_val, sample_domain)
        self._y_val = out[3]
        return out

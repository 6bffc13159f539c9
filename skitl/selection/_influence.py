"""InfluenceSampleSelector: drop the training samples influence finds harmful."""

import numbers
import time

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions
from torch.utils.data import Subset

from ..influence import (
    PrefixCache,
    cross_fit_head_influence,
    deep_influence,
    fit_head,
    head_influence,
    predict_proba_head,
    prefix_cache,
    select_parameters,
    trim_weights,
)
from ..utils import resolve_device
from ._features import cross_fit_folds, install_head, val_folds
from ._scoring import FeatureSelector, _check_target_classes, fold_evals

_HESSIANS = {"exact", "ggn", "identity", "ekfac"}
_HEAD_SOLVERS = {"auto", "cholesky", "cg"}
_DEEP_SOLVERS = {"auto", "cg", "lissa", "arnoldi"}


class InfluenceSampleSelector(FeatureSelector):
    """Remove the training samples whose influence on the target is harmful.

    Each sample gets ``scores_[i]``: the predicted *increase* of the mean
    validation loss if sample ``i`` were removed (Koh & Liang's influence
    function with a ``1/n`` scale and the opposite sign of their
    ``I_up,loss``). Positive = the sample helps; negative = removing it lowers
    the validation loss. Samples with ``scores_ < threshold`` are removed,
    most harmful first, up to ``max_remove``, and no class ever drops below
    ``max(2, ceil(0.1 n_class))`` samples.

    Which validation loss, in the order of precedence:

    - ``fit(X, y, X_val=..., y_val=...)``: a target set (assumed clean);
      every training sample is scored against it.
    - ``fit(X, y, sample_domain=...)``: the target samples of the pool
      (``sample_domain < 0``) are the validation set, cross-fitted: stratified
      folds over the target samples, each fold is validation in turn; target
      samples are scored out of fold, auxiliary samples against every fold.
      Only auxiliary samples are removed unless ``remove_from="all"``. This is
      where instance-based transfer earns its keep: correctly labelled
      samples of another distribution that hurt the target.
    - neither: cross-fitting over the whole pool (``cv`` folds), the setting
      for label noise in one domain; cross-fitting on a mixed pool aligns the
      scores with the pool's own distribution, so pass a target.

    Parameters
    ----------
    estimator : TransferClassifier, default=None
        Whose *pretrained* network (``module``, ``weights``, ``head``,
        seeded by its ``random_state``) is analysed; the selector fits the
        head itself on the target data and never fine-tunes the backbone.
        ``None`` treats X as the features (influence for multinomial logistic
        regression on X); inside a :class:`~skitl.TransferClassifier` the
        classifier gives itself.
    params : {"head", "all"} or list of str, default="head"
        Parameters analysed: the classification head (closed form, convex),
        all parameters, or patterns of parameter names (``["layer4",
        "fc"]``: a module name selects everything below it; fnmatch globs
        such as ``"layer4.*.weight"`` work as usual).
    hessian : {"exact", "ggn", "identity", "ekfac"}, default="exact"
        Curvature: the exact Hessian (for the head it equals the GGN; for
        deeper parameters an indefinite Hessian raises an error naming
        ``"ggn"``), the Gauss-Newton matrix, identity (plain gradient
        similarity, TracIn with one checkpoint), or EK-FAC (deeper parameters
        only).
    alpha : float, default=1e-3
        L2 strength of the objective ``(1/n) sum L_i + alpha/2 ||W||^2``
        (the bias is not penalised), the same as scikit-learn's
        ``LogisticRegression(C=1/(alpha n))`` on the head's features.
    damping : "auto" or float, default="auto"
        Added to the Hessian only where the solver needs it; the value used is
        reported in ``influence_["damping"]``.
    cv : int, default=5
        Number of stratified cross-fitting folds (over the pool, or over the
        target samples with ``sample_domain``); also the folds that judge
        ``max_remove="auto"``.
    val_trim : "auto" or float in [0, 1), default="auto"
        Validation objective. ``"auto"`` drops the cross-fitted validation
        samples the fitted head misclassifies (their labels may be noisy) and
        keeps all of a user-given ``X_val`` (assumed clean); a float drops
        that fraction of highest-loss validation samples; ``0`` is the plain
        mean loss (the paper's rule, which fails under label noise).
    threshold : float or None, default=0.0
        Samples with a score below it are removal candidates. ``None`` makes
        every sample in scope a candidate (all auxiliary samples with
        ``sample_domain``): the order still comes from the scores, and the
        count from ``max_remove`` -- with ``max_remove="auto"`` the target
        alone decides how many go, not the sign of first-order scores.
    max_remove : int, float in [0, 1), "auto" or None, default=None
        Caps removal: a count, a fraction of the training set, or ``"auto"``:
        the count (among the candidates, lowest scores first) that minimises
        the target loss of the head refitted without them, judged on
        held-out target folds with scores computed without those folds (see
        ``removal_search_``). ``None``: no cap.
    remove_from : {"auxiliary", "all"}, default="auxiliary"
        With ``sample_domain``: remove only auxiliary samples, or any sample.
        Ignored without ``sample_domain``.
    solver : {"auto", "cholesky", "cg", "lissa", "arnoldi"}, default="auto"
        Inverse-Hessian solver. Head: ``"cholesky"`` (dense, float64) or
        ``"cg"``; ``"auto"`` picks by size. Deeper parameters: ``"cg"``
        (``"auto"``), ``"lissa"`` or ``"arnoldi"``.
    batch_size : int, default=256
        Batch size of the forward passes.
    memory : None, str or joblib.Memory, default=None
        Caches the scores (like ``Pipeline(memory=...)``), keyed by the data,
        the network's weights and every parameter that changes the scores,
        but not by ``threshold``, ``max_remove`` or ``remove_from``: a grid
        search over the removal rule scores once per data split.
    feature_dir : None, bool or str, default=None
        Where the network's features live during ``fit``: in memory
        (``None``), or as float32 memmaps in a temporary directory
        (``True``) or in a new subdirectory of the given directory, removed
        when ``fit`` ends. On disk, memory does not grow with the number of
        samples: the head algebra reads the features by chunks.
    device : str, default="auto"
        Torch device; ``"auto"`` picks CUDA when available.
    random_state : int, RandomState instance or None, default=None
        Seeds the cross-fitting folds.
    verbose : int, default=0
        Progress bars and messages when > 0.

    Attributes
    ----------
    scores_ : ndarray of shape (n_samples,)
        Influence scores (higher = keep).
    support_ : ndarray of bool, shape (n_samples,)
        Kept samples.
    sample_indices_ : ndarray of int
        Indices of the kept samples, ascending.
    n_removed_ : int
        Number of samples removed.
    n_protected_ : int
        Candidates kept because their class reached its floor.
    classes_ : ndarray
        Class labels seen in ``fit``.
    n_features_in_ : int
        ``X.shape[1]`` of the training array (channels for images).
    feature_names_in_ : ndarray of str
        Column names, when fitted on a DataFrame with string column names.
    estimator_ : TransferClassifier or None
        A clone of ``estimator`` (the configuration analysed).
    network_ : torch.nn.Module or None
        The analysed network with the head fitted on all of ``(X, y)``.
    influence_ : dict
        How the scores were computed, the same keys on every path:
        ``mode`` (``"validation_set"``, ``"cross_fit"`` or
        ``"target_cross_fit"``), ``params`` (names analysed), ``hessian``,
        ``solver``, ``damping`` (largest over folds), ``residual`` (largest
        relative residual of the solves), ``n_iter`` (largest solver
        iteration count), ``n_folds`` (0 with a validation set),
        ``per_fold`` (list of dicts with ``damping``, ``residual``,
        ``n_iter``), ``seconds`` (``features``, ``scores``, ``total``),
        ``oof_proba`` and ``oof_loss`` (out-of-fold head probabilities and
        losses of the training samples, cross-fitted head path only, else
        ``None``).
    removal_search_ : dict
        With ``max_remove="auto"``: the counts tried, their mean target loss,
        the best and the chosen count.

    See Also
    --------
    skitl.TransferClassifier : fine-tunes on what the selector keeps.
    skitl.selection.DomainClassifierSelector : the density-ratio baseline.
    skitl.selection.LossSelector : the out-of-fold-loss baseline.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skitl import InfluenceSampleSelector
    >>> X, y = load_digits(return_X_y=True)
    >>> sel = InfluenceSampleSelector(random_state=0)
    >>> X_kept, y_kept = sel.fit_resample(X[:300] / 16, y[:300])
    >>> len(y_kept) == 300 - sel.n_removed_
    True
    """

    _parameter_constraints = {
        **FeatureSelector._parameter_constraints,
        "params": [StrOptions({"head", "all"}), list, tuple],
        "hessian": [StrOptions(_HESSIANS)],
        "damping": [StrOptions({"auto"}), Interval(numbers.Real, 0, None, closed="left")],
        "val_trim": [StrOptions({"auto"}), Interval(numbers.Real, 0, 1, closed="left")],
        "threshold": [None, Interval(numbers.Real, None, None, closed="both")],
        "solver": [StrOptions(_HEAD_SOLVERS | _DEEP_SOLVERS)],
    }

    def __init__(
        self,
        estimator=None,
        *,
        params="head",
        hessian="exact",
        alpha=1e-3,
        damping="auto",
        cv=5,
        val_trim="auto",
        threshold=0.0,
        max_remove=None,
        remove_from="auxiliary",
        solver="auto",
        batch_size=256,
        memory=None,
        feature_dir=None,
        device="auto",
        random_state=None,
        verbose=0,
    ):
        self.estimator = estimator
        self.params = params
        self.hessian = hessian
        self.alpha = alpha
        self.damping = damping
        self.cv = cv
        self.val_trim = val_trim
        self.threshold = threshold
        self.max_remove = max_remove
        self.remove_from = remove_from
        self.solver = solver
        self.batch_size = batch_size
        self.memory = memory
        self.feature_dir = feature_dir
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # -- checks that relate parameters (constraints cover each one alone) ------

    def _check_combination(self, net):
        deep = self.params != "head"
        if isinstance(self.params, (list, tuple)) and not (
            self.params and all(isinstance(p, str) for p in self.params)
        ):
            raise ValueError(
                "params must be 'head', 'all' or a non-empty list of parameter "
                f"name patterns, got {self.params!r}."
            )
        if deep and net is None:
            raise ValueError(
                f"params={self.params!r} needs a network: pass "
                "estimator=TransferClassifier(...)."
            )
        if not deep:
            if self.hessian == "ekfac":
                raise ValueError(
                    "hessian='ekfac' approximates deeper parameters; the head's exact "
                    "Hessian is cheaper and exact (hessian='exact')."
                )
            if self.solver not in _HEAD_SOLVERS:
                raise ValueError(
                    f"solver={self.solver!r} is for deeper parameters; the head takes "
                    f"{sorted(_HEAD_SOLVERS)}."
                )
            if self.alpha == 0 and self.damping == 0:
                raise ValueError(
                    "alpha=0 with damping=0 leaves the head Hessian singular; use "
                    "alpha > 0 or damping='auto'."
                )
        else:
            if self.solver not in _DEEP_SOLVERS:
                raise ValueError(
                    f"solver={self.solver!r} is for the head; deeper parameters take "
                    f"{sorted(_DEEP_SOLVERS)}."
                )
            # a pattern that matches nothing fails here, before any forward pass
            select_parameters(net, self.params)

    def _check_folds(self, y, y_val, is_target):
        # with sample_domain the folds run over the target samples only
        if y_val is None and is_target is not None:
            _check_target_classes(y, is_target, self.cv, self.classes_)
        else:
            super()._check_folds(y, y_val, is_target)

    # -- scoring ----------------------------------------------------------------

    def _score(self, net, head_name, X, y, X_val, y_val, is_target):
        self._check_combination(net)
        t0 = time.perf_counter()
        k = len(self.classes_)
        F = self._features(net, head_name, X)
        F_val = None if X_val is None else self._features(net, head_name, X_val)
        t_feat = time.perf_counter() - t0
        W = b = None
        if X_val is not None or net is not None:
            W, b = fit_head(F, y, k, alpha=self.alpha)
        auto_wanted = isinstance(self.max_remove, str)
        per_fold, oof_proba, oof_loss = [], None, None
        if X_val is not None:
            mode = "validation_set"
            w_val = self._trim(F_val, y_val, W, b, user_given=True)
            res = self._solve(net, head_name, W, b, (X, F, y), (X_val, F_val, y_val), w_val)
            scores, last = res.scores, res
            folds = val_folds(y_val, self.cv, self.random_state) if auto_wanted else []
            order, weights = [], []
            for rest, fold in folds:
                w = np.zeros_like(w_val)
                w[rest] = w_val[rest]
                order.append(self._solve(net, head_name, W, b, (X, F, y),
                                         (X_val, F_val, y_val), w).scores)
                weights.append(w_val[fold])
            auto = (F, fold_evals(F, y, folds, order, weights, F_val, y_val)) \
                if auto_wanted else None
        else:
            mode = "cross_fit" if is_target is None else "target_cross_fit"
            folds = cross_fit_folds(y, self.cv, self.random_state, is_target)
            if self.params == "head" and not auto_wanted:
                res = cross_fit_head_influence(
                    F, y, n_classes=k, cv=self.cv, alpha=self.alpha,
                    val_trim=self.val_trim, damping=self.damping,
                    hessian=self._head_hessian(), solver=self.solver,
                    random_state=self.random_state, verbose=self.verbose,
                    target=is_target,
                )
                scores, oof_proba, oof_loss = res.scores, res.oof_proba, res.oof_loss
                per_fold = [
                    {"damping": float(d), "residual": float(r), "n_iter": 0}
                    for d, r in zip(res.damping, res.residual, strict=True)
                ]
                last = None
                auto = None
            else:
                scores, fold_scores, weights, per_fold, last = self._cross_fit(
                    net, head_name, X, F, y, folds)
                auto = None
                if auto_wanted:
                    order = _scores_without_each_fold(fold_scores, folds, scores)
                    auto = (F, fold_evals(F, y, folds, order, weights))
        network = None
        if net is not None:
            network = install_head(net, head_name, W, b).eval()
        info = {
            "influence_": self._info(mode, last, per_fold, head_name, oof_proba, oof_loss,
                                     t_feat, time.perf_counter() - t0),
            "network_": network,
        }
        return scores, info, auto

    def _head_hessian(self):
        return "identity" if self.hessian == "identity" else "exact"

    def _trim(self, F_val, y_val, W, b, *, user_given):
        proba = predict_proba_head(F_val, W, b)
        loss = -np.log(np.clip(proba[np.arange(len(y_val)), y_val], 1e-300, None))
        return trim_weights(loss, proba.argmax(1), y_val, self.val_trim,
                            user_given=user_given)

    def _solve(self, net, head_name, W, b, train, val, w_val):
        """Influence of every training sample on one (weighted) validation set."""
        X, F, y = train
        X_val, F_val, y_val = val
        if self.params == "head":
            return head_influence(
                F, y, F_val, y_val, n_classes=len(self.classes_), alpha=self.alpha,
                damping=self.damping, val_weights=w_val, hessian=self._head_hessian(),
                solver=self.solver, W=W, b=b,
            )
        install_head(net, head_name, W, b)
        kw = {} if self.solver == "auto" else {"solver": self.solver}
        return deep_influence(
            net, X, y, X_val, y_val, params=self.params, hessian=self.hessian,
            damping=self.damping, alpha=self.alpha, val_weights=w_val,
            batch_size=self.batch_size, device=self.device, verbose=self.verbose, **kw,
        )

    def _cross_fit(self, net, head_name, X, F, y, folds):
        """Cross-fitting fold by fold (deeper parameters, or ``max_remove='auto'``)."""
        k = len(self.classes_)
        total = np.zeros(len(y))
        counts = np.zeros(len(y))
        fold_scores, weights, per_fold = [], [], []
        res = None
        X = self._prefix_once(net, X)
        for tr, va in folds:
            W, b = fit_head(F[tr], y[tr], k, alpha=self.alpha)
            w_val = self._trim(F[va], y[va], W, b, user_given=False)
            res = self._solve(net, head_name, W, b, (_rows(X, tr), F[tr], y[tr]),
                              (_rows(X, va), F[va], y[va]), w_val)
            s = np.full(len(y), np.nan)
            s[tr] = res.scores
            fold_scores.append(s)
            weights.append(w_val)
            total[tr] += res.scores
            counts[tr] += 1
            per_fold.append({"damping": float(res.damping), "residual": float(res.residual),
                             "n_iter": int(res.n_iter)})
        return total / counts, fold_scores, weights, per_fold, res

    def _prefix_once(self, net, X):
        """Deeper parameters: run the frozen prefix once for every fold.

        The folds differ in rows and in the fitted head, never in the layers
        in front of the analysed parameters, so their activations are cached
        (:func:`skitl.influence.prefix_cache`) and every fold reuses them.
        Networks whose analysed parameters are not a suffix keep the raw rows.
        """
        if self.params == "head" or net is None:
            return X
        try:
            return prefix_cache(net, X, params=self.params, batch_size=self.batch_size,
                                device=resolve_device(self.device))
        except ValueError:
            return X

    def _info(self, mode, res, per_fold, head_name, oof_proba, oof_loss, t_feat, t_total):
        if res is not None and not per_fold:
            per_fold_stats = [{"damping": float(res.damping),
                               "residual": float(res.residual),
                               "n_iter": int(res.n_iter)}]
        else:
            per_fold_stats = per_fold
        if self.params == "head":
            params = ([f"{head_name}.weight", f"{head_name}.bias"] if head_name
                      else ["weight", "bias"])
            hessian = self._head_hessian()
        else:
            params = list(res.params) if res is not None else []
            hessian = self.hessian
        solver = self.solver if res is None else res.solver
        return {
            "mode": mode,
            "params": params,
            "hessian": hessian,
            "solver": solver,
            "damping": max(f["damping"] for f in per_fold_stats),
            "residual": max(f["residual"] for f in per_fold_stats),
            "n_iter": max(f["n_iter"] for f in per_fold_stats),
            "n_folds": len(per_fold),
            "per_fold": per_fold,
            "seconds": {"features": t_feat, "scores": t_total - t_feat, "total": t_total},
            "oof_proba": oof_proba,
            "oof_loss": oof_loss,
        }

    def fit(self, X, y, X_val=None, y_val=None, *, sample_domain=None):
        """Score every sample of ``(X, y)`` against the target and decide which to keep.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...) or torch Dataset
            Training inputs: the target training set, or a pool of target and
            auxiliary samples.
        y : array-like of shape (n_samples,)
            Training labels (possibly noisy).
        X_val : array-like or torch Dataset, default=None
            A separate validation set from the target distribution, assumed
            clean: every training sample is scored against it.
        y_val : array-like of shape (n_val,), default=None
            Its labels.
        sample_domain : array-like of int of shape (n_samples,), default=None
            Domain of each training sample: negative = target, positive =
            auxiliary / source (skada's convention). Without ``X_val``, the
            target samples are cross-fitted as the validation set.

        Returns
        -------
        self : InfluenceSampleSelector
            The fitted selector.
        """
        return super().fit(X, y, X_val, y_val, sample_domain=sample_domain)


def _rows(X, idx):
    if isinstance(X, PrefixCache):
        return X.rows(idx)
    if isinstance(X, np.ndarray):
        return X[idx]
    return Subset(X, idx.tolist())


def _scores_without_each_fold(fold_scores, folds, scores):
    """Per fold, each sample's mean score over the *other* folds.

    Falls back to the overall score where a sample was trained on in no other
    fold (two folds).
    """
    stack = np.vstack(fold_scores)
    out = []
    for f in range(len(folds)):
        others = np.delete(stack, f, axis=0)
        with np.errstate(invalid="ignore"):
            counts = np.isfinite(others).sum(0)
            mean = np.where(counts > 0, np.nansum(others, 0) / np.maximum(counts, 1),
                            scores)
        out.append(mean)
    return out

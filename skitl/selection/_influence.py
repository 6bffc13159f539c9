"""InfluenceSampleSelector: drop the training samples influence finds harmful."""

import numbers
import time

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold

from ..influence import (
    cross_fit_head_influence,
    deep_influence,
    fit_head,
    head_influence,
    predict_proba_head,
    trim_weights,
)
from ..utils import check_X, check_y
from ._base import BaseSelector
from ._features import compute_features, install_head, pretrained_network

_HESSIANS = ("exact", "ggn", "identity", "ekfac")


class InfluenceSampleSelector(BaseSelector):
    """Remove the target training samples whose influence is harmful.

    Each sample gets ``scores_[i]``: the predicted *increase* of the mean
    validation loss if sample ``i`` were removed (Koh & Liang 2017 influence
    with a ``1/n`` scale and the opposite sign of their ``I_up,loss``).
    Positive = the sample helps; negative = removing it lowers the validation
    loss. Samples with ``scores_ < threshold`` are removed, most harmful first,
    up to ``max_remove``, and no class ever drops below
    ``max(2, ceil(0.1 n_class))`` samples.

    Parameters
    ----------
    estimator : TransferClassifier, default=None
        Whose *pretrained* network (``module``, ``weights``, ``head``) is
        analysed; the selector fits the head itself on the target data and never
        fine-tunes the backbone. ``None`` treats X as the features (influence for
        multinomial logistic regression on X); inside a
        :class:`~skitl.TransferClassifier` the classifier injects itself.
    params : {"head", "all"} or list of str, default="head"
        Parameters analysed: the classification head (closed form, convex), all
        parameters, or glob patterns of parameter names (``["layer4.*", "fc.*"]``).
    hessian : {"exact", "ggn", "identity", "ekfac"}, default="exact"
        Curvature: exact Hessian (for the head, identical to the GGN), the
        Gauss-Newton matrix, identity (plain gradient similarity, TracIn with
        one checkpoint), or EK-FAC (deeper parameters only).
    alpha : float, default=1e-3
        L2 strength of the head objective ``(1/n) sum L_i + alpha/2 ||W||^2``
        (bias not penalised), the same as scikit-learn's
        ``LogisticRegression(C=1/(alpha n))`` on the features.
    damping : "auto" or float, default="auto"
        Added to the Hessian only where the solver needs it; the value used is
        reported in ``influence_["damping"]``.
    cv : int, default=5
        Number of stratified folds of cross-fitting when no ``X_val`` is given:
        every sample is scored out of fold and serves as validation once.
    val_trim : "auto", float in [0, 1) or 0, default="auto"
        Validation objective. ``"auto"`` drops the cross-fitted validation
        samples the fitted head misclassifies (keeps all of a user-given
        ``X_val``, assumed clean); a float drops that fraction of highest-loss
        validation samples; ``0`` is the plain mean loss (the paper's rule, which
        fails under label noise -- see the user guide).
    threshold : float, default=0.0
        Samples with a score below it are removal candidates.
    max_remove : int or float in [0, 1), default=None
        Caps removal (a count, or a fraction of the training set).
    solver : {"auto", "cholesky", "cg", "lissa", "arnoldi"}, default="auto"
        Inverse-Hessian solver; ``"auto"`` is a dense Cholesky for a small head
        and conjugate gradient otherwise.
    batch_size : int, default=256
        Batch size of the forward passes.
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
    estimator_ : TransferClassifier or None
        A clone of ``estimator`` (the configuration analysed).
    network_ : torch.nn.Module or None
        The analysed network with the head fitted on all of ``(X, y)``.
    influence_ : dict
        Damping, solver, residual, timings and, when cross-fitted, the
        out-of-fold probabilities and losses.
    classes_ : ndarray
        Class labels seen in ``fit``.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skitl import InfluenceSampleSelector
    >>> X, y = load_digits(return_X_y=True)
    >>> sel = InfluenceSampleSelector(random_state=0).fit(X[:300] / 16, y[:300])
    >>> X_kept, y_kept = sel.fit_resample(X[:300] / 16, y[:300])
    >>> len(y_kept) == 300 - sel.n_removed_
    True
    """

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
        solver="auto",
        batch_size=256,
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
        self.solver = solver
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _validate_params_(self, n_samples):
        if self.hessian not in _HESSIANS:
            raise ValueError(f"hessian must be one of {_HESSIANS}, got {self.hessian!r}.")
        if not isinstance(self.alpha, numbers.Real) or self.alpha < 0:
            raise ValueError(f"alpha must be a real number >= 0, got {self.alpha!r}.")
        if self.params == "head" and self.alpha == 0 and self.damping == 0:
            raise ValueError(
                "alpha=0 with damping=0 leaves the head Hessian singular; use alpha > 0 "
                "or damping='auto'."
            )
        if not (self.damping == "auto" or isinstance(self.damping, numbers.Real)):
            raise ValueError(f"damping must be 'auto' or a float, got {self.damping!r}.")
        if isinstance(self.damping, numbers.Real) and self.damping < 0:
            raise ValueError(f"damping must be >= 0, got {self.damping}.")
        if isinstance(self.cv, bool) or not isinstance(self.cv, numbers.Integral) or self.cv < 2:
            raise ValueError(f"cv must be an int >= 2, got {self.cv!r}.")
        vt = self.val_trim
        if not (vt == "auto" or (isinstance(vt, numbers.Real) and not isinstance(vt, bool)
                                 and 0 <= vt < 1)):
            raise ValueError(f"val_trim must be 'auto' or a float in [0, 1), got {vt!r}.")
        if not (self.params in ("head", "all") or (
            isinstance(self.params, (list, tuple)) and self.params
            and all(isinstance(p, str) for p in self.params)
        )):
            raise ValueError(
                "params must be 'head', 'all' or a non-empty list of glob patterns, "
                f"got {self.params!r}."
            )
        if self.hessian == "ekfac" and self.params == "head":
            raise ValueError(
                "hessian='ekfac' approximates deeper parameters; the head's exact "
                "Hessian is cheaper and exact (hessian='exact')."
            )
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, numbers.Integral) \
                or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}.")

    def _head_hessian(self):
        return "identity" if self.hessian == "identity" else "exact"

    def fit(self, X, y, X_val=None, y_val=None):
        """Score every sample of ``(X, y)`` and decide which to keep.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...) or torch Dataset
            Target training inputs.
        y : array-like of shape (n_samples,)
            Target training labels (possibly noisy).
        X_val, y_val : array-like, optional
            A separate validation set, assumed clean. Without it the
            validation loss is cross-fitted from ``(X, y)`` with ``cv`` folds.

        Returns
        -------
        self : object
        """
        return super().fit(X, y, X_val=X_val, y_val=y_val)

    def _compute_scores(self, X, y, X_val=None, y_val=None):
        self._validate_params_(len(y))
        if (X_val is None) != (y_val is None):
            raise ValueError("Pass both X_val and y_val, or neither.")
        n_classes = len(self.classes_)
        t0 = time.perf_counter()
        net, head_name = pretrained_network(self.estimator)
        self.estimator_ = None if self.estimator is None else clone(self.estimator)
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
        elif self.cv > np.bincount(y).min():
            c = self.classes_.tolist()[np.argmin(np.bincount(y))]
            raise ValueError(
                f"Class {c!r} has {np.bincount(y).min()} samples, fewer than cv={self.cv} "
                "folds; lower cv or pass X_val / y_val."
            )
        feats = dict(batch_size=self.batch_size, device=self.device, verbose=self.verbose)
        F = compute_features(net, head_name, X, **feats)
        t_feat = time.perf_counter() - t0
        common = dict(n_classes=n_classes, alpha=self.alpha, damping=self.damping)
        deep = self.params != "head"
        if deep and net is None:
            raise ValueError(
                f"params={self.params!r} needs a network: pass estimator=TransferClassifier(...)."
            )
        solver = self.solver
        if X_val is not None:
            F_val = compute_features(net, head_name, X_val, **feats)
            W, b = fit_head(F, y, n_classes, alpha=self.alpha)
            _, loss_val, pred_val = _head_loss(F_val, y_val, W, b)
            w_val = trim_weights(loss_val, pred_val, y_val, self.val_trim, user_given=True)
            if deep:
                res = self._deep_scores(net, head_name, W, b, X, y, X_val, y_val, w_val)
            else:
                res = head_influence(
                    F, y, F_val, y_val, val_weights=w_val, hessian=self._head_hessian(),
                    solver=solver, W=W, b=b, **common,
                )
            scores = res.scores
            info = _result_info(res)
        elif not deep:
            res = cross_fit_head_influence(
                F, y, cv=self.cv, val_trim=self.val_trim, hessian=self._head_hessian(),
                solver=solver, random_state=self.random_state, verbose=self.verbose,
                **common,
            )
            scores = res.scores
            info = {
                "damping": res.damping,
                "residual": res.residual,
                "seconds": res.seconds,
                "oof_proba": res.oof_proba,
                "oof_loss": res.oof_loss,
            }
        else:
            scores, info = self._deep_cross_fit(net, head_name, F, X, y)
        info["feature_seconds"] = t_feat
        info["total_seconds"] = time.perf_counter() - t0
        self.influence_ = info
        self.network_ = None
        if net is not None:
            if X_val is None:  # cross-fitted: no head was fitted on all of (X, y) yet
                W, b = fit_head(F, y, n_classes, alpha=self.alpha)
            self.network_ = install_head(net, head_name, W, b).eval()
        return scores

    def _deep_scores(self, net, head_name, W, b, X_tr, y_tr, X_va, y_va, w_val):
        install_head(net, head_name, W, b)
        kw = {} if self.solver == "auto" else {"solver": self.solver}
        hessian = "ggn" if self.hessian == "exact" else self.hessian
        return deep_influence(
            net, X_tr, y_tr, X_va, y_va, params=self.params, hessian=hessian,
            damping=self.damping, alpha=self.alpha, val_weights=w_val,
            batch_size=self.batch_size, device=self.device, verbose=self.verbose, **kw,
        )

    def _deep_cross_fit(self, net, head_name, F, X, y):
        n_classes = len(self.classes_)
        folds = StratifiedKFold(self.cv, shuffle=True, random_state=self.random_state)
        total = np.zeros(len(y))
        counts = np.zeros(len(y))
        dampings, residuals = [], []
        for tr, va in folds.split(F, y):
            W, b = fit_head(F[tr], y[tr], n_classes, alpha=self.alpha)
            _, loss_va, pred_va = _head_loss(F[va], y[va], W, b)
            w_val = trim_weights(loss_va, pred_va, y[va], self.val_trim, user_given=False)
            res = self._deep_scores(
                net, head_name, W, b, _rows(X, tr), y[tr], _rows(X, va), y[va], w_val
            )
            total[tr] += res.scores
            counts[tr] += 1
            dampings.append(res.damping)
            residuals.append(res.residual)
        return total / counts, {"damping": dampings, "residual": residuals}


def _rows(X, idx):
    if isinstance(X, np.ndarray):
        return X[idx]
    from torch.utils.data import Subset

    return Subset(X, idx.tolist())


def _head_loss(F, y, W, b):
    proba = predict_proba_head(F, W, b)
    # the same loss the engine's cross-fitting trims on
    loss = -np.log(np.clip(proba[np.arange(len(y)), y], 1e-300, None))
    return proba, loss, proba.argmax(axis=1)


def _result_info(res):
    return {
        "damping": res.damping,
        "solver": res.solver,
        "residual": res.residual,
        "seconds": res.seconds,
    }

"""Cross-fitted head influence: every sample is scored and serves as validation.

DESIGN.md §1 "Where the validation loss comes from" and "The trap that
decides whether the method works": with noisy target labels the plain mean
validation loss is dominated by mislabelled validation samples, hence the
validation weights of :func:`trim_weights`.
"""

import numbers
import time
import warnings

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold
from tqdm.auto import tqdm

from ._head import (
    DENSE_MAX_DIM,
    _augment,
    _check_features,
    _check_labels,
    _HeadHessian,
    _HeadSolve,
    _onehot,
    _project_null,
    _softmax64,
    _val_gradient,
    _Whitening,
    fit_head,
)
from ._results import CrossFitResult


def trim_weights(loss, pred, y, val_trim, *, user_given):
    """Validation weights implied by ``val_trim`` (DESIGN.md §1).

    Parameters
    ----------
    loss : ndarray of shape (m,)
        Cross-entropy of each validation sample under the fitted head.
    pred : ndarray of shape (m,)
        Predicted class of each validation sample.
    y : ndarray of shape (m,)
        Given (possibly noisy) validation labels.
    val_trim : "auto", float in [0, 1), or 0
        ``"auto"``: weight 0 for the samples the head misclassifies, unless
        ``user_given`` (a user-supplied validation set is assumed clean: all
        ones). A float ``f``: weight 0 for the ``floor(f * m)`` highest-loss
        samples. ``0``: all ones (the paper's plain mean loss).
    user_given : bool
        Whether the validation set was given by the user.

    Returns
    -------
    weights : ndarray of float64 of shape (m,)
        0/1 weights. If trimming would drop every sample, all ones with a
        ``UserWarning``.
    """
    loss = np.asarray(loss, dtype=np.float64)
    m = loss.shape[0]
    w = np.ones(m)
    if isinstance(val_trim, str):
        if val_trim != "auto":
            raise ValueError(f"val_trim must be 'auto' or a float in [0, 1), got {val_trim!r}.")
        if not user_given:
            w = (np.asarray(pred) == np.asarray(y)).astype(np.float64)
    elif isinstance(val_trim, numbers.Real) and not isinstance(val_trim, bool):
        if not 0.0 <= val_trim < 1.0:
            raise ValueError(f"val_trim as a fraction must be in [0, 1), got {val_trim}.")
        n_drop = int(np.floor(val_trim * m))
        if n_drop:
            # Stable sort so ties resolve the same way on every platform.
            w[np.argsort(-loss, kind="stable")[:n_drop]] = 0.0
    else:
        raise ValueError(f"val_trim must be 'auto' or a float in [0, 1), got {val_trim!r}.")
    if w.sum() == 0:
        warnings.warn(
            "val_trim would drop every validation sample; using the plain mean "
            "validation loss instead.", UserWarning, stacklevel=2)
        w = np.ones(m)
    return w


def cross_fit_head_influence(F, y, *, n_classes, cv=5, alpha, val_trim="auto",
                             damping="auto", hessian="exact", solver="auto",
                             random_state=None, verbose=0, device="cpu", tol=1e-10):
    """Cross-fitted head influence of every sample (features computed once).

    For each of ``cv`` stratified folds the head is fitted exactly on the
    other folds, the fold serves as validation set (weighted by
    :func:`trim_weights` with ``user_given=False``) and the training samples
    get their influence on it. A sample's score is the mean over the folds
    in which it was trained on.

    Parameters
    ----------
    F : array-like of shape (n, d)
        Features.
    y : array-like of int of shape (n,)
        Labels ``0..n_classes-1``.
    n_classes : int
    cv : int, default=5
        Number of stratified folds (shuffled with ``random_state``).
    alpha : float
        L2 strength of the head objective.
    val_trim : "auto" or float, default="auto"
        See :func:`trim_weights`.
    damping : "auto" or float, default="auto"
    hessian : {"exact", "identity"}, default="exact"
    solver : {"auto", "cholesky", "cg"}, default="auto"
        ``"auto"`` takes the dense Cholesky whenever ``k (d+1)`` allows
        (its factor also gives the exact self-influence), CG otherwise.
    random_state : int, RandomState or None, default=None
    verbose : int, default=0
    device : str, default="cpu"
    tol : float, default=1e-10

    Returns
    -------
    result : CrossFitResult
    """
    F = _check_features(F, "F")
    y = _check_labels(y, n_classes, "y")
    if len(y) != len(F):
        raise ValueError(f"F has {len(F)} rows but y has {len(y)} labels.")
    if hessian not in ("exact", "identity"):
        raise ValueError(f"hessian must be 'exact' or 'identity', got {hessian!r}.")
    n, d = F.shape
    k = int(n_classes)
    dp = d + 1
    counts = np.bincount(y, minlength=k)
    present = counts[counts > 0]
    if present.min() < cv:
        raise ValueError(
            f"cv={cv} folds need at least {cv} samples of every class; the "
            f"smallest class has {present.min()}.")
    if solver == "auto":
        solver = "cholesky" if k * dp <= DENSE_MAX_DIM else "cg"
    si_kind = "exact" if (hessian == "exact" and solver == "cholesky") else "identity"
    skf = StratifiedKFold(n_splits=cv, shuffle=True, random_state=random_state)
    folds = list(skf.split(np.zeros(n), y))
    score_sum = np.zeros(n)
    score_cnt = np.zeros(n)
    oof_proba = np.zeros((n, k))
    oof_self = np.zeros(n)
    weights, dampings, residuals = [], [], []
    seconds = {"fit": 0.0, "solve": 0.0, "scores": 0.0}
    for tr, va in tqdm(folds, desc="cross-fit", disable=verbose <= 0, leave=False):
        t0 = time.perf_counter()
        W, b = fit_head(F[tr], y[tr], k, alpha=alpha, device=device)
        seconds["fit"] += time.perf_counter() - t0
        t1 = time.perf_counter()
        theta = torch.cat([torch.as_tensor(W), torch.as_tensor(b)[:, None]], 1).to(device)
        P = _softmax64(_augment(F[tr], device) @ theta.T)
        Pv = _softmax64(_augment(F[va], device) @ theta.T)
        if hessian == "identity":
            # Gradient similarity depends on the parametrisation: use the original.
            A, Av = _augment(F[tr], device), _augment(F[va], device)
        else:
            wh = _Whitening(F[tr], device)
            A, Av = wh.augment(F[tr]), wh.augment(F[va])
        R = P - _onehot(y[tr], k, device)
        Rv = Pv - _onehot(y[va], k, device)
        pv = Pv.cpu().numpy()
        oof_proba[va] = pv
        loss_v = -np.log(np.clip(pv[np.arange(len(va)), y[va]], 1e-300, None))
        w = trim_weights(loss_v, pv.argmax(1), y[va], val_trim, user_given=False)
        weights.append(w)
        G = _project_null(_val_gradient(Av, Rv, w))
        ntr = len(tr)
        if hessian == "identity":
            S, lam, resid = G, 0.0, 0.0
            hs = None
        else:
            hs = _HeadSolve(_HeadHessian(A, P, alpha, pen=wh.columns(alpha, 0.0)),
                            damping=damping, solver=solver, tol=tol, need_factor=True,
                            damping_columns=wh.columns(1.0, 1.0))
            S = hs.solve(G)
            lam, resid = hs.damping, hs.residual(S, G)
        dampings.append(float(lam))
        residuals.append(float(resid))
        seconds["solve"] += time.perf_counter() - t1
        t2 = time.perf_counter()
        s = ((A @ S.T) * R).sum(1) / ntr
        score_sum[tr] += s.cpu().numpy()
        score_cnt[tr] += 1
        if si_kind == "exact":
            q = hs.quad_form_samples(Av, Rv)
            # Held-out features may leave the span of the training features;
            # there H is the penalty alone (the whitening dropped it).
            curv = alpha + (lam if damping != "auto" else 0.0)
            if curv > 0:
                q = q + (Rv**2).sum(1) * wh.perp_sq(F[va]) / curv
            oof_self[va] = (q / ntr).cpu().numpy()
        else:
            # ‖r aᵀ‖² = ‖r‖² ‖a‖² in the original coordinates: no per-sample matrix.
            Ao = _augment(F[va], device)
            oof_self[va] = ((Rv**2).sum(1) * (Ao**2).sum(1) / ntr).cpu().numpy()
        seconds["scores"] += time.perf_counter() - t2
    scores = score_sum / np.maximum(score_cnt, 1)
    oof_loss = -np.log(np.clip(oof_proba[np.arange(n), y], 1e-300, None))
    for name, arr in (("scores", scores), ("oof_self_influence", oof_self)):
        if not np.isfinite(arr).all():
            raise FloatingPointError(f"cross-fitted {name} are not finite; increase alpha.")
    return CrossFitResult(
        scores=scores, oof_proba=oof_proba, oof_loss=oof_loss,
        oof_self_influence=oof_self, self_influence_hessian=si_kind, folds=folds,
        val_weights_per_fold=weights, damping=dampings, residual=residuals,
        solver=solver if hessian == "exact" else "none", seconds=seconds,
    )

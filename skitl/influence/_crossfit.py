"""Cross-fitted head influence: every sample is scored and serves as validation.

Without a separate validation set the training data is split into folds:
each fold in turn is the validation set of a head fitted on the others. With
noisy target labels the plain mean validation loss is dominated by the
mislabelled validation samples (removing a clean training sample, which makes
its true class less certain, then looks helpful), hence the validation
weights of :func:`trim_weights`.
"""

import numbers
import time
import warnings

import numpy as np
import torch
from sklearn.model_selection import KFold, StratifiedKFold
from tqdm.auto import tqdm

from ..utils._threads import limit_threads
from ._chunks import trim_heap
from ._head import (
    DENSE_MAX_DIM,
    _check_features,
    _check_labels,
    _residuals,
    _score_head,
)
from ._results import CrossFitResult, fold_indices

# Rows per step where fold results are scattered into the outputs by index
# (a temporary of this many rows instead of one as long as the fold).
_ROWS = 65536


def trim_weights(loss, pred, y, val_trim, *, user_given):
    """Validation weights implied by ``val_trim``.

    Mislabelled validation samples dominate the gradient of the plain mean
    validation loss; dropping them (or the highest-loss ones) makes the
    influence scores detect noisy training labels instead of penalising clean
    samples.

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


def _check_target(target, n):
    if isinstance(target, torch.Tensor):
        target = target.cpu().numpy()
    target = np.asarray(target)
    if target.dtype != bool:
        raise ValueError(f"target must be a boolean mask, got dtype {target.dtype}.")
    if target.shape != (n,):
        raise ValueError(f"target must have shape ({n},) like y, got {target.shape}.")
    if not target.any():
        raise ValueError("target selects no sample; cross-fitting needs target samples "
                         "to validate on.")
    return target


def make_folds(y, cv, *, n_classes, target=None, random_state=None, adapt=False):
    """The fold in which each sample is held out (``-1``: never), as small ints.

    The one fold plan of skitl: cross-fitting over a pool or over its target
    samples, the folds of a validation set that judge ``max_remove="auto"``,
    and the selectors' baselines all take their folds from here. One integer
    per sample instead of ``cv`` pairs of index arrays (``cv × n`` int64): a
    fold's indices are rebuilt from it when the fold runs.

    Parameters
    ----------
    y : ndarray of int of shape (n,)
        Labels ``0..n_classes-1``.
    cv : int
        Number of folds asked for.
    n_classes : int
        Number of classes.
    target : ndarray of bool of shape (n,), optional
        Split only these samples; the others are never held out.
    random_state : int, RandomState instance or None, default=None
        Shuffles the folds.
    adapt : bool, default=False
        What to do when a class present among the split samples has fewer
        than ``cv`` of them. ``False``: raise, naming the class. ``True``:
        stratified folds of that class's size when it has at least 2
        samples, otherwise plain shuffled folds (not stratified), never
        more folds than samples. Small target sets (2-3 samples per class)
        are then cross-fitted instead of refused.

    Returns
    -------
    fold_of : ndarray of int8 (int32 beyond 127 folds) of shape (n,)
    n_folds : int
        The number of folds made (``cv`` unless ``adapt`` lowered it).
    """
    n = len(y)
    where = "" if target is None else "target "
    idx = None if target is None else np.flatnonzero(target)
    y_in = y if idx is None else y[idx]
    counts = np.bincount(y_in, minlength=n_classes)
    present = counts[counts > 0]
    short = [c for c in range(n_classes) if 0 < counts[c] < cv]
    splitter = StratifiedKFold(n_splits=cv, shuffle=True, random_state=random_state)
    if short and not adapt:
        c = min(short, key=lambda c: counts[c])
        total = "" if target is None else f" (of {int((y == c).sum())} in all)"
        raise ValueError(
            f"cv={cv} folds need at least {cv} {where}samples of every class present "
            f"in the {where or 'training '}data; class {c} has {counts[c]}{total}"
            + (f", and {len(short) - 1} more class(es) are short" if len(short) > 1 else "")
            + "."
        )
    if short:
        smallest = int(present.min())
        if smallest >= 2:
            splitter = StratifiedKFold(n_splits=smallest, shuffle=True,
                                       random_state=random_state)
        else:
            splitter = KFold(n_splits=int(min(cv, len(y_in))), shuffle=True,
                             random_state=random_state)
    n_folds = splitter.get_n_splits()
    if n_folds < 2:
        raise ValueError(f"{len(y_in)} {where}sample(s) cannot be split into folds; "
                         "cross-fitting needs at least 2.")
    fold_of = np.full(n, -1, dtype=np.int8 if n_folds < 128 else np.int32)
    # np.zeros is only a length here (calloc'd pages that are never touched)
    for f, (_, va) in enumerate(splitter.split(np.zeros(len(y_in)), y_in)):
        fold_of[va if idx is None else idx[va]] = f
    return fold_of, n_folds


def order_without_each_fold(fold_scores):
    """Per fold, each sample's mean score over the *other* folds, in place.

    ``fold_scores`` (n_folds, n) holds each fold's scores of the samples it
    was trained on and NaN for the samples it held out; on return row ``f``
    is the score of every sample computed without fold ``f`` -- the order in
    which ``max_remove="auto"`` removes candidates when judging on fold
    ``f``. A sample held out in fold ``f`` gets its mean over the folds that
    trained on it; one trained on in no other fold (two folds) its overall
    score.
    """
    with np.errstate(invalid="ignore"):
        total = np.nansum(fold_scores, 0)
        count = np.isfinite(fold_scores).sum(0)
    overall = total / np.maximum(count, 1)
    for f, row in enumerate(fold_scores):
        trained = np.isfinite(row)
        rest = count - trained
        out = np.where(rest > 0, (total - np.where(trained, row, 0.0)) / np.maximum(rest, 1),
                       overall)
        fold_scores[f] = out
    return fold_scores


def cross_fit_head_influence(F, y, *, n_classes, cv=5, alpha, val_trim="auto",
                             damping="auto", hessian="exact", solver="auto",
                             random_state=None, verbose=0, device="cpu", tol=1e-10,
                             target=None, chunk_size="auto", self_influence=False,
                             adapt_folds=False, return_order=False):
    """Cross-fitted head influence of every sample (features computed once).

    For each of ``cv`` stratified folds the head is fitted exactly on the
    other folds, the fold serves as validation set (weighted by
    :func:`trim_weights` with ``user_given=False``) and the training samples
    get their influence on it. A sample's score is the mean over the folds
    in which it was trained on.

    With ``target``, the folds run over the target samples only: each
    target fold in turn is the validation set of a head fitted on everything
    else (all non-target samples and the other target folds). Target samples
    are then scored out of fold (mean over the ``cv - 1`` folds they were
    trained in), non-target samples against every target fold (mean over all
    ``cv`` folds), so every score measures the effect on the target loss.

    Memory beyond the features grows with ``n`` only through the outputs
    (``oof_proba``: ``8 k`` bytes a sample), one ``(n, k)`` float64 buffer
    of probabilities shared by the folds, and a few vectors of length ``n``.

    Parameters
    ----------
    F : array-like of shape (n, d)
        Features: an ndarray, a ``numpy.memmap`` or any array-like with row
        slicing, read by chunks (nothing of size ``n × d`` is held in
        float64; a fold is a set of row indices, never a copy).
    y : array-like of int of shape (n,)
        Labels ``0..n_classes-1``.
    n_classes : int
        Number of classes ``k``.
    cv : int, default=5
        Number of stratified folds (shuffled with ``random_state``).
    alpha : float
        L2 strength of the head objective.
    val_trim : "auto" or float, default="auto"
        See :func:`trim_weights`.
    damping : "auto" or float, default="auto"
        See :func:`head_influence`.
    hessian : {"exact", "identity"}, default="exact"
        ``"identity"`` gives gradient similarity.
    solver : {"auto", "cholesky", "cg"}, default="auto"
        Solver of each fold. ``"auto"``: :func:`choose_solver` weighs the
        dense build against CG for the fold's size, and takes the Cholesky
        whenever ``k (d+1)`` allows if ``self_influence=True``.
    random_state : int, RandomState or None, default=None
        Shuffles the folds.
    verbose : int, default=0
        Show a progress bar over the folds when > 0.
    device : str, default="cpu"
        Torch device for the algebra (chunks move there one at a time).
    tol : float, default=1e-10
        Relative residual tolerance of CG.
    target : array-like of bool of shape (n,), optional
        Which samples belong to the target domain. Every class present among
        the target samples needs at least ``cv`` of them. A class absent from
        the target part is still learnt by every fold head (from the
        non-target samples) but never validated on: its samples are scored
        only by their effect on the target classes. ``None``: every sample is
        target (the behaviour without this parameter, fold for fold).
    chunk_size : int or "auto", default="auto"
        Rows per chunk; ``"auto"`` keeps a moderate in-memory array whole
        and reads anything else in chunks of about 1 MiB of float64.
    self_influence : bool, default=False
        Compute the exact self-influence ``(1/n_fold) ∇L_iᵀ H⁻¹ ∇L_i`` of
        every held-out sample (``oof_self_influence``). It needs a dense
        Cholesky factor of each fold's Hessian: ``k (d+1)`` squared float64
        values (210 MB at d = 512, k = 10) and about ``n k² (d+1)²`` flops
        to build, 13 times the CG solve per sample at d = 512, so it is off
        by default and ``oof_self_influence`` is then the squared gradient
        norm ``(1/n_fold) ‖∇L_i‖²``. When ``k (d+1)`` exceeds 20,500 no
        factor is built and the gradient norm is returned with a warning.
        With ``solver="cg"`` it is an error.
    adapt_folds : bool, default=False
        When a class has fewer than ``cv`` samples to split: ``False`` raises,
        ``True`` makes fewer (or unstratified) folds (see :func:`make_folds`);
        ``len(result.damping)`` is the number of folds made.
    return_order : bool, default=False
        Also return ``order_scores`` (``(n_folds, n)``: every sample's score
        computed without each fold, see :func:`order_without_each_fold`),
        what ``max_remove="auto"`` orders candidates by; ``n_folds × n``
        float64 values more.

    Returns
    -------
    result : CrossFitResult
        With ``target``, ``oof_proba`` and ``oof_loss`` of the non-target
        samples are in-sample (the mean over folds of the probabilities of
        fold heads trained on them), and their ``oof_self_influence`` is NaN
        (they are never held out).
    """
    chunks = _check_features(F, "F", chunk_size=chunk_size, device=device)
    y = _check_labels(y, n_classes, "y")
    n = chunks.n
    if len(y) != n:
        raise ValueError(f"F has {n} rows but y has {len(y)} labels.")
    if hessian not in ("exact", "identity"):
        raise ValueError(f"hessian must be 'exact' or 'identity', got {hessian!r}.")
    if not isinstance(self_influence, (bool, np.bool_)):
        raise ValueError(f"self_influence must be True or False, got {self_influence!r}.")
    if target is not None:
        target = _check_target(target, n)
    k = int(n_classes)
    dp = chunks.d + 1
    si_kind = "identity"
    if self_influence and hessian == "exact":
        if solver == "cg":
            raise ValueError(
                "self_influence=True needs a dense factor of each fold's Hessian; "
                "use solver='auto' or 'cholesky', not 'cg'.")
        if k * dp > DENSE_MAX_DIM and solver == "auto":
            warnings.warn(
                f"self_influence=True: k (d+1) = {k * dp} is too large for a dense "
                f"factor (at most {DENSE_MAX_DIM}); oof_self_influence is the "
                "gradient norm instead.", UserWarning, stacklevel=2)
        else:
            si_kind = "exact"
    fold_of, cv = make_folds(y, cv, n_classes=k, target=target,
                             random_state=random_state, adapt=adapt_folds)
    # Outputs and the sums behind them: the only arrays of length n besides
    # the features' own chunks (a sample's fold count is known, not counted).
    score_sum = np.zeros(n)
    fold_scores = np.full((cv, n), np.nan) if return_order else None
    oof_proba = np.zeros((n, k))
    oof_self = np.full(n, np.nan)
    # One probability buffer for every fold: fold f uses its first
    # n_train rows for the training samples and the rest for the held-out ones.
    work = torch.empty(n, k, dtype=torch.float64, device=chunks.device)
    weights, dampings, residuals, solvers = [], [], [], []
    seconds, passes = {}, {}
    init = None
    for f in tqdm(range(cv), desc="cross-fit", disable=verbose <= 0, leave=False):
        tr, va = fold_indices(fold_of, f)
        y_va = y[va]

        def fold_weights(P_val, y_va=y_va):
            pv = P_val.cpu().numpy()
            loss = -np.log(np.clip(np.take_along_axis(pv, y_va[:, None], 1)[:, 0],
                                   1e-300, None))
            return trim_weights(loss, pv.argmax(1), y_va, val_trim, user_given=False)

        va_chunks = chunks.subset(va)
        res = _score_head(chunks.subset(tr), y[tr], va_chunks, y_va, n_classes=k,
                          alpha=alpha, damping=damping, hessian=hessian,
                          solver="cholesky" if si_kind == "exact" and solver == "auto"
                          else solver, val_weights=fold_weights, tol=tol,
                          need_factor=si_kind == "exact", verbose=verbose, work=work,
                          init=init)
        # The folds' heads are fitted on largely the same samples: each starts
        # from the previous one, which skips the first Newton steps (cv=3 on
        # 200k memmapped rows: 166 passes over the features instead of 177).
        # The fit still runs to the same tolerance: scores agree with cold
        # per-fold fits to about 1e-12 relative.
        init = (res.W, res.b)
        for key, value in res.seconds.items():
            seconds[key] = seconds.get(key, 0.0) + value
        for key, value in res.passes.items():
            passes[key] = passes.get(key, 0) + value
        t0 = time.perf_counter()
        weights.append(res.val_weights)
        dampings.append(res.damping)
        residuals.append(res.residual)
        solvers.append(res.solver)
        oof_proba[va] = res.P_val.cpu().numpy()
        score_sum[tr] += res.scores
        if fold_scores is not None:
            fold_scores[f, tr] = res.scores
        if target is not None:
            # Non-target samples are never held out: their probabilities are
            # the in-sample mean over the fold heads.
            pos = np.flatnonzero(~target[tr])
            for s in range(0, len(pos), _ROWS):
                p = pos[s:s + _ROWS]
                oof_proba[tr[p]] += res.P[torch.as_tensor(p, device=res.P.device)].cpu().numpy()
        with limit_threads():
            oof_self[va] = _self_influence(res, va_chunks, si_kind, alpha, damping, len(tr))
        seconds["self_influence"] = seconds.get("self_influence", 0.0) + (
            time.perf_counter() - t0)
        del res, tr, va, va_chunks
        trim_heap()
    del work
    if target is None:
        score_sum /= cv - 1
    else:
        # target samples were trained on in cv - 1 folds, the others in all cv
        score_sum[target] /= cv - 1
        others = np.flatnonzero(~target)
        score_sum[others] /= cv
        for s in range(0, len(others), _ROWS):
            oof_proba[others[s:s + _ROWS]] /= cv
    scores = score_sum
    oof_loss = np.take_along_axis(oof_proba, y[:, None], 1)[:, 0]
    np.clip(oof_loss, 1e-300, None, out=oof_loss)
    np.log(oof_loss, out=oof_loss)
    np.negative(oof_loss, out=oof_loss)
    held_out = slice(None) if target is None else target
    for name, arr in (("scores", scores), ("oof_self_influence", oof_self[held_out])):
        if not np.isfinite(arr).all():
            raise FloatingPointError(f"cross-fitted {name} are not finite; increase alpha.")
    trim_heap()
    return CrossFitResult(
        scores=scores, oof_proba=oof_proba, oof_loss=oof_loss,
        oof_self_influence=oof_self, self_influence_hessian=si_kind, fold_of=fold_of,
        val_weights_per_fold=weights, damping=dampings, residual=residuals,
        solver=solvers[0] if len(set(solvers)) == 1 else "/".join(sorted(set(solvers))),
        seconds=seconds, target=target, passes=passes,
        order_scores=None if fold_scores is None else order_without_each_fold(fold_scores),
    )


def _self_influence(res, va_chunks, si_kind, alpha, damping, n_train):
    """Self-influence of the held-out samples of one fold (see ``CrossFitResult``)."""
    P, yv = res.P_val, res.y_val
    if si_kind == "exact":
        q = res.solve.quad_forms(res.design_val, P, yv)
        # Held-out features may leave the span of the training features;
        # there H is the penalty alone (the whitening dropped it).
        curv = alpha + (res.damping if damping != "auto" else 0.0)
        if curv > 0:
            for sl, Xc in res.design_val:
                r2 = (_residuals(P[sl], yv[sl]) ** 2).sum(1)
                q[sl] += r2 * res.coords.perp_sq(Xc) / curv
    else:
        # ‖r aᵀ‖² = ‖r‖² ‖a‖² in the original coordinates: no per-sample matrix.
        q = torch.empty(va_chunks.n, dtype=torch.float64, device=P.device)
        for sl, X in va_chunks:
            q[sl] = (_residuals(P[sl], yv[sl]) ** 2).sum(1) * ((X**2).sum(1) + 1.0)
    return (q / n_train).cpu().numpy()

"""Influence through any subset of network parameters (``params="all"`` or patterns).

θ̂ here is the pretrained (or fine-tuned) point, not a minimiser of the
target objective, so the exact Hessian is usually indefinite: the default is
the Gauss–Newton matrix (GGN), always positive semi-definite, plus damping.

Three steps: gradients (the validation gradient ``g``), solve
(``s = (H + λ I)⁻¹ g`` by one solver class of :mod:`._deep_solvers` on one
:class:`~._operator.CurvatureOperator`), scores (``(1/n) ∇L_iᵀ s`` for every
training sample: one forward-mode ``jvp`` of the per-sample loss vector per
chunk, so no per-sample gradient is ever formed and memory stays
O(batch × activations), never O(n × parameters)).

When the analysed parameters are a suffix of the network (the last block and
the head), the prefix runs once in inference mode and everything else runs
through the suffix only (:mod:`._prefix`).
"""

import time

import numpy as np
import torch

from ..utils import check_X, resolve_device, torch_generator
from . import _deep_solvers, _options
from ._deep_solvers import (
    SOLVERS,
    CGSolver,
    EKFACSolver,
    IdentitySolver,
    NystromPreconditioner,
)
from ._ekfac import EKFAC
from ._features import eval_mode
from ._operator import CurvatureOperator, _Data, _Model
from ._params import select_parameters
from ._prefix import PrefixCache, find_cut, prefix_cache
from ._results import InfluenceResult

_HESSIANS = ("ggn", "exact", "ekfac", "identity")
_SUFFIX_BATCH_BYTES = 32 << 20


def _val_weights(val_weights, m):
    """Validation weights as an ``(m, q)`` array whose columns sum to one."""
    if val_weights is None:
        return np.full((m, 1), 1.0 / m)
    w = np.asarray(val_weights, dtype=np.float64)
    if w.ndim == 1:
        w = w[:, None]
    if (w.ndim != 2 or w.shape[0] != m or w.shape[1] < 1 or not np.isfinite(w).all()
            or (w < 0).any() or (w.sum(0) <= 0).any()):
        raise ValueError("val_weights must be finite, >= 0, not all zero, one per X_val "
                         "row (shape (m,) or (m, q)).")
    return w / w.sum(0)


def _inputs(X, name, cut, prefix, net, batch_size, device, verbose):
    """Raw inputs, or the prefix activations (cached here or given)."""
    if isinstance(X, PrefixCache):
        if prefix is False:
            raise ValueError(f"{name} is a PrefixCache but prefix=False.")
        X.check(cut)
        return X
    X = check_X(X, name=name)
    if cut is None:
        return X
    return prefix_cache(net, X, params=None, cut=cut, batch_size=batch_size,
                        device=device, verbose=verbose)


def _make_solver(hessian, solver, operator, damping, opts, gen):
    """The solver object for ``hessian`` / ``solver`` and its damping.

    ``opts`` is the solver's typed options (:mod:`._options`).
    """
    if hessian == "identity":
        return IdentitySolver(operator, 0.0)
    if hessian == "ekfac":
        return EKFACSolver(operator, damping, generator=gen,
                           n_label_samples=opts.n_label_samples,
                           measure_residual=opts.measure_residual)
    pre = opts.preconditioner if solver == "cg" else None
    auto = isinstance(damping, str) and damping == "auto"
    if pre == "auto":
        pre = "blocks" if auto else None
    ekfac = means = None
    if pre == "ekfac":
        ekfac = EKFAC(operator, n_label_samples=opts.n_label_samples,
                      generator=gen).fit(verbose=operator.verbose)
    if auto or pre == "blocks":
        means = (ekfac.block_mean_eigenvalues() if ekfac is not None and hessian == "ggn"
                 else operator.block_mean_eigenvalues(gen))
    if auto:
        factor = _deep_solvers.GGN_DAMPING_FACTOR
        damping = operator.model.per_block({k: factor * v for k, v in means.items()})
        if solver == "arnoldi":  # a low-rank inverse needs one scalar
            damping = float(damping.double().mean())
    if pre == "blocks":
        # Scale each module's block by its mean eigenvalue (plus damping):
        # blocks of very different curvature scales (BatchNorm vs conv
        # weights) otherwise set the condition number.
        pre = operator.model.per_block(means) + damping + operator.alpha
    elif pre == "nystrom":
        pre = NystromPreconditioner(operator, damping, rank=opts.rank,
                                    generator=gen).fit()
    else:
        pre = ekfac
    if solver == "cg":
        return CGSolver(operator, damping, preconditioner=pre, tol=opts.tol,
                        max_iter=opts.max_iter, on_failure=opts.on_failure)
    if solver == "lissa":
        return SOLVERS["lissa"](operator, damping, depth=opts.depth, scale=opts.scale,
                                batch_size=opts.lissa_batch_size, tol=opts.tol,
                                generator=gen)
    return SOLVERS["arnoldi"](operator, damping, n_iter=opts.n_iter, rank=opts.rank,
                              generator=gen)


def deep_influence(net, X_train, y_train, X_val, y_val, *, params="all", hessian="ggn",
                   solver="cg", damping="auto", alpha=0.0, val_weights=None,
                   chunk_size=64, batch_size=256, device="cpu", verbose=0,
                   prefix="auto", score_val=False, **solver_options):
    """Influence through the selected network parameters.

    ``scores[i] = (1/n) g_valᵀ (H + damping I)⁻¹ ∇L_i``, where ``H`` is the
    Hessian of the objective ``J(θ) = (1/n) Σ_i L_i(θ) + (alpha/2) ‖θ_w‖²``
    over the selected parameters θ at their current values (``θ_w``: the
    selected parameters except biases, which are not penalised — the same
    convention as the head path), computed as the Gauss–Newton matrix
    (``hessian="ggn"``), the exact Hessian (``"exact"``), an EK-FAC
    approximation of the GGN (``"ekfac"``) or the identity (gradient
    similarity). The score is the predicted increase of the mean validation
    loss if training sample ``i`` is removed (positive = helpful). Other
    parameters and all buffers are held fixed; the network runs in eval mode
    (BatchNorm running statistics, no dropout) and is never modified.

    Parameters
    ----------
    net : torch.nn.Module
        Network producing logits ``(N, k)``.
    X_train : ndarray, torch Dataset or PrefixCache
        Training inputs, or their cached prefix activations
        (:func:`prefix_cache`, possibly ``cache.rows(idx)``).
    y_train : array-like of int of shape (n,)
        Labels ``0..k-1``.
    X_val : ndarray, torch Dataset or PrefixCache
        Validation inputs, as ``X_train``.
    y_val : array-like of int of shape (m,)
        Labels ``0..k-1``.
    params : "all", str or list of str, default="all"
        Patterns as for ``freeze=`` (see :func:`select_parameters`).
    hessian : {"ggn", "exact", "ekfac", "identity"}, default="ggn"
        ``"exact"`` uses exact Hessian-vector products; when the damped
        exact Hessian is not positive definite, CG raises and names
        ``hessian="ggn"`` as the fix.
    solver : {"cg", "lissa", "arnoldi"}, default="cg"
        Ignored for ``"ekfac"`` (its inverse is explicit) and ``"identity"``.
    damping : "auto" or float, default="auto"
        Added to the Hessian. ``"auto"``: on the parameters of each module,
        a factor times the mean eigenvalue of that module's diagonal block
        of ``H`` (its trace over its size). The factor is 0.1 for
        ``hessian="ekfac"`` (kronfluence's rule) and 1.0 for solves on the
        GGN or exact Hessian: on a fine-tuned CNN the leave-subset-out
        fidelity (LDS) of converged GGN-CG scores was 0.64 at 0.1 and 0.69
        at 1.0 (0.60 and 0.74 with another seed), about flat up to 10, while
        EK-FAC's own LDS fell as its damping grew. The mean is estimated
        from the EK-FAC statistics when they are computed (``hessian="ekfac"``
        or an EK-FAC-preconditioned CG on the GGN) and by Hutchinson's
        diagonal estimator on one training batch otherwise; one scalar (the
        mean of those) for Arnoldi; 0 for ``"identity"``. The result's
        ``damping`` is then the mean over parameters and
        ``info["damping_per_module"]`` has each module's value.
    alpha : float, default=0.0
        L2 strength of the objective above (``+ alpha`` on the Hessian's
        diagonal for every selected weight, not for biases).
    val_weights : array-like of shape (m,) or (m, q), optional
        ``g_val = Σ w_v ∇L_v / Σ w_v``. With ``q`` columns, ``q``
        validation objectives share one solver set-up (damping estimate,
        EK-FAC factors, preconditioner) and ``scores`` has shape ``(n, q)``.
    chunk_size : int, default=64
        Samples per chunk in the scoring pass (memory).
    batch_size : int, default=256
        Samples per batch in Hessian-vector products and EK-FAC statistics.
        With a cached prefix, batches (and scoring chunks) grow to hold up
        to 32 MiB of cached activations, at most all rows: the suffix is
        cheap in memory and large batches are several times faster.
    device : str, default="cpu"
        Where the computation runs (``"auto"``: CUDA when available); the
        network is moved there and back.
    verbose : int, default=0
        Progress bars when > 0 (per Hessian-vector pass when > 1).
    prefix : "auto" or bool, default="auto"
        Frozen-prefix caching: when the selected parameters are a suffix of
        the network (found with ``torch.fx``), run the part before them once
        and everything else through the suffix. ``"auto"`` caches when
        possible, ``True`` raises when it is not, ``False`` never caches.
    score_val : bool, default=False
        Also apply the score to the validation rows (``info["val_scores"]``,
        shaped like ``scores``): for a row outside the training set it is
        the predicted *decrease* of the validation loss if the row were added
        (higher = helps, as for the training rows).
    **solver_options
        CG: ``tol`` (1e-3, relative residual), ``max_iter`` (500),
        ``preconditioner`` (``"auto"``: ``"blocks"`` with ``damping="auto"``,
        none otherwise; ``"blocks"``: each module's parameters scaled by that
        block's mean eigenvalue plus damping, 1.5x fewer iterations on a
        fine-tuned CNN; ``"ekfac"``: EK-FAC's damped inverse, which cut the
        measured condition number of a random-weight ResNet-18's last block
        70-fold but tripled the iterations on a fine-tuned small CNN, and
        costs one EK-FAC fit; ``"nystrom"``: a randomized Nyström
        preconditioner (Frangella, Tropp & Udell) from ``rank`` products of
        the damping-scaled operator with a random sketch, which maps its top
        ``rank`` eigenvalues to about the ``rank``-th; needs ``damping > 0``,
        costs ``rank`` Hessian-vector products and holds ``rank`` flat
        parameter vectors (two while fitting); ``None``), ``rank`` (32, with
        ``"nystrom"`` only), ``on_failure`` (``"warn"``: a
        ``sklearn.exceptions.ConvergenceWarning`` when ``tol`` is not
        reached; ``"raise"``: ``RuntimeError``). LiSSA: ``depth`` (1000),
        ``scale`` (power-iteration estimate), ``lissa_batch_size``
        (``batch_size``), ``tol`` (1e-8, relative step). Arnoldi: ``n_iter``
        (100), ``rank`` (20). EK-FAC (solver or preconditioner):
        ``n_label_samples`` (1), ``measure_residual`` (True). All:
        ``random_state`` (0).

    Returns
    -------
    result : InfluenceResult
        ``damping`` and ``solver`` as used; ``residual`` is the relative
        residual ``‖(H + damping I) s − g‖ / ‖g‖`` measured against the
        operator for every solver (0 for ``"identity"``; NaN only with
        ``measure_residual=False``); ``n_iter`` the solver iterations;
        ``info`` holds ``prefix_cut`` (the cached activation, or None),
        ``passes`` (Hessian-vector products over the training data, the
        cost unit of a solve) and solver extras.

    Raises
    ------
    ValueError
        Invalid options, NaN/inf inputs, layers EK-FAC does not support, or a
        PrefixCache that does not belong to this network and these params.
    RuntimeError
        CG that meets non-positive curvature (``hessian="exact"``: use
        ``"ggn"``) or stays above ``tol`` with ``on_failure="raise"``.
    FloatingPointError
        Non-finite gradients or scores.
    """
    t0 = time.perf_counter()
    if hessian not in _HESSIANS:
        raise ValueError(f"hessian must be one of {_HESSIANS}, got {hessian!r}.")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be 'cg', 'lissa' or 'arnoldi', got {solver!r}.")
    if prefix not in ("auto", True, False):
        raise ValueError(f"prefix must be 'auto', True or False, got {prefix!r}.")
    # typed options: a misspelt one fails here, before any gradient
    opts = _options.solver_options("deep", solver, solver_options, hessian=hessian)
    if not (isinstance(damping, str) and damping == "auto"):
        damping = float(damping)
        if not np.isfinite(damping) or damping < 0:
            raise ValueError(f"damping must be 'auto' or a float >= 0, got {damping}.")
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a float >= 0, got {alpha}.")
    device = resolve_device(device)
    names = select_parameters(net, params)
    y_train = np.asarray(y_train).astype(np.int64)
    y_val = np.asarray(y_val).astype(np.int64)
    n, m = len(y_train), len(y_val)
    if len(X_train) != n or len(X_val) != m:
        raise ValueError(f"X_train/y_train have {len(X_train)}/{n} rows and X_val/y_val "
                         f"{len(X_val)}/{m}: inconsistent lengths.")
    one_column = val_weights is None or np.ndim(val_weights) == 1
    w = _val_weights(val_weights, m)
    gen = torch_generator(opts.random_state)
    cached = isinstance(X_train, PrefixCache) or isinstance(X_val, PrefixCache)
    cut = find_cut(net, names) if (prefix is not False or cached) else None
    if prefix is True and cut is None:
        raise ValueError(f"prefix=True but params={params!r} are not a suffix of "
                         f"{type(net).__name__} that torch.fx can split off.")
    orig_device = next(net.parameters()).device
    seconds, info = {}, {"prefix_cut": None if cut is None else cut.node_name}
    try:
        net.to(device)
        with eval_mode(net), torch.enable_grad():
            t = time.perf_counter()
            common = (cut, prefix, net, batch_size, device, verbose)
            X_train = _inputs(X_train, "X_train", *common)
            X_val = _inputs(X_val, "X_val", *common)
            seconds["prefix"] = time.perf_counter() - t
            if isinstance(X_train, PrefixCache):
                # The suffix is cheap in memory and large batches run several
                # times faster per sample (measured 2.6x from 256 to 1000 rows
                # on ResNet-18's last block): batch up to _SUFFIX_BATCH_BYTES
                # of cached activations.
                row = X_train.activations[0].nbytes
                batch_size = max(batch_size, min(n, _SUFFIX_BATCH_BYTES // max(row, 1)))
                chunk_size = max(chunk_size, batch_size)
            model = _Model(net if cut is None else cut.suffix, names, device)
            train = _Data(X_train, y_train, device, model.dtype)
            val = _Data(X_val, y_val, device, model.dtype)
            operator = CurvatureOperator(
                model, train, hessian="exact" if hessian == "exact" else "ggn",
                alpha=alpha, batch_size=batch_size, verbose=verbose)
            # --- gradients ---------------------------------------------------
            t = time.perf_counter()
            gs = [operator.mean_gradient(val, w[:, j]) for j in range(w.shape[1])]
            if not all(torch.isfinite(g).all() for g in gs):
                raise FloatingPointError("The validation gradient is not finite.")
            seconds["gradients"] = time.perf_counter() - t
            # --- solve -------------------------------------------------------
            t = time.perf_counter()
            sol = _make_solver(hessian, solver, operator, damping, opts, gen)
            seconds["setup"] = time.perf_counter() - t
            t = time.perf_counter()
            sols, residuals, iters = [], [], []
            for g in gs:
                sols.append(sol.solve(g))
                residuals.append(float(sol.residual_))
                iters.append(int(sol.n_iter_))
            seconds["solve"] = time.perf_counter() - t
            # --- scores ------------------------------------------------------
            t = time.perf_counter()
            scores = np.stack([operator.directional_derivatives(train, s_, chunk_size) / n
                               for s_ in sols], 1)
            if score_val:
                info["val_scores"] = np.stack(
                    [operator.directional_derivatives(val, s_, chunk_size) / n
                     for s_ in sols], 1)
            seconds["scores"] = time.perf_counter() - t
            info.update(sol.info_)
            info["passes"] = operator.n_passes
            if isinstance(sol, CGSolver):
                pre = sol.preconditioner
                info["preconditioner"] = (None if pre is None else "blocks"
                                          if torch.is_tensor(pre) else "nystrom"
                                          if isinstance(pre, NystromPreconditioner)
                                          else "ekfac")
    finally:
        net.to(orig_device)
    if not np.isfinite(scores).all():
        raise FloatingPointError(
            "deep influence produced non-finite scores; increase damping or "
            "check the inputs.")
    if one_column:
        scores = scores[:, 0]
        if score_val:
            info["val_scores"] = info["val_scores"][:, 0]
    seconds["total"] = time.perf_counter() - t0
    if torch.is_tensor(sol.damping):
        info["damping_per_module"] = {
            k: float(sol.damping[idx[0]]) for k, idx in model.blocks().items()}
    return InfluenceResult(scores=scores, damping=sol.damping_value, solver=sol.name,
                           hessian=hessian, residual=max(residuals),
                           n_iter=max(iters), seconds=seconds, params=names,
                           info=info)

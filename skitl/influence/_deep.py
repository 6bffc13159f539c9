"""Influence through any subset of network parameters (``params="all"`` or globs).

θ̂ here is the pretrained (or fine-tuned) point, not a minimiser of the
target objective, so the exact Hessian is usually indefinite: the default is
the Gauss–Newton matrix (GGN), always positive semi-definite, plus damping.

Cost model: one CG / LiSSA / Arnoldi iteration is one pass over the training
data (forward + ``jvp`` + ``vjp``). After ``s = H⁻¹ g_val`` is known, the score
of every training sample is a directional derivative ``(1/n) ∇L_iᵀ s``,
obtained for a whole batch with one forward-mode ``jvp`` of the per-sample
loss vector: no per-sample gradient is ever formed, and memory stays
O(batch × activations), never O(n × parameters).
"""

import fnmatch
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as nnf
from torch.func import functional_call, grad, jvp, vjp
from tqdm.auto import tqdm

from ..utils import check_X, resolve_device, torch_generator
from ._features import eval_mode, iter_batches
from ._results import InfluenceResult
from ._solvers import arnoldi, arnoldi_solve, conjugate_gradient, lissa


def select_parameters(net, params):
    """Names of the parameters analysed.

    Parameters
    ----------
    net : torch.nn.Module
    params : "all", str or list of str
        ``"all"`` or fnmatch patterns over ``net.named_parameters()``.

    Returns
    -------
    names : list of str
        In ``named_parameters`` order.

    Raises
    ------
    ValueError
        If a pattern matches nothing.
    """
    names = [n for n, _ in net.named_parameters()]
    if params == "all":
        return names
    if isinstance(params, str):
        params = [params]
    params = list(params)
    chosen = []
    for pat in params:
        hits = fnmatch.filter(names, pat)
        if not hits:
            raise ValueError(
                f"params pattern {pat!r} matches no parameter of {type(net).__name__} "
                f"(first names: {names[:6]}).")
        chosen.extend(hits)
    return [n for n in names if n in set(chosen)]


class _Flat:
    """Map between a dict of parameter tensors and one flat vector."""

    def __init__(self, tensors):
        self.names = list(tensors)
        self.shapes = [tensors[n].shape for n in self.names]
        self.sizes = [tensors[n].numel() for n in self.names]

    def flatten(self, d):
        return torch.cat([d[n].reshape(-1) for n in self.names])

    def unflatten(self, v):
        out, s = {}, 0
        for n, shape, size in zip(self.names, self.shapes, self.sizes):
            out[n] = v[s:s + size].view(shape)
            s += size
        return out


class _Model:
    """The network as a function of the analysed parameters only."""

    def __init__(self, net, names, device):
        self.net = net
        named = dict(net.named_parameters())
        self.theta = {n: named[n].detach().to(device) for n in names}
        self.consts = {n: p.detach().to(device) for n, p in named.items() if n not in self.theta}
        self.consts.update({n: b.to(device) for n, b in net.named_buffers()})
        self.flat = _Flat(self.theta)
        self.dtype = next(iter(self.theta.values())).dtype
        self.device = device

    def logits(self, theta, x):
        out = functional_call(self.net, {**self.consts, **theta}, (x,))
        return out.reshape(len(x), -1)

    def losses(self, theta, x, y):
        return nnf.cross_entropy(self.logits(theta, x), y, reduction="none")


def _batches(X, y, batch_size, device, dtype, w=None):
    for xb, sl in iter_batches(X, batch_size, with_index=True):
        xb = xb.to(device=device, dtype=dtype if xb.is_floating_point() else None)
        yb = torch.as_tensor(y[sl], device=device)
        if w is None:
            yield xb, yb
        else:
            yield xb, yb, torch.as_tensor(w[sl], device=device, dtype=dtype)


def _ce_hessian_product(z, u):
    # (diag p − p pᵀ) u per sample, in float64 (DESIGN.md numerics).
    p = torch.softmax(z.double(), 1)
    u = u.double()
    return (p * u - p * (p * u).sum(1, keepdim=True)).to(z.dtype)


def _gnh_batch(model, theta, xb, v):
    f = lambda th: model.logits(th, xb)  # noqa: E731
    z, jv = jvp(f, (theta,), (v,))
    _, vjp_fn = vjp(f, theta)
    return vjp_fn(_ce_hessian_product(z, jv))[0]


def _exact_hvp_batch(model, theta, xb, yb, v):
    g = grad(lambda th: model.losses(th, xb, yb).sum())
    return jvp(g, (theta,), (v,))[1]


def deep_influence(net, X_train, y_train, X_val, y_val, *, params="all", hessian="ggn",
                   solver="cg", damping="auto", alpha=0.0, val_weights=None,
                   chunk_size=64, batch_size=256, device="cpu", verbose=0,
                   **solver_options):
    """Influence through the selected network parameters.

    ``scores[i] = (1/n) g_valᵀ (H + (alpha + damping) I)⁻¹ ∇L_i`` with ``H``
    the Gauss–Newton matrix (``hessian="ggn"``), the exact Hessian
    (``"exact"``), an EK-FAC approximation of the GGN (``"ekfac"``) or the
    identity (gradient similarity) of the mean training loss with respect to
    the selected parameters, at their current values. Other parameters and
    all buffers are held fixed; the network runs in eval mode (BatchNorm
    running statistics, no dropout) and is never modified.

    Parameters
    ----------
    net : torch.nn.Module
        Network producing logits ``(N, k)``.
    X_train, X_val : ndarray or torch Dataset
    y_train, y_val : array-like of int
        Labels ``0..k-1``.
    params : "all", str or list of str, default="all"
        fnmatch patterns over ``net.named_parameters()``.
    hessian : {"ggn", "exact", "ekfac", "identity"}, default="ggn"
    solver : {"cg", "lissa", "arnoldi"}, default="cg"
        Ignored for ``"ekfac"`` (its inverse is explicit) and ``"identity"``.
    damping : "auto" or float, default="auto"
        ``"auto"``: ``1e-3`` times the mean eigenvalue of ``H`` (Hutchinson
        estimate ``tr(H)/p`` on one training batch) for ggn/exact, ``0.1``
        times the mean EK-FAC eigenvalue for ekfac (kronfluence's default),
        0 for identity.
    alpha : float, default=0.0
        L2 term of the objective, added to the Hessian.
    val_weights : array-like of shape (m,), optional
        ``g_val = Σ w_v ∇L_v / Σ w_v``.
    chunk_size : int, default=64
        Samples per chunk in the scoring pass and in EK-FAC's per-sample
        statistics (memory).
    batch_size : int, default=256
        Samples per batch in Hessian-vector products.
    device : str, default="cpu"
    verbose : int, default=0
    **solver_options
        CG: ``tol`` (1e-6), ``max_iter`` (100), ``on_failure`` ("warn" or
        "raise" when the residual stays above ``tol``; a deliberately
        truncated CG, e.g. ``max_iter=5``, is a valid regularised solve, so
        the default only warns and reports the residual). LiSSA: ``depth`` (1000),
        ``scale`` (power-iteration estimate), ``lissa_batch_size``
        (``batch_size``). Arnoldi: ``n_iter`` (100), ``rank`` (20).
        EK-FAC: ``n_label_samples`` (1). All: ``random_state`` (0).

    Returns
    -------
    result : InfluenceResult
        ``residual`` is the measured relative residual for CG and NaN for the
        approximate inverses; ``info`` holds solver extras.

    Raises
    ------
    ValueError
        Invalid options, NaN/inf inputs, unsupported layers for EK-FAC.
    RuntimeError
        CG that meets non-positive curvature or a non-finite residual, or
        stays above ``tol`` with ``on_failure="raise"``.
    FloatingPointError
        Non-finite scores.
    """
    t0 = time.perf_counter()
    if hessian not in ("ggn", "exact", "ekfac", "identity"):
        raise ValueError(f"hessian must be 'ggn', 'exact', 'ekfac' or 'identity', got {hessian!r}.")
    if solver not in ("cg", "lissa", "arnoldi"):
        raise ValueError(f"solver must be 'cg', 'lissa' or 'arnoldi', got {solver!r}.")
    device = resolve_device(device)
    X_train = check_X(X_train, name="X_train")
    X_val = check_X(X_val, name="X_val")
    y_train = np.asarray(y_train).astype(np.int64)
    y_val = np.asarray(y_val).astype(np.int64)
    n, m = len(X_train), len(X_val)
    if len(y_train) != n or len(y_val) != m:
        raise ValueError("X and y have inconsistent lengths.")
    if val_weights is None:
        w = np.full(m, 1.0 / m)
    else:
        w = np.asarray(val_weights, dtype=np.float64)
        if w.shape != (m,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError("val_weights must be finite, >= 0, not all zero, one per X_val row.")
        w = w / w.sum()
    opts = dict(solver_options)
    gen = torch_generator(opts.pop("random_state", 0))
    names = select_parameters(net, params)
    if not names:
        raise ValueError("No parameters selected.")
    orig_device = next(net.parameters()).device
    seconds = {}
    info = {}
    try:
        net.to(device)
        with eval_mode(net), torch.enable_grad():
            model = _Model(net, names, device)
            theta, flat = model.theta, model.flat
            dtype = model.dtype
            # --- validation gradient -------------------------------------
            t1 = time.perf_counter()
            gval = None
            for xb, yb, wb in _batches(X_val, y_val, batch_size, device, dtype, w):
                gb = grad(lambda th, xb=xb, yb=yb, wb=wb:
                          (model.losses(th, xb, yb) * wb).sum())(theta)
                gb = flat.flatten(gb)
                gval = gb if gval is None else gval + gb
            if not torch.isfinite(gval).all():
                raise FloatingPointError("The validation gradient is not finite.")
            seconds["gradients"] = time.perf_counter() - t1

            def hvp_batch(xb, yb, v):
                vd = flat.unflatten(v)
                if hessian == "exact":
                    out = _exact_hvp_batch(model, theta, xb, yb, vd)
                else:
                    out = _gnh_batch(model, theta, xb, vd)
                return flat.flatten(out)

            def full_hvp(v):
                acc = torch.zeros_like(v)
                for xb, yb in _batches(X_train, y_train, batch_size, device, dtype):
                    acc += hvp_batch(xb, yb, v)
                return acc / n + alpha * v

            # --- solve ---------------------------------------------------
            t2 = time.perf_counter()
            resid, n_iter, used = float("nan"), 0, solver
            if hessian == "identity":
                s, lam, used, resid = gval, 0.0, "none", 0.0
            elif hessian == "ekfac":
                from ._ekfac import EKFAC

                ek = EKFAC(model, names, n_label_samples=opts.pop("n_label_samples", 1),
                           generator=gen)
                ek.fit(X_train, y_train, chunk_size=chunk_size, verbose=verbose)
                lam = (0.1 * ek.mean_eigenvalue() if damping == "auto" else float(damping))
                s = ek.solve(gval, damping=lam + alpha)
                used = "ekfac"
                info["mean_eigenvalue"] = ek.mean_eigenvalue()
            else:
                lam = (_auto_damping(model, hvp_batch, X_train, y_train, batch_size,
                                     device, dtype, gen, theta, alpha)
                       if damping == "auto" else float(damping))
                if not np.isfinite(lam) or lam < 0:
                    raise ValueError(f"damping must be 'auto' or a float >= 0, got {damping}.")

                def op(v):
                    return full_hvp(v) + lam * v

                if solver == "cg":
                    tol = opts.pop("tol", 1e-6)
                    on_failure = opts.pop("on_failure", "warn")
                    s, cinfo = conjugate_gradient(op, gval, tol=tol,
                                                  max_iter=opts.pop("max_iter", 100),
                                                  verbose=verbose)
                    n_iter = cinfo["n_iter"]
                    resid = float(torch.linalg.norm(op(s) - gval) / torch.linalg.norm(gval))
                    # The recursion converges below the precision at which the
                    # true residual can be evaluated in float32; judge against it.
                    floor = 50 * torch.finfo(dtype).eps
                    if resid > max(tol, floor):
                        msg = (f"CG stopped after {n_iter} iterations at relative residual "
                               f"{resid:.2e} > tol={tol:g} (damping {lam:.3g}); raise "
                               "max_iter or damping.")
                        if on_failure == "raise":
                            raise RuntimeError(msg)
                        warnings.warn(msg, RuntimeWarning, stacklevel=2)
                elif solver == "lissa":
                    lbs = opts.pop("lissa_batch_size", batch_size)
                    stream = _cycle_batches(X_train, y_train, lbs, device, dtype)

                    def mb_op(v):
                        xb, yb = next(stream)
                        return hvp_batch(xb, yb, v) / len(xb) + alpha * v

                    s, linfo = lissa(mb_op, gval, damping=lam, depth=opts.pop("depth", 1000),
                                     scale=opts.pop("scale", None),
                                     tol=opts.pop("tol", 1e-8), generator=gen,
                                     verbose=verbose)
                    n_iter = linfo["n_iter"]
                    info.update(linfo)
                else:
                    evals, evecs = arnoldi(full_hvp, gval, n_iter=opts.pop("n_iter", 100),
                                           rank=opts.pop("rank", 20), generator=gen,
                                           verbose=verbose)
                    keep = evals + lam > 0
                    if not bool(keep.all()):
                        warnings.warn(
                            f"Arnoldi dropped {int((~keep).sum())} eigenpairs with "
                            "eigenvalue + damping <= 0 (indefinite Hessian).",
                            RuntimeWarning, stacklevel=2)
                    s = arnoldi_solve(evals[keep], evecs[keep], gval, damping=lam)
                    n_iter = len(evals)
                    info["eigenvalues"] = evals.cpu().numpy()
            if opts:
                raise TypeError(f"Unexpected solver options {sorted(opts)} for "
                                f"hessian={hessian!r}, solver={solver!r}.")
            seconds["solve"] = time.perf_counter() - t2
            # --- scores: one jvp of the per-sample loss vector per chunk ---
            t3 = time.perf_counter()
            sd = flat.unflatten(s.detach())
            scores = np.empty(n)
            bar = tqdm(total=n, desc="scores", disable=verbose <= 0, leave=False)
            for xb, sl in iter_batches(X_train, chunk_size, with_index=True):
                xb = xb.to(device=device, dtype=dtype if xb.is_floating_point() else None)
                yb = torch.as_tensor(y_train[sl], device=device)
                _, d = jvp(lambda th, xb=xb, yb=yb: model.losses(th, xb, yb), (theta,), (sd,))
                scores[sl] = d.double().cpu().numpy() / n
                bar.update(len(xb))
            bar.close()
            seconds["scores"] = time.perf_counter() - t3
    finally:
        net.to(orig_device)
    if not np.isfinite(scores).all():
        raise FloatingPointError(
            "deep influence produced non-finite scores; increase damping or "
            "check the inputs.")
    seconds["total"] = time.perf_counter() - t0
    return InfluenceResult(scores=scores, damping=float(lam), solver=used, hessian=hessian,
                           residual=float(resid), n_iter=int(n_iter), seconds=seconds,
                           params=names, info=info)


def _cycle_batches(X, y, batch_size, device, dtype):
    while True:
        yield from _batches(X, y, batch_size, device, dtype)


def _auto_damping(model, hvp_batch, X, y, batch_size, device, dtype, gen, theta, alpha,
                  n_probes=4, rel=1e-3):
    # Hutchinson estimate of tr(H)/p on one training batch: cheap and within
    # a small factor, which is all a relative damping needs.
    xb, yb = next(_batches(X, y, batch_size, device, dtype))
    p = model.flat.flatten(theta).numel()
    tr = 0.0
    for _ in range(n_probes):
        v = (torch.randint(0, 2, (p,), generator=gen) * 2 - 1).to(device=device, dtype=dtype)
        tr += float((v * hvp_batch(xb, yb, v)).sum()) / len(xb)
    mean_eig = abs(tr / n_probes) / p + alpha
    return rel * mean_eig

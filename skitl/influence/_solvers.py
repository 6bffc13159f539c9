"""Inverse-Hessian-vector solvers on matrix-free operators.

Every solver takes ``matvec``, a callable mapping a tensor to a tensor of the
same shape (a symmetric positive (semi-)definite operator, damping already
included), and the right-hand side ``b``. Tensors may have any shape; inner
products are taken over all entries. The solvers know nothing of networks, so
the head and the deep path share them and tests can check them on explicit
matrices.
"""

import math
import warnings

import torch
from tqdm.auto import tqdm


def _dot(a, b):
    return (a * b).sum()


def conjugate_gradient(matvec, b, *, x0=None, tol=1e-10, max_iter=None,
                       preconditioner=None, verbose=0, raise_on_failure=True):
    """(Preconditioned) conjugate gradient for ``A x = b``.

    Parameters
    ----------
    matvec : callable
        ``v -> A v`` for a symmetric positive definite ``A``.
    b : torch.Tensor
        Right-hand side (any shape).
    x0 : torch.Tensor, optional
        Starting point; zero by default.
    tol : float, default=1e-10
        Stop when ``‖A x − b‖ / ‖b‖ <= tol``.
    max_iter : int, optional
        Most iterations; ``10 * b.numel()`` by default.
    preconditioner : callable, optional
        ``r -> M⁻¹ r`` for a symmetric positive definite ``M``.
    verbose : int, default=0
        Show a progress bar when > 0.
    raise_on_failure : bool, default=True
        Raise ``RuntimeError`` when ``A`` shows non-positive curvature or the
        residual is not finite; otherwise return with ``converged=False``.
        A run that merely exhausts ``max_iter`` never raises here: the caller
        decides (the returned ``residual`` says how far it got).

    Returns
    -------
    x : torch.Tensor
    info : dict
        ``residual`` (relative, recomputed from the recursion), ``n_iter``,
        ``converged``, ``negative_curvature``.
    """
    # Finite precision loses conjugacy: allow well beyond the exact-arithmetic n.
    max_iter = 10 * b.numel() if max_iter is None else int(max_iter)
    bnorm = float(torch.linalg.norm(b))
    if bnorm == 0.0:
        return torch.zeros_like(b), {"residual": 0.0, "n_iter": 0, "converged": True,
                                     "negative_curvature": False}
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - matvec(x) if x0 is not None else b.clone()
    z = preconditioner(r) if preconditioner is not None else r
    p = z.clone()
    rz = _dot(r, z)
    info = {"residual": float(torch.linalg.norm(r)) / bnorm, "n_iter": 0,
            "converged": False, "negative_curvature": False}
    bar = tqdm(total=max_iter, desc="CG", disable=verbose <= 0, leave=False)
    for it in range(1, max_iter + 1):
        Ap = matvec(p)
        pAp = _dot(p, Ap)
        if not torch.isfinite(pAp) or pAp <= 0:
            info["negative_curvature"] = bool(torch.isfinite(pAp))
            msg = (f"CG met non-positive curvature pᵀAp = {float(pAp):.3g} at iteration "
                   f"{it}: the operator is not positive definite; use the GGN "
                   "Hessian or a larger damping.")
            bar.close()
            if raise_on_failure:
                raise RuntimeError(msg)
            info["n_iter"] = it
            return x, info
        a = rz / pAp
        x = x + a * p
        r = r - a * Ap
        res = float(torch.linalg.norm(r)) / bnorm
        info["residual"], info["n_iter"] = res, it
        bar.update(1)
        if verbose > 0:
            bar.set_postfix(residual=f"{res:.1e}")
        if not math.isfinite(res):
            bar.close()
            if raise_on_failure:
                raise RuntimeError("CG diverged (non-finite residual).")
            return x, info
        if res <= tol:
            info["converged"] = True
            break
        z = preconditioner(r) if preconditioner is not None else r
        rz_new = _dot(r, z)
        p = z + (rz_new / rz) * p
        rz = rz_new
    bar.close()
    return x, info


def batched_conjugate_gradient(matvec, B, *, tol=1e-10, max_iter=None,
                               preconditioner=None):
    """Conjugate gradient for ``A x_j = b_j``, every column at once.

    The same iteration as :func:`conjugate_gradient` run for each column
    ``B[j]`` with its own step sizes, sharing one ``matvec`` per iteration
    (the operator's products for many columns cost little more than for one
    when they are matrix-matrix products). A column stops moving once it
    converged; the loop ends when all did.

    Parameters
    ----------
    matvec : callable
        ``V -> A V`` applied to a stack of shape ``B.shape``.
    B : torch.Tensor of shape (q, ...)
        Right-hand sides, one per leading index.
    tol : float, default=1e-10
        Per column, stop when ``‖A x − b‖ / ‖b‖ <= tol``.
    max_iter : int, optional
        Most iterations; ``10 * B[0].numel()`` by default.
    preconditioner : callable, optional
        ``R -> M⁻¹ R`` on a stack.

    Returns
    -------
    X : torch.Tensor of the shape of ``B``
    info : dict
        ``residual`` (largest relative residual), ``residuals`` (per column),
        ``n_iter`` (iterations of the slowest column), ``converged`` (all),
        ``negative_curvature`` (any).
    """
    q = B.shape[0]
    dims = tuple(range(1, B.ndim))
    shape = (q,) + (1,) * (B.ndim - 1)
    max_iter = 10 * B[0].numel() if max_iter is None else int(max_iter)
    bnorm = torch.linalg.vector_norm(B, dim=dims)
    safe = torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm))
    X = torch.zeros_like(B)
    R = B.clone()
    Z = preconditioner(R) if preconditioner is not None else R
    P = Z.clone()
    rz = (R * Z).sum(dims)
    active = bnorm > 0
    res = torch.linalg.vector_norm(R, dim=dims) / safe
    info = {"residual": 0.0, "residuals": res, "n_iter": 0, "converged": False,
            "negative_curvature": False}
    n_iter = 0
    while n_iter < max_iter and bool(active.any()):
        n_iter += 1
        AP = matvec(P)
        pAp = (P * AP).sum(dims)
        bad = active & ~(torch.isfinite(pAp) & (pAp > 0))
        if bool(bad.any()):
            info["negative_curvature"] = True
            active = active & ~bad
        a = torch.where(active, rz / torch.where(pAp > 0, pAp, torch.ones_like(pAp)),
                        torch.zeros_like(pAp))
        X = X + a.reshape(shape) * P
        R = R - a.reshape(shape) * AP
        res = torch.linalg.vector_norm(R, dim=dims) / safe
        active = active & (res > tol) & torch.isfinite(res)
        Z = preconditioner(R) if preconditioner is not None else R
        rz_new = (R * Z).sum(dims)
        beta = torch.where(active, rz_new / torch.where(rz != 0, rz, torch.ones_like(rz)),
                           torch.zeros_like(rz))
        P = torch.where(active.reshape(shape), Z + beta.reshape(shape) * P,
                        torch.zeros_like(P))
        rz = rz_new
    info.update(residual=float(res.max()), residuals=res, n_iter=n_iter,
                converged=bool((res <= tol).all()))
    return X, info


def power_iteration(matvec, like, *, n_iter=20, generator=None):
    """Estimate the largest eigenvalue of a symmetric PSD operator.

    Parameters
    ----------
    matvec : callable
        ``v -> A v``.
    like : torch.Tensor
        A tensor of the operator's shape, dtype and device.
    n_iter : int, default=20
        Power iterations.
    generator : torch.Generator, optional
        Source of the random start.

    Returns
    -------
    lam : float
    """
    v = torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)
    v = v / torch.linalg.norm(v)
    lam = 0.0
    for _ in range(n_iter):
        w = matvec(v)
        lam = float(_dot(v, w))
        nw = float(torch.linalg.norm(w))
        if nw == 0:
            return 0.0
        v = w / nw
    return lam


def lissa(matvec, b, *, scale=None, depth=1000, tol=1e-8, damping=0.0,
          generator=None, verbose=0):
    """LiSSA: truncated Neumann series for ``(A + damping I)⁻¹ b``.

    The recursion ``x ← b + (I − (A + damping I)/scale) x`` converges to
    ``scale (A + damping I)⁻¹ b`` when ``scale`` exceeds the largest
    eigenvalue (Agarwal et al. 2017; Koh & Liang 2017). ``matvec`` may be
    stochastic (a mini-batch Hessian), which is LiSSA's point; then the
    result is an unbiased-in-the-limit estimate, not an exact solve.

    Parameters
    ----------
    matvec : callable
        ``v -> A v``; may change from call to call (mini-batches).
    b : torch.Tensor
        Right-hand side.
    scale : float, optional
        Must exceed ``λ_max(A) + damping``; estimated by power iteration
        (times 1.5 for safety with mini-batch operators) when omitted.
    depth : int, default=1000
        Most recursion steps.
    tol : float, default=1e-8
        Stop when the update is smaller than ``tol`` relative to ``x``.
    damping : float or torch.Tensor, default=0.0
        Added to ``A`` (a tensor: elementwise, one value per coordinate).
    generator : torch.Generator, optional
        Source of the power iteration's random start.
    verbose : int, default=0
        Show a progress bar when > 0.

    Returns
    -------
    x : torch.Tensor
    info : dict
        ``scale``, ``n_iter``, ``converged``, ``step`` (last relative update).
    """
    def op(v):
        return matvec(v) + damping * v

    if scale is None:
        scale = 1.5 * power_iteration(op, b, generator=generator)
    if not scale > 0:
        raise ValueError(f"LiSSA needs scale > 0, got {scale}.")
    x = b.clone()
    info = {"scale": float(scale), "n_iter": 0, "converged": False, "step": float("inf")}
    for it in tqdm(range(1, depth + 1), desc="LiSSA", disable=verbose <= 0, leave=False):
        x_new = b + x - op(x) / scale
        step = float(torch.linalg.norm(x_new - x)) / max(float(torch.linalg.norm(x_new)), 1e-300)
        x = x_new
        info["n_iter"], info["step"] = it, step
        if not math.isfinite(step):
            raise RuntimeError(
                f"LiSSA diverged at step {it}: scale={scale:.3g} is below the "
                "largest eigenvalue; pass a larger scale.")
        if step <= tol:
            info["converged"] = True
            break
    if not info["converged"]:
        warnings.warn(
            f"LiSSA stopped at depth {depth} with relative step {info['step']:.2e}; "
            "raise depth (convergence is slow for ill-conditioned Hessians).",
            RuntimeWarning, stacklevel=2)
    return x / scale, info


def arnoldi(matvec, like, *, n_iter=100, rank=20, generator=None, verbose=0):
    """Top-``rank`` eigenpairs of a symmetric operator by Arnoldi iteration.

    Schioppa et al. (AAAI 2022), "Scaling up influence functions": run
    ``n_iter`` Arnoldi steps from a random start (full re-orthogonalisation),
    diagonalise the small Hessenberg matrix and keep the ``rank`` eigenpairs
    of largest magnitude. Influence then uses the low-rank inverse
    ``Σ_j u_j u_jᵀ / λ_j``; the bottom of the spectrum is ignored, which is
    what makes it cheap and also what makes it an approximation.

    Parameters
    ----------
    matvec : callable
        ``v -> A v`` for a symmetric ``A``.
    like : torch.Tensor
        Tensor with the operator's shape, dtype and device.
    n_iter : int, default=100
        Krylov dimension (capped at the operator's size).
    rank : int, default=20
        Eigenpairs kept (those of largest magnitude).
    generator : torch.Generator, optional
        Source of the random start.
    verbose : int, default=0
        Show a progress bar when > 0.

    Returns
    -------
    eigvals : torch.Tensor of shape (r,)
        Eigenvalues of largest magnitude.
    eigvecs : torch.Tensor
        Eigenvectors, of shape ``(r, *like.shape)``.
    """
    n_iter = min(int(n_iter), like.numel())
    rank = min(int(rank), n_iter)
    v = torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)
    # Krylov basis as rows of one matrix: re-orthogonalisation is two GEMVs
    # (classical Gram-Schmidt twice, as stable as modified Gram-Schmidt).
    Q = torch.zeros(n_iter + 1, like.numel(), dtype=like.dtype, device=like.device)
    Q[0] = (v / torch.linalg.norm(v)).reshape(-1)
    Hm = torch.zeros(n_iter + 1, n_iter, dtype=torch.float64)
    m = n_iter
    for j in tqdm(range(n_iter), desc="Arnoldi", disable=verbose <= 0, leave=False):
        w = matvec(Q[j].reshape(like.shape)).reshape(-1)
        for _ in range(2):
            h = Q[: j + 1] @ w
            w = w - h @ Q[: j + 1]
            Hm[: j + 1, j] += h.double().cpu()
        nw = float(torch.linalg.norm(w))
        Hm[j + 1, j] = nw
        if nw < 1e-12 * max(1.0, float(Hm[: j + 1, : j + 1].abs().max())):
            m = j + 1  # invariant subspace found: the Krylov space is exact
            break
        Q[j + 1] = w / nw
    T = Hm[:m, :m]
    T = 0.5 * (T + T.T)  # the operator is symmetric; symmetrise rounding
    evals, evecs = torch.linalg.eigh(T)
    order = torch.argsort(evals.abs(), descending=True)[:rank]
    evals, evecs = evals[order], evecs[:, order]
    U = (evecs.T.to(Q.dtype).to(Q.device) @ Q[:m]).reshape(len(order), *like.shape)
    return evals.to(like.dtype).to(like.device), U


def arnoldi_solve(eigvals, eigvecs, b, *, damping=0.0):
    """Apply the low-rank inverse ``Σ_j u_j u_jᵀ b / (λ_j + damping)``.

    Parameters
    ----------
    eigvals : torch.Tensor of shape (r,)
        Eigenvalues ``λ_j``.
    eigvecs : torch.Tensor of shape (r, ...)
        Orthonormal eigenvectors ``u_j``.
    b : torch.Tensor
        Right-hand side.
    damping : float, default=0.0
        Added to every eigenvalue.

    Returns
    -------
    x : torch.Tensor
    """
    U = eigvecs.reshape(len(eigvals), -1)
    coef = (U @ b.reshape(-1)) / (eigvals + damping)
    return (coef @ U).reshape(b.shape)

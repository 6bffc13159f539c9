"""Exact head fit and closed-form influence of a multinomial logistic head.

With the backbone frozen the head is a multinomial logistic regression on the
features ``a = [phi, 1]``. Everything here runs in float64: a float32 softmax
sums to 1 only to ~1e-7, and with ImageNet-scale features (mean ≈ 20, max ≈
150) that error times ``‖a‖²`` was measured to make the exact Hessian
indefinite beyond a 1e-3 relative damping. The Hessian is never needed as a
matrix for a single right-hand side; it is built densely only when the
Cholesky path is chosen (small ``k * (d + 1)``, or the cross-fitted
self-influence which needs a factor).

Out of core
-----------
The features are read only through :class:`~._chunks.FeatureChunks`: every
pass (statistics, probabilities, gradient, Hessian-vector product, scores)
is a sum over chunks of rows, each upcast to float64 on its own, so a
float32 ``numpy.memmap`` of any length runs in memory ``O(chunk × d + n ×
k)``. An in-memory array is one chunk that is kept (whitened) between
passes; this is the only difference between the two cases.

Null space
----------
The softmax cross-entropy Hessian annihilates every direction ``1 ⊗ v``
(adding ``v`` to every class row of ``[W, b]``); ``alpha`` covers the weight
part of it but leaves the bias direction singular. Every per-sample gradient
``r_i a_iᵀ`` has ``Σ_c r_ic = 0`` and is therefore orthogonal to that null
space, and ``H`` maps the null space and its complement to themselves. So the
solve adds ``mu * P_null`` (``P_null`` the orthogonal projector onto the null
space, ``mu`` the mean diagonal of ``H``): this makes the system positive
definite *without changing the solution for any gradient*, so no damping bias
is needed. ``damping="auto"`` therefore starts at 0 and only escalates when a
factorisation or CG run fails numerically.
"""

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from ..utils._threads import limit_threads
from ._chunks import FeatureChunks, as_feature_source, block_rows, trim_heap
from ._results import InfluenceResult
from ._solvers import batched_conjugate_gradient, conjugate_gradient

# Largest k * (d + 1) for which a dense float64 Hessian is built (ResNet-50
# features with 10 classes give 20,490).
DENSE_MAX_DIM = 20500

# Rows (a fixed random subset beyond this) from which the block-Jacobi
# preconditioner is estimated: it only steers CG, and computing it from every
# row would whiten all n rows explicitly (n d² flops) at each Newton step.
_PRECOND_ROWS = 8192

# Relative damping levels tried in turn when damping="auto" and the
# undamped (null-space-deflated) system fails numerically.
_AUTO_DAMPING_LADDER = (0.0, 1e-9, 1e-6, 1e-3)


def _as_f64(x, device):
    return torch.as_tensor(np.asarray(x), dtype=torch.float64, device=device)


class _Coords:
    """Coordinates of the head algebra: ``a_i = [(F_i - mu) T, 1]``.

    Whitened (``hessian="exact"``): ``mu`` the training mean, ``T = U Λ^{-1/2}``
    from the training covariance, an exact reparametrisation. Influence
    ``(1/n) g_valᵀ H⁻¹ ∇L_i`` is a scalar that does not depend on the
    (linear) parametrisation, so the algebra runs where the training
    features have identity covariance: there CG needs a handful of
    iterations where raw ReLU features (correlated, mean ≈ 20) need
    thousands. With ``W = W' Tᵀ`` the penalty ``(alpha/2)‖W‖²`` stays diagonal:
    ``alpha / λ_j`` on column ``j``. Directions without training variance
    (``λ_j ≈ 0``) are dropped; this is exact for the scores, because no
    training gradient has a component there.

    Raw (``hessian="identity"``: gradient similarity depends on the
    parametrisation, so it uses the original one): ``mu`` and ``T`` are None.
    """

    def __init__(self, d, device, mu=None, U=None, evals=None):
        self.d = d
        self.device = device
        self.mu = mu
        self.U = U
        self.evals = evals
        self.T = None if U is None else U / torch.sqrt(evals)

    @classmethod
    def raw(cls, chunks):
        return cls(chunks.d, chunks.device)

    @classmethod
    def whitening(cls, chunks, rtol=1e-10):
        # Two passes (mean, then the centred covariance) rather than
        # E[FᵀF] - mu muᵀ, which cancels catastrophically for features whose
        # mean is large against their spread.
        d, dev = chunks.d, chunks.device
        total = torch.zeros(d, dtype=torch.float64, device=dev)
        for _, X in chunks:
            total += X.sum(0)
        mu = total / chunks.n
        C = torch.zeros(d, d, dtype=torch.float64, device=dev)
        for _, X in chunks:
            Xc = X.sub_(mu)
            C += Xc.T @ Xc
        C /= chunks.n
        evals, U = torch.linalg.eigh(C)
        keep = evals > rtol * max(float(evals.max()), 1e-300)
        return cls(d, dev, mu, U[:, keep], evals[keep])

    @property
    def dp(self):
        """Columns of ``a``: kept directions + 1 (the bias)."""
        return (self.d if self.T is None else self.T.shape[1]) + 1

    def columns(self, weight_value, bias_value):
        """Per-column diagonal of ``weight_value * ‖W‖² + bias_value * b'²``."""
        dev = self.device
        w = (torch.full((self.dp - 1,), float(weight_value), dtype=torch.float64, device=dev)
             if self.evals is None else weight_value / self.evals)
        return torch.cat([w, torch.full((1,), float(bias_value), dtype=torch.float64,
                                        device=dev)])

    def to_coords(self, W, b):
        W = _as_f64(W, self.device)
        b = _as_f64(b, self.device)
        if self.T is None:
            return torch.cat([W, b[:, None]], 1)
        Wp = W @ (self.U * torch.sqrt(self.evals))
        return torch.cat([Wp, (b + W @ self.mu)[:, None]], 1)

    def perp_sq(self, Xc):
        """Squared norm of centred rows ``Xc`` outside the kept directions."""
        return ((Xc**2).sum(1) - ((Xc @ self.U) ** 2).sum(1)).clamp_min(0.0)

    def from_coords(self, th):
        if self.T is None:
            return th[:, :-1], th[:, -1]
        W = th[:, :-1] @ self.T.T
        b = th[:, -1] - W @ self.mu
        return W, b


class _Design:
    """The matrix ``A`` (rows ``a_i`` in the given coordinates), read by chunks.

    A chunk is ``X`` with ``a_i = [X_i Tr, 1]``: for a cached in-memory
    chunk ``X`` is already whitened (``Tr`` None); for a chunk read from the
    source ``X = F - mu`` and ``Tr = T`` stays on the parameter side, so a
    pass costs ``O(m d k)`` instead of a ``d × d`` whitening of every chunk.
    """

    def __init__(self, chunks, coords, *, cache=False):
        self.chunks = chunks
        self.coords = coords
        self.n = chunks.n
        self.dp = coords.dp
        self.Tr = coords.T
        self._cached = None
        self._sample = None
        if cache and chunks.single:
            for sl, X in self._centred():
                if coords.T is not None:
                    X = X @ coords.T
                self._cached = (sl, X)
            self.Tr = None

    def _centred(self):
        mu = self.coords.mu
        for sl, X in self.chunks:
            # in place: the chunk is a fresh copy (one allocation per chunk)
            yield sl, (X if mu is None else X.sub_(mu))

    def __iter__(self):
        if self._cached is not None:
            # Cache-sized row blocks (views): each product of a pass then reads
            # its block from cache instead of streaming all n rows from memory.
            self.chunks.passes += 1  # a pass over the rows, kept or not
            X = self._cached[1]
            step = block_rows(X.shape[1])
            for s in range(0, len(X), step):
                yield slice(s, min(s + step, len(X))), X[s:s + step]
        else:
            yield from self._centred()

    def split(self, V):
        """``V`` (k, dp) as ``(Vq, v_b)`` with ``A Vᵀ = X Vqᵀ + v_b`` on every chunk."""
        Vw = V[:, :-1]
        return (Vw if self.Tr is None else Vw @ self.Tr.T), V[:, -1]

    def join(self, Gq, gb):
        """Inverse of :meth:`split` for accumulated ``Σ r_i X_i`` and ``Σ r_i``."""
        return torch.cat([Gq if self.Tr is None else Gq @ self.Tr, gb[:, None]], 1)

    def accumulator(self, k):
        q = self.dp - 1 if self.Tr is None else self.Tr.shape[0]
        dev = self.coords.device
        return (torch.zeros(k, q, dtype=torch.float64, device=dev),
                torch.zeros(k, dtype=torch.float64, device=dev))

    def rows(self, X):
        """Explicit augmented rows ``a_i`` of a chunk."""
        Z = X if self.Tr is None else X @ self.Tr
        return torch.cat([Z, torch.ones(len(Z), 1, dtype=Z.dtype, device=Z.device)], 1)

    def sample(self):
        """``(idx, A_s)``: at most ``_PRECOND_ROWS`` explicit rows, kept.

        ``idx`` (a device tensor of positions, or None for all rows) is a
        fixed random subset, the same for in-memory and chunked sources.
        """
        if self._sample is None:
            n = self.n
            dev = self.coords.device
            idx = None
            if n > _PRECOND_ROWS:
                idx = np.sort(np.random.default_rng(0).choice(n, _PRECOND_ROWS,
                                                              replace=False))
            if self._cached is not None:
                X = self._cached[1]
                A = self.rows(X if idx is None else X[torch.as_tensor(idx, device=dev)])
            else:
                src = self.chunks if idx is None else self.chunks.subset(idx)
                mu = self.coords.mu
                A = torch.cat([self.rows(X if mu is None else X.sub_(mu)) for _, X in src])
            self._sample = (None if idx is None else torch.as_tensor(idx, device=dev), A)
        return self._sample


def _check_labels(y, n_classes, name):
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}.")
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ValueError(
                f"{name} must hold integer labels 0..n_classes-1, got dtype {y.dtype}."
            )
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(
            f"{name} must hold labels in 0..{n_classes - 1}, found "
            f"[{y.min()}, {y.max()}]."
        )
    return np.ascontiguousarray(y, dtype=np.int64)


def _check_features(F, name, *, chunk_size="auto", device="cpu"):
    """Validate features and return them as :class:`FeatureChunks`.

    The finiteness check runs chunk by chunk: ``np.isfinite(F).all()`` on a
    memmap would allocate ``n × d`` booleans.
    """
    F = as_feature_source(F, name)
    chunks = F if isinstance(F, FeatureChunks) else FeatureChunks(
        F, chunk_size=chunk_size, device=device)
    if chunks.count_nonfinite():
        raise ValueError(
            f"{name} contains NaN or infinite values; influence needs finite "
            "features (check the backbone and the inputs)."
        )
    return chunks


def _softmax64(logits):
    # float64 softmax, renormalised so that rows sum to 1 to rounding (see
    # the module notes on float32 softmax).
    p = torch.softmax(logits.to(torch.float64), dim=1)
    return p / p.sum(1, keepdim=True)


def _residuals(P, y):
    """``r_i = p_i - onehot(y_i)`` for a chunk (a new tensor).

    One-hot labels are never built: the label index picks the entry to
    lower, so no ``n × k`` array exists beside the probabilities.
    """
    R = P.clone()
    R[torch.arange(len(R), device=R.device), y] -= 1.0
    return R


def _project_null(V):
    # Remove the component along the softmax null space {1 ⊗ v}: the class
    # axis is the second to last, so a stack (q, k, dp) is projected per column.
    return V - V.mean(-2, keepdim=True)


def _proba(chunks, W, b, out=None):
    """Probabilities of the head ``(W, b)`` in its own coordinates, (n, k) float64.

    Written into ``out`` (an ``(n, k)`` float64 tensor) when given.
    """
    Wt = _as_f64(W, chunks.device)
    bt = _as_f64(b, chunks.device)
    if Wt.ndim != 2 or Wt.shape[1] != chunks.d or bt.shape != (Wt.shape[0],):
        raise ValueError(
            f"W must have shape (n_classes, {chunks.d}) and b (n_classes,), got "
            f"{tuple(Wt.shape)} and {tuple(bt.shape)}.")
    P = out if out is not None else torch.empty(
        chunks.n, Wt.shape[0], dtype=torch.float64, device=chunks.device)
    for sl, X in chunks:
        P[sl] = _softmax64(X @ Wt.T + bt)
    return P


def predict_proba_head(F, W, b, *, device="cpu", chunk_size="auto"):
    """Class probabilities of a fitted head, computed in float64.

    Parameters
    ----------
    F : array-like of shape (n_samples, n_features)
        Features; a ``numpy.memmap`` or any array-like is read by chunks.
    W : ndarray of shape (n_classes, n_features)
        Head weights.
    b : ndarray of shape (n_classes,)
        Head bias.
    device : str, default="cpu"
        Torch device for the algebra (chunks move there one at a time).
    chunk_size : int or "auto", default="auto"
        Rows per chunk; ``"auto"`` keeps a moderate in-memory array whole and
        reads anything else in chunks of about 1 MiB of float64.

    Returns
    -------
    proba : ndarray of float64 of shape (n_samples, n_classes)
    """
    F = as_feature_source(F, "F")
    chunks = F if isinstance(F, FeatureChunks) else FeatureChunks(
        F, chunk_size=chunk_size, device=device)
    with limit_threads():
        return _proba(chunks, W, b).cpu().numpy()


class _HeadHessian:
    """Matrix-free Hessian of the head objective at fixed probabilities ``P``."""

    def __init__(self, design, P, pen):
        self.design = design
        self.P = P
        self.n, self.dp = design.n, design.dp
        self.k = P.shape[1]
        self.pen = pen
        self.device = P.device

    def column_blocks(self):
        """Exact ``k × k`` diagonal blocks, one per feature column: (dp, k, k).

        ``Σ_i a_ij² (diag p_i − p_i p_iᵀ) / n + pen_j I``. As a block-Jacobi
        preconditioner it captures the coupling between classes that a plain
        diagonal misses (whitening already removed most of the coupling
        between features). Estimated from at most ``_PRECOND_ROWS`` rows
        (a fixed random subset; exact below that), so that its diagonal is
        the diagonal of ``H`` only up to that sampling.
        """
        k = self.k
        idx, A = self.design.sample()
        P_all = self.P if idx is None else self.P[idx]
        D = torch.zeros(self.dp, k, dtype=torch.float64, device=self.device)
        M = torch.zeros(self.dp, k * k, dtype=torch.float64, device=self.device)
        step = block_rows(k * k)
        for s in range(0, len(A), step):
            A2 = A[s:s + step] ** 2
            P = P_all[s:s + step]
            D += A2.T @ P
            # one GEMM over the flattened outer products: einsum's contraction
            # order here was ~10x slower and dominated the head fit.
            M += A2.T @ (P[:, :, None] * P[:, None, :]).reshape(len(P), -1)
        blocks = -M.reshape(-1, k, k) / len(A)
        idx = torch.arange(k, device=self.device)
        blocks[:, idx, idx] += D / len(A) + self.pen[:, None]
        return blocks

    def matvec(self, V):
        """``H V`` for ``V`` of shape (k, dp), or a stack (q, k, dp) at once."""
        if V.ndim == 3:
            return self._matvec_stack(V)
        design = self.design
        Vq, vb = design.split(V)
        acc, accb = design.accumulator(self.k)
        for sl, X in design:
            P = self.P[sl]
            PU = P * (X @ Vq.T + vb)
            Z = PU - P * PU.sum(1, keepdim=True)
            acc += Z.T @ X
            accb += Z.sum(0)
        return design.join(acc, accb) / self.n + self.pen * V

    def _matvec_stack(self, V):
        # one pair of matrix products per chunk serves every column
        design, k = self.design, self.k
        q = V.shape[0]
        Vq, vb = design.split(V.reshape(q * k, -1))
        acc, accb = design.accumulator(q * k)
        for sl, X in design:
            P = self.P[sl][:, None, :]
            PU = P * (X @ Vq.T + vb).reshape(len(X), q, k)
            Z = (PU - P * PU.sum(2, keepdim=True)).reshape(len(X), q * k)
            acc += Z.T @ X
            accb += Z.sum(0)
        return design.join(acc, accb).reshape(V.shape) / self.n + self.pen * V

    def dense(self, chunk_elems=2**22):
        # rows per GEMM such that the (rows, k·dp) operand stays at 32 MiB:
        # still a large GEMM (817 rows at d = 512, k = 10), and a 128 MiB
        # temporary was the largest allocation of a whole memmapped run.
        k, dp, n = self.k, self.dp, self.n
        H = torch.zeros(k * dp, k * dp, dtype=torch.float64, device=self.device)
        rows = max(1, chunk_elems // (k * dp))
        for sl, X in self.design:
            A_all = self.design.rows(X)
            P_all = self.P[sl]
            for s in range(0, len(A_all), rows):
                A = A_all[s:s + rows]
                P = P_all[s:s + rows]
                for c in range(k):
                    # B[i, c'] = p_ic δ_cc' − p_ic p_ic' for c' >= c (mirror the rest).
                    B = -P[:, c:c + 1] * P[:, c:]
                    B[:, 0] += P[:, c]
                    H[c * dp:(c + 1) * dp, c * dp:] += A.T @ (
                        B[:, :, None] * A[:, None, :]).reshape(len(A), -1)
        H /= n
        iu = torch.triu_indices(k, k, 1)
        for c, c2 in zip(iu[0].tolist(), iu[1].tolist()):
            H[c2 * dp:(c2 + 1) * dp, c * dp:(c + 1) * dp] = (
                H[c * dp:(c + 1) * dp, c2 * dp:(c2 + 1) * dp].T)
        H.diagonal().add_(self.pen.repeat(k))
        return H


def _add_null_projector(H, k, dp, scale):
    # H += scale * P_null, P_null = (1 1ᵀ / k) ⊗ I_dp in the row-major
    # (class, feature) layout, in place (no second k·dp × k·dp matrix).
    H.view(k, dp, k, dp).diagonal(dim1=1, dim2=3).add_(scale / k)


def _block_preconditioner(blocks):
    inv = torch.linalg.inv(blocks)

    def precond(R):  # R of shape (k, dp), or a stack (q, k, dp)
        return torch.einsum("jcd,...dj->...cj", inv, R)
    return precond


def _newton(design, y, k, pen, *, tol, max_iter, theta0=None, P=None):
    """Newton-CG with an Armijo line search on ``design`` (whitened coordinates).

    Quadratic convergence to the tight tolerance influence needs, at a cost
    of a few dozen matrix-free Hessian products per step (L-BFGS crawls at
    these tolerances). Every evaluation (loss, gradient and the
    probabilities the next Hessian needs) is one pass over the data, and a
    trial point of the line search is such an evaluation, so an accepted
    full step costs no extra pass. ``P`` (an ``(n, k)`` float64 tensor,
    allocated when omitted) is the only array of size ``n`` it keeps; its
    content on return is scratch.

    It stops once the largest gradient entry is ``tol * 1e-2`` or below, or
    one step after it fell below ``tol``: stopping right at ``tol`` left the
    minimiser dependent on the summation order (one in-memory chunk or many
    from a memmap) at the 1e-9 level, and influence compares the two at
    1e-10. Each CG solve is only as accurate as that target needs (the
    forcing term ``sqrt(‖g‖)`` of inexact Newton, no tighter than what
    brings the gradient to the target): solving the last steps to 1e-10
    cost as many Hessian products as all earlier steps together.
    """
    n = design.n
    dev = pen.device
    if P is None:
        P = torch.empty(n, k, dtype=torch.float64, device=dev)

    def evaluate(th):
        Vq, vb = design.split(th)
        loss = torch.zeros((), dtype=torch.float64, device=dev)
        acc, accb = design.accumulator(k)
        for sl, X in design:
            logits = X @ Vq.T + vb
            lse = torch.logsumexp(logits, 1)
            yc = y[sl]
            loss += (lse - logits.gather(1, yc[:, None])[:, 0]).sum()
            Pc = torch.exp(logits.sub_(lse[:, None]))
            Pc /= Pc.sum(1, keepdim=True)
            P[sl] = Pc
            Pc[torch.arange(len(Pc), device=dev), yc] -= 1.0  # the residual, in place
            acc += Pc.T @ X
            accb += Pc.sum(0)
        loss = float(loss) / n + 0.5 * float((pen * th**2).sum())
        return loss, _project_null(design.join(acc, accb) / n) + pen * th

    target = 1e-2 * tol
    th = (torch.zeros(k, design.dp, dtype=torch.float64, device=dev)
          if theta0 is None else _project_null(theta0))
    loss, g = evaluate(th)
    gmax = np.inf
    n_newton = 0
    history = []
    below_tol = False
    for it in range(1, max_iter + 1):
        n_newton = it
        gmax = float(g.abs().max())
        if gmax <= target or below_tol:
            break
        below_tol = gmax <= tol
        hess = _HeadHessian(design, P, pen)
        blocks = hess.column_blocks()
        mean_diag = float(blocks.diagonal(dim1=1, dim2=2).mean())

        def op(V, hess=hess, mu_=mean_diag):
            return hess.matvec(V) + mu_ * V.mean(0, keepdim=True)

        precond = _block_preconditioner(blocks + mean_diag / k)
        gnorm = float(torch.linalg.norm(g))
        eta = float(np.clip(np.sqrt(gnorm), 0.1 * target / max(gnorm, 1e-300), 0.5))
        step, _ = conjugate_gradient(op, -g, tol=max(eta, 1e-12), max_iter=10 * g.numel(),
                                     preconditioner=precond, raise_on_failure=False)
        # A block preconditioner lets inexact steps drift into the softmax
        # null space, where only the (weak) penalty pulls back; the minimiser
        # has no null component, so keep iterates out of it.
        step = _project_null(step)
        slope = float((g * step).sum())
        if not slope < 0:
            step, slope = -g, -float((g * g).sum())
        hess = op = precond = None
        t = 1.0
        accepted = False
        for _ in range(60):
            th_new = th + t * step
            loss_new, g_new = evaluate(th_new)  # rewrites P
            # Near the optimum the loss no longer resolves the decrease (it
            # changes below float64 rounding), so a full Newton step that
            # keeps the loss equal to rounding is taken: there it is the
            # gradient, not the loss, that still converges quadratically.
            if loss_new <= loss + 1e-4 * t * slope or (
                    t == 1.0 and loss_new <= loss + 1e-13 * abs(loss)):
                accepted = True
                break
            t *= 0.5
        if not accepted:
            break  # no decrease possible at machine precision
        history.append(gmax)
        if len(history) > 6 and gmax > 0.5 * history[-6]:
            break  # stagnated at the rounding floor
        th, loss, g = th_new, loss_new, g_new
    else:
        gmax = float(g.abs().max())
    if gmax > max(1e3 * tol, 1e-6):
        warnings.warn(
            f"fit_head: Newton stopped after {n_newton} iterations with gradient "
            f"max-norm {gmax:.2e} > tol={tol:g}; influence assumes an exact "
            "minimiser, raise max_iter or alpha.",
            RuntimeWarning, stacklevel=3,
        )
    return th


def _fit_in(design, y, k, alpha, *, tol, max_iter, init, P=None):
    """Fit on a whitened design; returns ``(W, b)`` as float64 tensors.

    ``P`` is an optional ``(n, k)`` float64 scratch buffer (see :func:`_newton`).
    """
    coords = design.coords
    pen = coords.columns(alpha, 0.0)
    theta0 = None if init is None else coords.to_coords(*init)
    th = _newton(design, torch.as_tensor(y, device=coords.device), k, pen, tol=tol,
                 max_iter=max_iter, theta0=theta0, P=P)
    W, b = coords.from_coords(th)
    return W, b - b.mean()


def fit_head(F, y, n_classes, *, alpha, tol=1e-10, max_iter=1000, init=None,
             device="cpu", chunk_size="auto"):
    """Fit the multinomial logistic head exactly (float64).

    Minimises ``J(W, b) = (1/n) Σ_i CE(W a_i + b, y_i) + (alpha/2) ‖W‖²`` (the
    bias is not penalised): the objective of scikit-learn's
    ``LogisticRegression(C=1/(alpha*n))``. Newton's method (inner
    preconditioned CG, Armijo line search) runs on whitened features (a
    change of variables that leaves the minimiser unchanged but removes the
    ill-conditioning of correlated, ImageNet-scale features) to a tight tolerance:
    influence functions assume an exact minimiser.

    Parameters
    ----------
    F : array-like of shape (n_samples, n_features)
        Features (any numeric dtype; computed in float64). A
        ``numpy.memmap`` or any array-like with row slicing is read by
        chunks and never held whole in float64.
    y : array-like of int of shape (n_samples,)
        Labels in ``0..n_classes-1``.
    n_classes : int
        Number of classes ``k`` (classes absent from ``y`` get finite weights
        thanks to the penalty).
    alpha : float
        L2 strength, ``> 0`` in practice (with ``alpha = 0`` separable data
        has no minimiser).
    tol : float, default=1e-10
        Stop when the largest absolute entry of the gradient (in the
        whitened coordinates) is below ``tol``.
    max_iter : int, default=1000
        Most Newton iterations (each a preconditioned CG solve).
    init : tuple (W, b), optional
        Warm start (for example the full-data solution when refitting
        without one sample).
    device : str, default="cpu"
        Torch device for the algebra (chunks move there one at a time).
    chunk_size : int or "auto", default="auto"
        Rows per chunk; ``"auto"`` keeps a moderate in-memory array whole
        (whitened once) and reads anything else in chunks of about 1 MiB of
        float64. Results do not depend on it beyond rounding.

    Returns
    -------
    W : ndarray of float64 of shape (n_classes, n_features)
    b : ndarray of float64 of shape (n_classes,)
        The bias is centred (sums to zero over classes): the objective does
        not depend on a common shift of the bias.
    """
    chunks = _check_features(F, "F", chunk_size=chunk_size, device=device)
    y = _check_labels(y, n_classes, "y")
    if len(y) != chunks.n:
        raise ValueError(f"F has {chunks.n} rows but y has {len(y)} labels.")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}.")
    with limit_threads():
        design = _Design(chunks, _Coords.whitening(chunks), cache=True)
        W, b = _fit_in(design, y, int(n_classes), alpha, tol=tol, max_iter=max_iter,
                       init=init)
    return W.cpu().numpy(), b.cpu().numpy()


def choose_solver(n, k, dp, device="cpu", need_factor=False):
    """Pick the head solver for ``solver="auto"``.

    Dense Cholesky costs about ``n k² dp² + (k dp)³ / 3`` flops and gives a
    factor that cross-fitting reuses for every self-influence; CG costs a few
    dozen matrix-free products of ``4 n k dp`` flops each. One right-hand
    side on a CPU therefore favours CG once the dense build gets large (with
    whitening and the block-Jacobi preconditioner CG needs tens of iterations).

    Parameters
    ----------
    n : int
        Training samples.
    k : int
        Classes.
    dp : int
        Features + 1.
    device : str, default="cpu"
        Where the algebra runs (GPUs favour the dense build).
    need_factor : bool, default=False
        Whether the caller wants the factor (self-influence).

    Returns
    -------
    solver : {"cholesky", "cg"}
    """
    dim = k * dp
    if dim > DENSE_MAX_DIM:
        return "cg"
    if need_factor:
        return "cholesky"
    dense_flops = n * k * k * dp * dp + dim**3 / 3.0
    cg_flops = 100 * 4.0 * n * k * dp
    # GPUs run the large dense kernels near peak, the small CG products not.
    ratio = 30.0 if str(device).startswith("cuda") else 3.0
    return "cholesky" if dense_flops <= ratio * cg_flops else "cg"


class _HeadSolve:
    """Solve ``(H + damping I) S = G`` for one fitted head; keeps the factor."""

    def __init__(self, hess, *, damping="auto", solver="auto", tol=1e-10,
                 max_iter=None, need_factor=False, verbose=0, damping_columns=None):
        self.hess = hess
        k, dp = hess.k, hess.dp
        if solver == "auto":
            solver = choose_solver(hess.n, k, dp, hess.device, need_factor)
        if solver not in ("cholesky", "cg"):
            raise ValueError(f"solver must be 'auto', 'cholesky' or 'cg', got {solver!r}.")
        if solver == "cholesky" and k * dp > 4 * DENSE_MAX_DIM:
            raise ValueError(
                f"solver='cholesky' would build a dense {k * dp}x{k * dp} Hessian; "
                "use solver='cg'.")
        self.solver = solver
        self.tol = tol
        self.max_iter = max_iter
        self.verbose = verbose
        # "auto" damps the (well-scaled) whitened coordinates; an explicit
        # value means lam * I on the original parameters (damping_columns).
        self.cols = torch.ones(dp, dtype=torch.float64, device=hess.device)
        self.auto = damping == "auto"
        if not self.auto:
            if damping_columns is not None:
                self.cols = damping_columns
            damping = float(damping)
            if not np.isfinite(damping) or damping < 0:
                raise ValueError(f"damping must be 'auto' or a float >= 0, got {damping}.")
            self.fixed = damping
        self.L = None
        self.damping = None
        self.n_iter = 0
        if solver == "cholesky":
            self._factor()
        else:
            self.blocks = hess.column_blocks()
            self.mean_diag = float(self.blocks.diagonal(dim1=1, dim2=2).mean())
        self.ladder = ([r * self.mean_diag for r in _AUTO_DAMPING_LADDER]
                       if self.auto else [self.fixed])

    def _factor(self):
        hess = self.hess
        Hd = hess.dense()
        self.mean_diag = float(Hd.diagonal().mean())
        _add_null_projector(Hd, hess.k, hess.dp, self.mean_diag)
        ladder = ([r * self.mean_diag for r in _AUTO_DAMPING_LADDER]
                  if self.auto else [self.fixed])
        diag = self.cols.repeat(hess.k)
        for i, lam in enumerate(ladder):
            last = i == len(ladder) - 1
            Hl = Hd if last else Hd.clone()
            Hl.diagonal().add_(lam * diag)
            L, info = torch.linalg.cholesky_ex(Hl)
            if int(info) == 0:
                self.L, self.damping = L, lam
                return
        raise np.linalg.LinAlgError(
            "The head Hessian is not positive definite even with damping "
            f"{ladder[-1]:.3g} (mean diagonal {self.mean_diag:.3g}); "
            "increase alpha or pass a larger damping.")

    def _op(self, lam):
        mu = self.mean_diag

        def op(V):
            HV = self.hess.matvec(V) + lam * self.cols * V
            return HV + mu * V.mean(-2, keepdim=True)  # + mu * P_null V
        return op

    def solve(self, G):
        """Return ``S`` with ``(H + damping I) S = G`` for ``G`` of shape (k, dp)."""
        G = _project_null(G)
        if self.solver == "cholesky":
            S = torch.cholesky_solve(G.reshape(-1, 1), self.L).view_as(G)
            self.n_iter = 0
            return S
        blocks = self.blocks + self.mean_diag / self.hess.k  # the null-space term
        eye = torch.eye(self.hess.k, dtype=blocks.dtype, device=blocks.device)
        last = None
        for lam in self.ladder:
            S, info = conjugate_gradient(
                self._op(lam), G, tol=self.tol, max_iter=self.max_iter or 10 * G.numel(),
                preconditioner=_block_preconditioner(
                    blocks + lam * self.cols[:, None, None] * eye),
                verbose=self.verbose, raise_on_failure=False,
            )
            last = info
            if info["converged"]:
                break
        self.damping, self.n_iter = lam, last["n_iter"]
        if not last["converged"]:
            msg = (f"Head CG did not reach tol={self.tol:g}: relative residual "
                   f"{last['residual']:.2e} after {last['n_iter']} iterations "
                   f"(damping {lam:.3g}).")
            if not np.isfinite(last["residual"]) or last["residual"] > 1e-2:
                raise RuntimeError(msg + " Increase alpha or damping.")
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
        return _project_null(S)

    def solve_many(self, G):
        """Solve for a stack ``G`` of shape (q, k, dp): one factor (Cholesky), or
        one batched CG whose products serve every column."""
        if self.solver != "cholesky":
            return self._cg_many(G)
        q = G.shape[0]
        S = torch.cholesky_solve(_project_null(G).reshape(q, -1).T, self.L).T
        S = S.reshape(G.shape)
        self.n_iter = 0
        return S

    def _cg_many(self, G):
        G = _project_null(G)
        blocks = self.blocks + self.mean_diag / self.hess.k  # the null-space term
        eye = torch.eye(self.hess.k, dtype=blocks.dtype, device=blocks.device)
        lam = self.ladder[0]
        S, info = batched_conjugate_gradient(
            self._op(lam), G, tol=self.tol, max_iter=self.max_iter or 10 * G[0].numel(),
            preconditioner=_block_preconditioner(
                blocks + lam * self.cols[:, None, None] * eye))
        if not info["converged"]:
            # the damping ladder, column by column, where the batch fell short
            return torch.stack([self.solve(g) for g in G])
        self.damping, self.n_iter = lam, info["n_iter"]
        return _project_null(S)

    def residual(self, S, G):
        G = _project_null(G)
        R = self.hess.matvec(S) + self.damping * self.cols * S - G
        return float(torch.linalg.norm(R) / max(float(torch.linalg.norm(G)), 1e-300))

    def quad_forms(self, design, P, y, chunk=256):
        """``vec(r_i a_iᵀ)ᵀ (H+λ)⁻¹ vec(r_i a_iᵀ)`` for the rows of ``design``.

        ``r_i = p_i - onehot(y_i)`` from the probabilities ``P`` (n, k) and the
        label tensor ``y``, chunk by chunk.
        """
        out = torch.empty(design.n, dtype=torch.float64, device=P.device)
        for sl, X in design:
            A_all = design.rows(X)
            R_all = _residuals(P[sl], y[sl])
            for s in range(0, len(A_all), chunk):
                A, Rc = A_all[s:s + chunk], R_all[s:s + chunk]
                Gi = _project_null(Rc[:, :, None] * A[:, None, :])
                Zi = torch.linalg.solve_triangular(
                    self.L, Gi.reshape(len(A), -1).T, upper=False)
                out[sl.start + s:sl.start + s + len(A)] = (Zi**2).sum(0)
        return out


def _normalised_weights(val_weights, m, device):
    """Validation weights as an ``(m, q)`` float64 tensor, each column summing to 1.

    ``None`` is one uniform column; a 1-D array one column; a 2-D array of
    shape ``(m, q)`` gives ``q`` weightings solved together (one factor).
    """
    if val_weights is None:
        return torch.full((m, 1), 1.0 / m, dtype=torch.float64, device=device)
    w = torch.as_tensor(np.asarray(val_weights, dtype=np.float64), device=device)
    if w.ndim == 1:
        w = w[:, None]
    if w.ndim != 2 or w.shape[0] != m or w.shape[1] < 1:
        raise ValueError(f"val_weights must have shape ({m},) or ({m}, q), got "
                         f"{tuple(w.shape)}.")
    total = w.sum(0)
    if not torch.isfinite(w).all() or (w < 0).any() or bool((total <= 0).any()):
        raise ValueError("val_weights must be finite, >= 0 and not all zero (in every "
                         "column).")
    return w / total


def _val_gradients(design, P_val, y_val, w):
    """``G[j] = Σ_v w_vj r_v a_vᵀ`` for every column ``j`` of ``w``: (q, k, dp).

    The residuals are formed chunk by chunk; one product per chunk serves
    every column.
    """
    k, q = P_val.shape[1], w.shape[1]
    acc, accb = design.accumulator(q * k)
    for sl, X in design:
        R = _residuals(P_val[sl], y_val[sl])
        Rw = (w[sl, :, None] * R[:, None, :]).reshape(len(R), q * k)
        acc += Rw.T @ X
        accb += Rw.sum(0)
    G = design.join(acc, accb)
    return G.reshape(q, k, G.shape[1])


def _score_rows(design, P, y, S, n):
    """``(1/n) r_iᵀ S_j a_i`` for every row ``i`` of ``design`` and column ``j``.

    ``S`` has shape (q, k, dp) in the design's coordinates; returns an
    ``(rows, q)`` float64 array, without ever forming a per-sample gradient.
    """
    q, k = S.shape[0], S.shape[1]
    Sq, sb = design.split(S.reshape(q * k, -1))
    out = np.empty((design.n, q))
    dev = P.device
    target = torch.from_numpy(out) if dev.type == "cpu" else torch.empty(
        design.n, q, dtype=torch.float64, device=dev)
    for sl, X in design:
        R = _residuals(P[sl], y[sl])
        T = (X @ Sq.T + sb).reshape(len(R), q, k)
        target[sl] = (T * R[:, None, :]).sum(2) / n
    if dev.type != "cpu":
        out[:] = target.cpu().numpy()
    return out


@dataclass
class _HeadScores:
    """What :func:`_score_head` computed: the scores and what callers reuse."""

    scores: np.ndarray        # (n,) or (n, q) with 2-D validation weights
    W: torch.Tensor
    b: torch.Tensor
    P: torch.Tensor           # (n, k) training probabilities (a view of the work buffer)
    P_val: torch.Tensor       # (m, k) validation probabilities (a view of the work buffer)
    y_val: torch.Tensor       # (m,) validation labels
    val_weights: np.ndarray   # as given (None: uniform)
    coords: _Coords
    design_val: _Design
    solve: object             # _HeadSolve or None (identity Hessian)
    S: torch.Tensor           # (q, k, dp) solutions in the design's coordinates
    damping: float
    solver: str
    residual: float
    n_iter: int
    seconds: dict = field(default_factory=dict)
    passes: dict = field(default_factory=dict)

    def score_val_rows(self):
        """The same functional for the validation rows: ``(m,)`` or ``(m, q)``.

        For a row that is not in the head's training set this is the
        predicted *decrease* of the validation loss if it were added (the
        sign convention of the training scores: higher = helps).
        """
        n = self.P.shape[0]
        out = _score_rows(self.design_val, self.P_val, self.y_val, self.S, n)
        return out[:, 0] if self.scores.ndim == 1 else out


def _score_head(tr, y_tr, va, y_va, W=None, b=None, *, n_classes, alpha, damping="auto",
                hessian="exact", solver="auto", val_weights=None, tol=1e-10,
                need_factor=False, fit_tol=1e-10, max_iter=1000, init=None, verbose=0,
                work=None, cg_max_iter=None):
    """The head influence computation shared by every caller.

    ``tr`` and ``va`` are validated :class:`FeatureChunks`, ``y_tr``/``y_va``
    int64 label arrays. The head is fitted on ``tr`` when ``W`` is None
    (sharing the whitening with the solve), from ``init`` (a ``(W, b)`` warm
    start) when given. ``val_weights`` may be a callable ``proba_val ->
    weights`` (cross-fitting trims on the fold's own probabilities), a
    1-D array, or an ``(m, q)`` array of ``q`` weightings solved with one
    factorisation (scores then have shape ``(n, q)``). Returns a
    :class:`_HeadScores`.

    Memory: the only arrays that grow with ``n + m`` are the probabilities,
    held in ``work`` (an ``(n + m, k)`` float64 tensor, allocated when
    omitted; cross-fitting passes one buffer to every fold), the scores and
    the label tensors (views of the given arrays). Neither one-hot labels nor
    residuals are ever stored: they are formed chunk by chunk.
    """
    seconds = {}
    tr.passes = 0
    passes = {}
    k = int(n_classes)
    n, m = tr.n, va.n
    dev = tr.device
    if work is None:
        work = torch.empty(n + m, k, dtype=torch.float64, device=dev)
    P, P_val = work[:n], work[n:n + m]
    with limit_threads():
        t0 = time.perf_counter()
        coords = _Coords.raw(tr) if hessian == "identity" and W is not None \
            else _Coords.whitening(tr)
        A = _Design(tr, coords, cache=True)
        yt = torch.as_tensor(y_tr, device=dev)
        if W is None:
            W, b = _fit_in(A, yt, k, alpha, tol=fit_tol, max_iter=max_iter, init=init, P=P)
            seconds["fit"] = time.perf_counter() - t0
            passes["fit"] = tr.passes
            if hessian == "identity":
                # Gradient similarity depends on the parametrisation: use the original.
                del A
                coords = _Coords.raw(tr)
                A = _Design(tr, coords, cache=True)
            trim_heap()
        t1 = time.perf_counter()
        # Probabilities from the head as given, in the original coordinates.
        _proba(tr, W, b, out=P)
        _proba(va, W, b, out=P_val)
        if callable(val_weights):
            val_weights = val_weights(P_val)
        one = val_weights is None or np.ndim(val_weights) == 1
        Av = _Design(va, coords)
        yv = torch.as_tensor(y_va, device=dev)
        G = _project_null(_val_gradients(Av, P_val, yv,
                                         _normalised_weights(val_weights, m, dev)))
        seconds["gradients"] = time.perf_counter() - t1
        passes["gradients"] = tr.passes - sum(passes.values())
        t2 = time.perf_counter()
        hs = None
        if hessian == "identity":
            S, lam, used, resid, n_iter = G, 0.0, "none", 0.0, 0
        else:
            hs = _HeadSolve(_HeadHessian(A, P, coords.columns(alpha, 0.0)),
                            damping=damping, solver=solver, tol=tol, verbose=verbose,
                            need_factor=need_factor, max_iter=cg_max_iter,
                            damping_columns=coords.columns(1.0, 1.0))
            if len(G) == 1:
                S = hs.solve(G[0])[None]
            else:
                S = hs.solve_many(G)
            n_iter = hs.n_iter
            lam, used = hs.damping, hs.solver
            resid = max(hs.residual(s, g) for s, g in zip(S, G, strict=True))
        seconds["solve"] = time.perf_counter() - t2
        passes["solve"] = tr.passes - sum(passes.values())
        t3 = time.perf_counter()
        scores = _score_rows(A, P, yt, S, n)
        if one:
            scores = scores[:, 0]
        seconds["scores"] = time.perf_counter() - t3
        passes["scores"] = tr.passes - sum(passes.values())
    if not np.isfinite(scores).all():
        raise FloatingPointError(
            "head influence produced non-finite scores; check the features "
            "and increase alpha or damping.")
    return _HeadScores(
        scores=scores, W=_as_f64(W, dev), b=_as_f64(b, dev), P=P, P_val=P_val,
        y_val=yv, val_weights=val_weights, coords=coords, design_val=Av, solve=hs, S=S,
        damping=float(lam), solver=used, residual=float(resid), n_iter=int(n_iter),
        seconds=seconds, passes=passes)


def head_influence(F_train, y_train, F_val, y_val, *, n_classes, alpha,
                   damping="auto", val_weights=None, hessian="exact",
                   solver="auto", W=None, b=None, tol=1e-10, device="cpu",
                   verbose=0, head=None, chunk_size="auto"):
    """Closed-form influence of each training sample on the validation loss.

    ``scores[i] = (1/n) g_valᵀ (H + damping I)⁻¹ ∇L_i``: the predicted
    increase of the (weighted) mean validation loss when training sample
    ``i`` is removed (positive = the sample helps, negative = removing it
    lowers the validation loss). ``H`` is the exact Hessian of the head
    objective at the fitted ``(W, b)``; nothing of size ``n × k(d+1)`` is
    ever built, and features read from a ``numpy.memmap`` (or any array-like
    with row slicing) are processed chunk by chunk: nothing of size ``n × d``
    is held in float64.

    Parameters
    ----------
    F_train : array-like of shape (n, d)
        Training features (ndarray, ``numpy.memmap``, torch tensor, or any
        array-like with ``shape`` and row slicing).
    y_train : array-like of int of shape (n,)
        Training labels in ``0..n_classes-1``.
    F_val : array-like of shape (m, d)
        Validation features (same kinds as ``F_train``).
    y_val : array-like of int of shape (m,)
        Validation labels in ``0..n_classes-1``.
    n_classes : int
        Number of classes ``k``.
    alpha : float
        L2 strength of the head objective (bias not penalised).
    damping : "auto" or float, default="auto"
        Added to ``H``: a float ``lam`` adds ``lam`` to the curvature of every
        weight (like ``alpha``) and of the centred bias. ``"auto"``: 0 (the
        softmax null space is deflated exactly, see the module notes),
        escalated to 1e-9, 1e-6, then 1e-3 times the mean diagonal of ``H``
        in whitened feature coordinates only if the solve fails. The value
        used is reported in the result.
    val_weights : array-like of shape (m,), optional
        Non-negative weights; ``g_val = Σ w_v ∇L_v / Σ w_v``.
    hessian : {"exact", "identity"}, default="exact"
        ``"identity"`` gives gradient similarity ``(1/n) g_valᵀ ∇L_i``.
    solver : {"auto", "cholesky", "cg"}, default="auto"
        See :func:`choose_solver`.
    W : ndarray of shape (n_classes, d), optional
        Weights of a fitted head; with ``b``. Fitted exactly on the training
        features (:func:`fit_head`) when omitted.
    b : ndarray of shape (n_classes,), optional
        Bias of the fitted head; with ``W``.
    tol : float, default=1e-10
        Relative residual tolerance of CG.
    device : str, default="cpu"
        Torch device for the algebra (chunks move there one at a time).
    verbose : int, default=0
        Show CG progress when > 0.
    head : str, optional
        Dotted name of the analysed layer in its network, used only to name
        the parameters in the result (``params``): ``[head + ".weight",
        head + ".bias"]``, or ``["weight", "bias"]`` when omitted.
    chunk_size : int or "auto", default="auto"
        Rows per chunk; ``"auto"`` keeps a moderate in-memory array whole
        (whitened once) and reads anything else in chunks of about 1 MiB of
        float64. Results do not depend on it beyond rounding.

    Returns
    -------
    result : InfluenceResult
        ``residual`` is measured in the whitened coordinates the solve runs in.
        ``info["passes"]``: how many times each phase (``fit``, with the
        whitening statistics; ``gradients``; ``solve``; ``scores``) read all
        training features, the cost that dominates for features on disk.
    """
    t0 = time.perf_counter()
    if hessian not in ("exact", "identity"):
        raise ValueError(f"hessian must be 'exact' or 'identity' for the head, got {hessian!r}.")
    if (W is None) != (b is None):
        raise ValueError("pass both W and b, or neither.")
    tr = _check_features(F_train, "F_train", chunk_size=chunk_size, device=device)
    va = _check_features(F_val, "F_val", chunk_size=chunk_size, device=device)
    if tr.d != va.d:
        raise ValueError(f"F_train has {tr.d} features, F_val {va.d}.")
    y_train = _check_labels(y_train, n_classes, "y_train")
    y_val = _check_labels(y_val, n_classes, "y_val")
    if len(y_train) != tr.n or len(y_val) != va.n:
        raise ValueError("features and labels have inconsistent lengths.")
    res = _score_head(tr, y_train, va, y_val, W, b, n_classes=n_classes, alpha=alpha,
                      damping=damping, hessian=hessian, solver=solver,
                      val_weights=val_weights, tol=tol, verbose=verbose)
    seconds = {**res.seconds, "total": time.perf_counter() - t0}
    params = ["weight", "bias"] if head is None else [f"{head}.weight", f"{head}.bias"]
    return InfluenceResult(
        scores=res.scores, damping=res.damping, solver=res.solver, hessian=hessian,
        residual=res.residual, n_iter=res.n_iter, seconds=seconds, params=params,
        W=res.W.cpu().numpy(), b=res.b.cpu().numpy(), info={"passes": res.passes},
    )


def attribution_matrix(F_train, y_train, F_query, y_query, *, n_classes, alpha,
                       damping="auto", solver="auto", W=None, b=None, block_size=256,
                       out=None, tol=1e-10, device="cpu", chunk_size="auto"):
    """Influence of every training sample on every query's loss: ``(n, q)``.

    ``A[i, j] = (1/n) ∇L_jᵀ (H + damping I)⁻¹ ∇L_i``: the predicted increase of
    query ``j``'s loss if training sample ``i`` is removed (positive = the
    sample helps that query). The mean over the columns is the mean-loss score
    of :func:`head_influence` with the queries as validation set.

    One head fit and one factorisation of ``H`` serve every query: the
    queries are processed in blocks of ``block_size`` (one right-hand side
    each), and each block costs one pass over the training features. With a
    dense Cholesky factor (``k (d+1)`` up to 20,500, chosen by
    ``solver="auto"``) a block's solve is two triangular solves; with CG
    every block is one batched CG run. Memory beyond the features: one
    ``(n, block_size)`` float64 block, or nothing when ``out`` is a memmap.

    Parameters
    ----------
    F_train : array-like of shape (n, d)
        Training features (an ndarray, a ``numpy.memmap`` or any array-like
        read by rows).
    y_train : array-like of int of shape (n,)
        Training labels in ``0..n_classes-1``.
    F_query : array-like of shape (q, d)
        Features of the queries (test samples whose loss is attributed).
    y_query : array-like of int of shape (q,)
        Their labels.
    n_classes : int
        Number of classes ``k``.
    alpha : float
        L2 strength of the head objective (bias not penalised).
    damping : "auto" or float, default="auto"
        As in :func:`head_influence`.
    solver : {"auto", "cholesky", "cg"}, default="auto"
        ``"auto"`` takes the dense factor whenever ``k (d+1)`` allows it (it
        is reused by every query), CG otherwise.
    W : ndarray of shape (n_classes, d), optional
        A fitted head, with ``b``; fitted exactly on the training features
        when omitted.
    b : ndarray of shape (n_classes,), optional
        Its bias.
    block_size : int, default=256
        Queries per block.
    out : array-like of shape (n, q), optional
        Where to write the matrix (e.g. a float32 or float64
        ``numpy.memmap`` for a matrix larger than memory); a new float64
        array when omitted.
    tol : float, default=1e-10
        Relative residual tolerance of CG.
    device : str, default="cpu"
        Torch device for the algebra.
    chunk_size : int or "auto", default="auto"
        Rows of training features per chunk.

    Returns
    -------
    matrix : ndarray or the given ``out``, shape (n, q)
    """
    if (W is None) != (b is None):
        raise ValueError("pass both W and b, or neither.")
    tr = _check_features(F_train, "F_train", chunk_size=chunk_size, device=device)
    qc = _check_features(F_query, "F_query", chunk_size=chunk_size, device=device)
    if tr.d != qc.d:
        raise ValueError(f"F_train has {tr.d} features, F_query {qc.d}.")
    k = int(n_classes)
    y_train = _check_labels(y_train, k, "y_train")
    y_query = _check_labels(y_query, k, "y_query")
    if len(y_train) != tr.n or len(y_query) != qc.n:
        raise ValueError("features and labels have inconsistent lengths.")
    block_size = int(block_size)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}.")
    n, q = tr.n, qc.n
    if out is None:
        out = np.empty((n, q))
    elif tuple(out.shape) != (n, q):
        raise ValueError(f"out must have shape ({n}, {q}), got {tuple(out.shape)}.")
    dev = tr.device
    with limit_threads():
        coords = _Coords.whitening(tr)
        A = _Design(tr, coords, cache=True)
        yt = torch.as_tensor(y_train, device=dev)
        P = torch.empty(n, k, dtype=torch.float64, device=dev)
        if W is None:
            W, b = _fit_in(A, yt, k, alpha, tol=1e-10, max_iter=1000, init=None, P=P)
        _proba(tr, W, b, out=P)
        dp = coords.dp
        if solver == "auto" and k * dp <= DENSE_MAX_DIM:
            solver = "cholesky"
        hs = _HeadSolve(_HeadHessian(A, P, coords.columns(alpha, 0.0)), damping=damping,
                        solver=solver, tol=tol, need_factor=solver == "cholesky",
                        damping_columns=coords.columns(1.0, 1.0))
        Pq = _proba(qc, W, b)
        yq = torch.as_tensor(y_query, device=dev)
        for s in range(0, q, block_size):
            e = min(s + block_size, q)
            # the gradient of each query's own loss, in the solve's coordinates
            Dq = _Design(qc.subset(np.arange(s, e)), coords)
            Aq = torch.cat([Dq.rows(X) for _, X in Dq._centred()])
            Rq = _residuals(Pq[s:e], yq[s:e])
            G = _project_null(Rq[:, :, None] * Aq[:, None, :])
            S = hs.solve_many(G)
            out[:, s:e] = _score_rows(A, P, yt, S, n)
    return out

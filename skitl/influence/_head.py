"""Exact head fit and closed-form influence of a multinomial logistic head.

With the backbone frozen the head is a multinomial logistic regression on the
features ``a = [phi, 1]``. Everything here runs in float64: DESIGN.md §1 records
that a float32 softmax made the exact Hessian indefinite on ImageNet-scale
features. The Hessian is never needed as a matrix for a single right-hand
side; it is built densely only when the Cholesky path is chosen (small
``k * (d + 1)``, or the cross-fitted self-influence which needs a factor).

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

import numpy as np
import torch

from ._results import InfluenceResult
from ._solvers import conjugate_gradient

# Largest k * (d + 1) for which a dense float64 Hessian is built (DESIGN.md:
# ≈ 20k; ResNet-50 features with 10 classes give 20,490).
DENSE_MAX_DIM = 20500

# Relative damping levels tried in turn when damping="auto" and the
# undamped (null-space-deflated) system fails numerically.
_AUTO_DAMPING_LADDER = (0.0, 1e-9, 1e-6, 1e-3)


def _as_f64(F, device):
    return torch.as_tensor(np.asarray(F), dtype=torch.float64, device=device)


def _augment(F, device):
    F = _as_f64(F, device)
    return torch.cat([F, torch.ones(F.shape[0], 1, dtype=F.dtype, device=device)], 1)


class _Whitening:
    """Centre and whiten the training features: an exact reparametrisation.

    Influence ``(1/n) g_valᵀ H⁻¹ ∇L_i`` is a scalar that does not depend on
    the (linear) parametrisation, so the head algebra runs in coordinates
    where the training features have identity covariance: there CG needs a
    handful of iterations where raw ReLU features (correlated, mean ≈ 20)
    need thousands. With ``W = W' Tᵀ``, ``T = U Λ^{-1/2}``, the penalty
    ``(alpha/2)‖W‖²`` stays diagonal: ``alpha / λ_j`` on column ``j``.
    Directions without training variance (``λ_j ≈ 0``) are dropped; this is
    exact for the scores, because no training gradient has a component there.
    """

    def __init__(self, F, device, rtol=1e-10):
        Ft = _as_f64(F, device)
        self.mu = Ft.mean(0)
        Fc = Ft - self.mu
        C = Fc.T @ Fc / max(len(Ft), 1)
        evals, U = torch.linalg.eigh(C)
        keep = evals > rtol * max(float(evals.max()), 1e-300)
        self.U = U[:, keep]
        self.evals = evals[keep]
        self.T = self.U / torch.sqrt(self.evals)
        self.device = device

    def augment(self, F):
        Z = (_as_f64(F, self.device) - self.mu) @ self.T
        return torch.cat([Z, torch.ones(len(Z), 1, dtype=Z.dtype, device=Z.device)], 1)

    def columns(self, weight_value, bias_value):
        """Per-column diagonal of ``weight_value * ‖W‖² + bias_value * b'²``."""
        return torch.cat([weight_value / self.evals,
                          torch.full((1,), float(bias_value), dtype=torch.float64,
                                     device=self.device)])

    def perp_sq(self, F):
        """Squared norm of the centred features outside the kept directions."""
        Fc = _as_f64(F, self.device) - self.mu
        return ((Fc**2).sum(1) - ((Fc @ self.U) ** 2).sum(1)).clamp_min(0.0)

    def to_white(self, W, b):
        W = _as_f64(W, self.device)
        b = _as_f64(b, self.device)
        Wp = W @ (self.U * torch.sqrt(self.evals))
        return torch.cat([Wp, (b + W @ self.mu)[:, None]], 1)

    def from_white(self, th):
        W = th[:, :-1] @ self.T.T
        b = th[:, -1] - W @ self.mu
        return W, b


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
    return y.astype(np.int64)


def _check_features(F, name):
    F = np.asarray(F)
    if F.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got {F.shape}.")
    if F.shape[0] == 0:
        raise ValueError(f"{name} is empty.")
    if not np.isfinite(F).all():
        raise ValueError(
            f"{name} contains NaN or infinite values; influence needs finite "
            "features (check the backbone and the inputs)."
        )
    return F


def _softmax64(logits):
    # float64 softmax, renormalised so that rows sum to 1 to rounding:
    # DESIGN.md "Numerics that were measured to bite".
    p = torch.softmax(logits.to(torch.float64), dim=1)
    return p / p.sum(1, keepdim=True)


def _onehot(y, k, device):
    Y = torch.zeros(len(y), k, dtype=torch.float64, device=device)
    Y[torch.arange(len(y), device=device), torch.as_tensor(y, device=device)] = 1.0
    return Y


def _project_null(V):
    # Remove the component along the softmax null space {1 ⊗ v}.
    return V - V.mean(0, keepdim=True)


def predict_proba_head(F, W, b, *, device="cpu"):
    """Class probabilities of a fitted head, computed in float64.

    Parameters
    ----------
    F : ndarray of shape (n_samples, n_features)
    W : ndarray of shape (n_classes, n_features)
    b : ndarray of shape (n_classes,)
    device : str, default="cpu"

    Returns
    -------
    proba : ndarray of shape (n_samples, n_classes)
    """
    A = _augment(F, device)
    theta = torch.cat([_as_f64(W, device), _as_f64(b, device)[:, None]], 1)
    return _softmax64(A @ theta.T).cpu().numpy()


def fit_head(F, y, n_classes, *, alpha, tol=1e-10, max_iter=1000, init=None,
             device="cpu"):
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
        Features (any float dtype; computed in float64).
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
        Torch device for the algebra.

    Returns
    -------
    W : ndarray of float64 of shape (n_classes, n_features)
    b : ndarray of float64 of shape (n_classes,)
        The bias is centred (sums to zero over classes): the objective does
        not depend on a common shift of the bias.
    """
    F = _check_features(F, "F")
    y = _check_labels(y, n_classes, "y")
    if len(y) != F.shape[0]:
        raise ValueError(f"F has {F.shape[0]} rows but y has {len(y)} labels.")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}.")
    n, d = F.shape
    k = int(n_classes)
    wh = _Whitening(F, device)
    Z = wh.augment(F)
    Y = _onehot(y, k, device)
    pen = wh.columns(alpha, 0.0)

    def objective(th):
        logits = Z @ th.T
        lse = torch.logsumexp(logits, 1)
        loss = (lse - (logits * Y).sum(1)).mean() + 0.5 * (pen * th**2).sum()
        return float(loss), logits, lse

    if init is None:
        th = torch.zeros(k, Z.shape[1], dtype=torch.float64, device=device)
    else:
        th = _project_null(wh.to_white(*init))
    # Newton-CG with an Armijo line search: quadratic convergence to the
    # tight tolerance influence needs, at a cost of a few dozen matrix-free
    # Hessian products per step (L-BFGS crawls at these tolerances).
    loss, logits, lse = objective(th)
    gmax = np.inf
    n_newton = 0
    history = []
    for it in range(1, max_iter + 1):
        n_newton = it
        P = torch.exp(logits - lse[:, None])
        P = P / P.sum(1, keepdim=True)
        g = _project_null((P - Y).T @ Z / n) + pen * th
        gmax = float(g.abs().max())
        if gmax <= tol:
            break
        hess = _HeadHessian(Z, P, alpha, pen=pen)
        mean_diag = float(hess.diag().mean())
        inv = torch.linalg.inv(hess.column_blocks() + mean_diag / k)

        def op(V, hess=hess, mu_=mean_diag):
            return hess.matvec(V) + mu_ * V.mean(0, keepdim=True)

        def precond(R, inv=inv):
            return torch.einsum("jcd,dj->cj", inv, R)

        gnorm = float(torch.linalg.norm(g))
        eta = min(0.5, np.sqrt(gnorm)) if gnorm > 1e-8 else 1e-10
        step, _ = conjugate_gradient(op, -g, tol=max(eta, 1e-12), max_iter=10 * g.numel(),
                                     preconditioner=precond, raise_on_failure=False)
        # A diagonal preconditioner lets inexact steps drift into the softmax
        # null space, where only the (weak) penalty pulls back; the minimiser
        # has no null component, so keep iterates out of it.
        step = _project_null(step)
        slope = float((g * step).sum())
        if not slope < 0:
            step, slope = -g, -float((g * g).sum())
        t = 1.0
        accepted = False
        for _ in range(60):
            th_new = th + t * step
            loss_new, logits_new, lse_new = objective(th_new)
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
        th, loss, logits, lse = th_new, loss_new, logits_new, lse_new
    if gmax > max(1e3 * tol, 1e-6):
        warnings.warn(
            f"fit_head: Newton stopped after {n_newton} iterations with gradient "
            f"max-norm {gmax:.2e} > tol={tol:g}; influence assumes an exact "
            "minimiser, raise max_iter or alpha.",
            RuntimeWarning, stacklevel=2,
        )
    W, b = wh.from_white(th)
    b = b - b.mean()
    return W.cpu().numpy(), b.cpu().numpy()


class _HeadHessian:
    """Matrix-free Hessian of the head objective at a fixed ``(W, b)``."""

    def __init__(self, A, P, alpha, pen=None):
        self.A = A
        self.P = P
        self.n, self.dp = A.shape
        self.k = P.shape[1]
        self.alpha = alpha
        if pen is None:
            # alpha acts on the weight columns only, never on the bias column.
            pen = torch.full((self.dp,), float(alpha), dtype=A.dtype, device=A.device)
            pen[-1] = 0.0
        self.pen = pen

    def diag(self):
        d = ((self.P * (1 - self.P)).T @ self.A**2) / self.n
        return d + self.pen

    def column_blocks(self):
        """Exact ``k × k`` diagonal blocks, one per feature column: (dp, k, k).

        ``Σ_i a_ij² (diag p_i − p_i p_iᵀ) / n + pen_j I``. As a block-Jacobi
        preconditioner it captures the coupling between classes that a plain
        diagonal misses (whitening already removed most of the coupling
        between features).
        """
        A2 = self.A**2 / self.n                                   # (n, dp)
        D = A2.T @ self.P                                          # (dp, k)
        # one GEMM over the flattened outer products: einsum's contraction
        # order here was ~10x slower and dominated the head fit.
        PP = (self.P[:, :, None] * self.P[:, None, :]).reshape(self.n, -1)
        blocks = -(A2.T @ PP).reshape(-1, self.k, self.k)
        idx = torch.arange(self.k, device=self.A.device)
        blocks[:, idx, idx] += D + self.pen[:, None]
        return blocks

    def matvec(self, V):
        U = self.A @ V.T
        PU = self.P * U
        Z = PU - self.P * PU.sum(1, keepdim=True)
        return Z.T @ self.A / self.n + self.pen * V

    def dense(self, chunk_elems=2**24):
        k, dp, n = self.k, self.dp, self.n
        H = torch.zeros(k * dp, k * dp, dtype=self.A.dtype, device=self.A.device)
        rows = max(1, chunk_elems // (k * dp))
        for c in range(k):
            # B[i, c'] = p_ic δ_cc' − p_ic p_ic' for c' >= c (mirror the rest).
            block = torch.zeros(dp, (k - c) * dp, dtype=H.dtype, device=H.device)
            for s in range(0, n, rows):
                A = self.A[s:s + rows]
                P = self.P[s:s + rows]
                B = -P[:, c:c + 1] * P[:, c:]
                B[:, 0] += P[:, c]
                block += A.T @ (B[:, :, None] * A[:, None, :]).reshape(len(A), -1)
            block /= n
            H[c * dp:(c + 1) * dp, c * dp:] = block
        iu = torch.triu_indices(k, k, 1)
        for c, c2 in zip(iu[0].tolist(), iu[1].tolist()):
            H[c2 * dp:(c2 + 1) * dp, c * dp:(c + 1) * dp] = (
                H[c * dp:(c + 1) * dp, c2 * dp:(c2 + 1) * dp].T)
        idx = torch.arange(k * dp, device=H.device)
        H[idx, idx] += self.pen.repeat(k)
        return H


def _null_projector_dense(k, dp, dtype, device):
    # P_null = (1 1ᵀ / k) ⊗ I_dp in the row-major (class, feature) layout.
    return torch.kron(torch.full((k, k), 1.0 / k, dtype=dtype, device=device),
                      torch.eye(dp, dtype=dtype, device=device))


def choose_solver(n, k, dp, device="cpu", need_factor=False):
    """Pick the head solver for ``solver="auto"``.

    Dense Cholesky costs about ``n k² dp² + (k dp)³ / 3`` flops and gives a
    factor that cross-fitting reuses for every self-influence; CG costs a few
    dozen matrix-free products of ``4 n k dp`` flops each. One right-hand
    side on a CPU therefore favours CG once the dense build gets large (with
    whitening and the block-Jacobi preconditioner CG needs tens of iterations).

    Parameters
    ----------
    n, k, dp : int
        Training samples, classes, features + 1.
    device : str, default="cpu"
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
        self.mean_diag = float(hess.diag().mean())
        k, dp = hess.k, hess.dp
        if solver == "auto":
            solver = choose_solver(hess.n, k, dp, hess.A.device, need_factor)
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
        ones = torch.ones(dp, dtype=hess.A.dtype, device=hess.A.device)
        # "auto" damps the (well-scaled) whitened coordinates; an explicit
        # value means lam * I on the original parameters (damping_columns).
        self.cols = ones
        if damping == "auto":
            self.ladder = [r * self.mean_diag for r in _AUTO_DAMPING_LADDER]
        else:
            if damping_columns is not None:
                self.cols = damping_columns
            damping = float(damping)
            if not np.isfinite(damping) or damping < 0:
                raise ValueError(f"damping must be 'auto' or a float >= 0, got {damping}.")
            self.ladder = [damping]
        self.L = None
        self.damping = None
        if solver == "cholesky":
            self._factor()

    def _factor(self):
        hess = self.hess
        Hd = hess.dense()
        Hd += self.mean_diag * _null_projector_dense(
            hess.k, hess.dp, Hd.dtype, Hd.device)
        idx = torch.arange(Hd.shape[0], device=Hd.device)
        for lam in self.ladder:
            Hl = Hd.clone()
            Hl[idx, idx] += lam * self.cols.repeat(hess.k)
            L, info = torch.linalg.cholesky_ex(Hl)
            if int(info) == 0:
                self.L, self.damping = L, lam
                return
        raise np.linalg.LinAlgError(
            "The head Hessian is not positive definite even with damping "
            f"{self.ladder[-1]:.3g} (mean diagonal {self.mean_diag:.3g}); "
            "increase alpha or pass a larger damping.")

    def _op(self, lam):
        mu = self.mean_diag

        def op(V):
            HV = self.hess.matvec(V) + lam * self.cols * V
            return HV + mu * V.mean(0, keepdim=True)  # + mu * P_null V
        return op

    def solve(self, G):
        """Return ``S`` with ``(H + damping I) S = G`` for ``G`` of shape (k, dp)."""
        G = _project_null(G)
        if self.solver == "cholesky":
            S = torch.cholesky_solve(G.reshape(-1, 1), self.L).view_as(G)
            self.n_iter = 0
            return S
        blocks = self.hess.column_blocks()
        blocks += (self.mean_diag / self.hess.k)  # the null-space term, per column
        eye = torch.eye(self.hess.k, dtype=blocks.dtype, device=blocks.device)
        last = None
        for lam in self.ladder:
            op = self._op(lam)
            inv = torch.linalg.inv(blocks + lam * self.cols[:, None, None] * eye)

            def precond(R, inv=inv):
                return torch.einsum("jcd,dj->cj", inv, R)

            S, info = conjugate_gradient(
                op, G, tol=self.tol, max_iter=self.max_iter or 10 * G.numel(),
                preconditioner=precond, verbose=self.verbose, raise_on_failure=False,
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

    def residual(self, S, G):
        G = _project_null(G)
        R = self.hess.matvec(S) + self.damping * self.cols * S - G
        return float(torch.linalg.norm(R) / max(float(torch.linalg.norm(G)), 1e-300))

    def quad_form_samples(self, A, R, chunk=256):
        """``r_iᵀ-a_i`` quadratic forms ``vec(r_i a_iᵀ)ᵀ (H+λ)⁻¹ vec(r_i a_iᵀ)``."""
        out = torch.empty(A.shape[0], dtype=A.dtype, device=A.device)
        for s in range(0, A.shape[0], chunk):
            Gi = R[s:s + chunk, :, None] * A[s:s + chunk, None, :]   # (m, k, dp)
            Gi = _project_null(Gi.transpose(0, 1)).transpose(0, 1)
            Zi = torch.linalg.solve_triangular(
                self.L, Gi.reshape(len(Gi), -1).T, upper=False)
            out[s:s + chunk] = (Zi**2).sum(0)
        return out


def _val_gradient(A_val, R_val, val_weights):
    m = A_val.shape[0]
    if val_weights is None:
        w = torch.full((m,), 1.0 / m, dtype=A_val.dtype, device=A_val.device)
    else:
        w = torch.as_tensor(np.asarray(val_weights, dtype=np.float64),
                            device=A_val.device)
        if w.shape != (m,):
            raise ValueError(f"val_weights must have shape ({m},), got {tuple(w.shape)}.")
        if not torch.isfinite(w).all() or (w < 0).any() or float(w.sum()) <= 0:
            raise ValueError("val_weights must be finite, >= 0 and not all zero.")
        w = w / w.sum()
    return (R_val * w[:, None]).T @ A_val


def head_influence(F_train, y_train, F_val, y_val, *, n_classes, alpha,
                   damping="auto", val_weights=None, hessian="exact",
                   solver="auto", W=None, b=None, tol=1e-10, device="cpu",
                   verbose=0):
    """Closed-form influence of each training sample on the validation loss.

    ``scores[i] = (1/n) g_valᵀ (H + damping I)⁻¹ ∇L_i``: the predicted
    increase of the (weighted) mean validation loss when training sample
    ``i`` is removed (DESIGN.md §1 sign; positive = helpful). ``H`` is the
    exact Hessian of the head objective at the fitted ``(W, b)``; nothing of
    size ``n × k(d+1)`` is ever built.

    Parameters
    ----------
    F_train : array-like of shape (n, d)
        Training features.
    y_train : array-like of int of shape (n,)
    F_val : array-like of shape (m, d)
        Validation features.
    y_val : array-like of int of shape (m,)
    n_classes : int
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
    W, b : ndarray, optional
        A fitted head; fitted with :func:`fit_head` when omitted.
    tol : float, default=1e-10
        Relative residual tolerance of CG.
    device : str, default="cpu"
    verbose : int, default=0

    Returns
    -------
    result : InfluenceResult
        ``residual`` is measured in the whitened coordinates the solve runs in.
    """
    t0 = time.perf_counter()
    seconds = {}
    F_train = _check_features(F_train, "F_train")
    F_val = _check_features(F_val, "F_val")
    if F_train.shape[1] != F_val.shape[1]:
        raise ValueError(f"F_train has {F_train.shape[1]} features, F_val {F_val.shape[1]}.")
    y_train = _check_labels(y_train, n_classes, "y_train")
    y_val = _check_labels(y_val, n_classes, "y_val")
    if len(y_train) != len(F_train) or len(y_val) != len(F_val):
        raise ValueError("features and labels have inconsistent lengths.")
    if hessian not in ("exact", "identity"):
        raise ValueError(f"hessian must be 'exact' or 'identity' for the head, got {hessian!r}.")
    if (W is None) != (b is None):
        raise ValueError("pass both W and b, or neither.")
    if W is None:
        W, b = fit_head(F_train, y_train, n_classes, alpha=alpha, device=device)
        seconds["fit"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    k = int(n_classes)
    n = F_train.shape[0]
    theta = torch.cat([_as_f64(W, device), _as_f64(b, device)[:, None]], 1)
    # Probabilities from the head as given; gradients and Hessian in the
    # whitened coordinates of the training features (see _Whitening).
    P = _softmax64(_augment(F_train, device) @ theta.T)
    Pv = _softmax64(_augment(F_val, device) @ theta.T)
    if hessian == "identity":
        # Gradient similarity depends on the parametrisation: use the original.
        A, Av = _augment(F_train, device), _augment(F_val, device)
    else:
        wh = _Whitening(F_train, device)
        A, Av = wh.augment(F_train), wh.augment(F_val)
    R = P - _onehot(y_train, k, device)
    Rv = Pv - _onehot(y_val, k, device)
    G = _project_null(_val_gradient(Av, Rv, val_weights))
    seconds["gradients"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    if hessian == "identity":
        S, lam, used, resid, n_iter = G, 0.0, "none", 0.0, 0
    else:
        hess = _HeadHessian(A, P, alpha, pen=wh.columns(alpha, 0.0))
        hs = _HeadSolve(hess, damping=damping, solver=solver, tol=tol, verbose=verbose,
                        damping_columns=wh.columns(1.0, 1.0))
        S = hs.solve(G)
        lam, used, n_iter = hs.damping, hs.solver, hs.n_iter
        resid = hs.residual(S, G)
    seconds["solve"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    scores = ((A @ S.T) * R).sum(1) / n
    scores = scores.cpu().numpy()
    seconds["scores"] = time.perf_counter() - t3
    if not np.isfinite(scores).all():
        raise FloatingPointError(
            "head influence produced non-finite scores; check the features "
            "and increase alpha or damping.")
    seconds["total"] = time.perf_counter() - t0
    return InfluenceResult(
        scores=scores, damping=float(lam), solver=used, hessian=hessian,
        residual=float(resid), n_iter=int(n_iter), seconds=seconds,
        params=["head.weight", "head.bias"], W=np.asarray(W), b=np.asarray(b),
    )

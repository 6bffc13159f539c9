"""One class per inverse-Hessian solver of the deep path.

Each takes the :class:`~skitl.influence._operator.CurvatureOperator` and a
damping, and exposes ``solve(g) -> s ≈ (H + damping I)⁻¹ g``. After ``solve``:
``n_iter_`` (iterations, 0 for explicit inverses), ``residual_`` (the measured
relative residual ``‖(H + damping I) s − g‖ / ‖g‖`` against the operator, one
extra pass over the training data for the approximate inverses) and
``info_`` (solver extras). A new solver is one more class here.
"""

import math
import warnings

import torch
from sklearn.exceptions import ConvergenceWarning

from ._ekfac import EKFAC
from ._solvers import arnoldi, arnoldi_solve, conjugate_gradient, lissa

#: ``damping="auto"`` of solves on the GGN or exact Hessian (CG, LiSSA, Arnoldi):
#: this times each module's mean eigenvalue. 1.0 rather than kronfluence's 0.1:
#: the LDS of converged GGN-CG on the digits benchmark rose from 0.64 / 0.60
#: (seeds 0 / 1) at 0.1 to 0.69 / 0.74 at 1.0 and 0.69 / 0.75 at 3.0; 0.73 at
#: 10 and 0.68 at 30 (seed 1).
GGN_DAMPING_FACTOR = 1.0
#: ``damping="auto"`` of the EK-FAC solver: kronfluence's 0.1 (its LDS on the same
#: benchmark fell from 0.49 at 0.1 to 0.42 at 1.0 and 0.34 at 3.0).
EKFAC_DAMPING_FACTOR = 0.1
_ROWS = 1 << 16
_COLUMNS = 16  # sketch columns per pass over the data (one accumulator each)


class _Solver:
    name = ""

    def __init__(self, operator, damping, *, measure_residual=True):
        self.operator = operator
        # A float, or a flat vector constant on each module's block.
        self.damping = damping if torch.is_tensor(damping) else float(damping)
        self.measure_residual = measure_residual
        self.n_iter_ = 0
        self.residual_ = float("nan")
        self.info_ = {}

    @property
    def damping_value(self):
        """The damping as one number (the mean over parameters when per block)."""
        d = self.damping
        return float(d.double().mean()) if torch.is_tensor(d) else d

    def _measure(self, s, g):
        if self.measure_residual:
            self.residual_ = self.operator.relative_residual(s, g, self.damping)


class IdentitySolver(_Solver):
    """``H = I``: scores are gradient similarities (TracIn with one checkpoint).

    The solve is exact, so the residual is 0.
    """

    name = "none"

    def solve(self, g):
        self.residual_ = 0.0
        return g


class EKFACSolver(_Solver):
    """Explicit inverse of the EK-FAC approximation of the GGN.

    Parameters
    ----------
    operator : CurvatureOperator
    damping : float, torch.Tensor or "auto"
        ``"auto"``: on each module's block, ``EKFAC_DAMPING_FACTOR`` (0.1)
        times the mean EK-FAC eigenvalue of that block (kronfluence's default).
    n_label_samples : int, default=1
    generator : torch.Generator, optional
    measure_residual : bool, default=True
        Measure the residual against the damped GGN operator (one pass).
    """

    name = "ekfac"

    def __init__(self, operator, damping, *, n_label_samples=1, generator=None,
                 measure_residual=True, ekfac=None):
        self.ekfac = ekfac or EKFAC(operator, n_label_samples=n_label_samples,
                                    generator=generator).fit(verbose=operator.verbose)
        if isinstance(damping, str) and damping == "auto":
            damping = operator.model.per_block(
                {k: EKFAC_DAMPING_FACTOR * v
                 for k, v in self.ekfac.block_mean_eigenvalues().items()})
        super().__init__(operator, damping, measure_residual=measure_residual)
        self.info_["mean_eigenvalue"] = self.ekfac.mean_eigenvalue()

    def solve(self, g):
        s = self.ekfac.inverse(g, self.damping + self.operator.alpha)
        self._measure(s, g)
        return s


class NystromPreconditioner:
    """Randomized Nyström preconditioner of the damped operator for CG.

    Frangella, Tropp & Udell (2023), "Randomized Nyström preconditioning":
    ``r`` products of the operator with a random orthonormal sketch give a
    rank-``r`` approximation ``U Λ Uᵀ`` of its top eigenpairs, and

    ``P⁻¹ = U (Λ + μ)⁻¹ Uᵀ (λ_r + μ) + (I − U Uᵀ)``

    maps the top ``r`` eigenvalues of the damped operator to about
    ``λ_r + μ`` and leaves the rest alone, so CG's condition number becomes
    about ``(λ_{r+1} + μ) / μ``. A per-module damping vector ``d`` is
    handled by sketching the symmetrically scaled operator ``D^{-1/2} H
    D^{-1/2}`` (whose damping is then exactly ``μ = 1``) and applying
    ``D^{-1/2} P⁻¹ D^{-1/2}``: with a scalar damping this is the plain
    preconditioner, with ``damping="auto"`` it also equalises the modules'
    curvature scales as the block preconditioner does.

    Parameters
    ----------
    operator : CurvatureOperator
        The undamped operator (``alpha`` included).
    damping : float or torch.Tensor
        The damping of the solve (a scalar or one value per parameter); must
        be > 0.
    rank : int, default=32
        Sketch size ``r``: ``r`` Hessian-vector products (16 per pass over
        the training data), two ``r × parameters`` tensors of the
        parameters' dtype while fitting, one after.
    generator : torch.Generator, optional
        Source of the random sketch.

    Attributes
    ----------
    eigenvalues_ : torch.Tensor of shape (r',)
        The approximate top eigenvalues of the scaled operator (``r' <= r``:
        directions the sketch did not resolve are dropped).
    n_passes_ : int
        Hessian-vector products spent on the sketch (``rank``).
    """

    name = "nystrom"

    def __init__(self, operator, damping, *, rank=32, generator=None):
        rank = int(rank)
        if not 1 <= rank <= operator.dim:
            raise ValueError(f"rank must be in [1, {operator.dim}] (the number of "
                             f"analysed parameters), got {rank}.")
        d = damping if torch.is_tensor(damping) else torch.tensor(float(damping))
        if not bool((d > 0).all()):
            raise ValueError("preconditioner='nystrom' needs damping > 0 on every "
                             "parameter (it preconditions H + damping I).")
        self.operator, self.rank, self.generator = operator, rank, generator
        d = d.to(dtype=operator.model.dtype, device=operator.model.device)
        self.scale = (d.expand(operator.dim) if d.dim() == 0 else d).rsqrt()
        self.eigenvalues_ = None
        self.n_passes_ = 0

    def fit(self):
        """Sketch the scaled operator and keep its top eigenpairs; returns self."""
        op, S, r = self.operator, self.scale, self.rank
        dt, dev = op.model.dtype, op.model.device
        omega = torch.randn(op.dim, r, generator=self.generator, dtype=dt).to(dev)
        if 4 * r > op.dim:  # nearly square: Householder QR (small problems only)
            omega = torch.linalg.qr(omega)[0]
        else:
            # A tall Gaussian matrix has condition number <= 3 here, so one
            # Cholesky QR pass orthonormalises it well enough (the exact ΩᵀΩ is
            # used below anyway) with two GEMMs: Householder QR of 4.7 M × 32
            # took 4 CPU s, more than the Hessian-vector products of the sketch.
            L = torch.linalg.cholesky(sum(
                (c := omega[i:i + _ROWS].double()).T @ c for i in range(0, op.dim, _ROWS)))
            Linv_t = torch.linalg.inv(L).T.to(dt)
            for i in range(0, op.dim, _ROWS):
                omega[i:i + _ROWS] = omega[i:i + _ROWS] @ Linv_t
        Y = torch.empty_like(omega)
        before = op.n_passes
        for j in range(0, r, _COLUMNS):
            Y[:, j:j + _COLUMNS] = S[:, None] * op.matmat(S[:, None] * omega[:, j:j + _COLUMNS])
        self.n_passes_ = op.n_passes - before
        # [Ω Y]ᵀ[Ω Y] in float64 over row chunks (no p × r float64 copy).
        gram = sum((c := torch.cat((omega[i:i + _ROWS], Y[i:i + _ROWS]), 1).double()).T @ c
                   for i in range(0, op.dim, _ROWS))
        OO, OY, YY = gram[:r, :r], gram[:r, r:], gram[r:, r:]
        # Y + νΩ = (A + νI) Ω with ν ~ the rounding of float32 products makes the
        # core Ωᵀ(A + νI)Ω positive definite; ν is subtracted from the eigenvalues.
        nu = float(torch.linalg.eigvalsh(YY)[-1].sqrt()) * op.dim ** 0.5 * torch.finfo(dt).eps
        core = 0.5 * (OY + OY.T) + nu * OO
        G = YY + nu * (OY + OY.T) + nu * nu * OO  # (Y + νΩ)ᵀ(Y + νΩ)
        eye = torch.eye(r, dtype=torch.float64, device=dev)
        # B = (Y + νΩ) C⁻ᵀ with C = chol(core): its left singular vectors are U and
        # its squared singular values Λ + ν, from the r × r Gram matrix
        # Bᵀ B = C⁻¹ G C⁻ᵀ instead of an SVD of a p × r matrix.
        C, err = torch.linalg.cholesky_ex(core)
        if int(err):
            raise RuntimeError(
                f"The Nyström sketch of the {op.hessian} Hessian is not positive "
                "semi-definite (the exact Hessian is indefinite away from a minimum); "
                "use hessian='ggn' or another preconditioner.")
        Ci = torch.linalg.solve_triangular(C, eye, upper=False)
        sig2, V = torch.linalg.eigh(Ci @ G @ Ci.T)
        keep = (sig2 - nu > 0).flip(0)
        sig2, V = sig2.flip(0)[keep], V.flip(1)[:, keep]  # descending
        W = (Ci.T @ V / sig2.sqrt()).to(dt)
        for i in range(0, op.dim, _ROWS):  # U overwrites Y, chunk by chunk
            Y[i:i + _ROWS, :len(sig2)] = (Y[i:i + _ROWS] + nu * omega[i:i + _ROWS]) @ W
        del omega
        self.U = Y[:, :len(sig2)].clone() if len(sig2) < r else Y
        lam = sig2 - nu
        self.eigenvalues_ = lam.to(dt)
        # (λ_r + μ) / (λ + μ) − 1 on the kept directions, μ = 1 on the scaled operator.
        self._coef = ((lam[-1] + 1.0) / (lam + 1.0) - 1.0).to(dt)
        return self

    def apply(self, r):
        """``P⁻¹ r`` for the damped operator (a flat vector)."""
        x = self.scale * r
        x = x + self.U @ (self._coef * (self.U.T @ x))
        return self.scale * x


class CGSolver(_Solver):
    """Conjugate gradient on the damped operator, optionally EK-FAC preconditioned.

    Parameters
    ----------
    operator : CurvatureOperator
    damping : float or torch.Tensor
    tol : float, default=1e-3
        Relative residual to reach.
    max_iter : int, default=500
    preconditioner : EKFAC, NystromPreconditioner, torch.Tensor or None
        An EKFAC (its damped inverse preconditions), a fitted
        NystromPreconditioner, or a flat vector ``m`` (the diagonal
        preconditioner ``r -> r / m``).
    on_failure : {"warn", "raise"}, default="warn"
        What to do when ``tol`` is not reached: a ``ConvergenceWarning`` or a
        ``RuntimeError``.
    """

    name = "cg"

    def __init__(self, operator, damping, *, tol=1e-3, max_iter=500, preconditioner=None,
                 on_failure="warn"):
        super().__init__(operator, damping)
        if on_failure not in ("warn", "raise"):
            raise ValueError(f"on_failure must be 'warn' or 'raise', got {on_failure!r}.")
        self.tol = float(tol)
        self.max_iter = int(max_iter)
        self.preconditioner = preconditioner
        self.on_failure = on_failure

    def solve(self, g):
        op = self.operator
        lam = self.damping
        pre = None
        if torch.is_tensor(self.preconditioner):
            diag = self.preconditioner
            pre = lambda r: r / diag  # noqa: E731
        elif isinstance(self.preconditioner, NystromPreconditioner):
            pre = self.preconditioner.apply
        elif self.preconditioner is not None:
            ek = self.preconditioner
            pre = lambda r: ek.inverse(r, lam + op.alpha)  # noqa: E731
        s, info = conjugate_gradient(op.damped(lam), g, tol=self.tol,
                                     max_iter=self.max_iter, preconditioner=pre,
                                     verbose=op.verbose, raise_on_failure=False)
        self.n_iter_ = info["n_iter"]
        if info["negative_curvature"] or not math.isfinite(info["residual"]):
            raise RuntimeError(
                f"CG met non-positive curvature at iteration {info['n_iter']}: the "
                f"damped {op.hessian} Hessian (damping {self.damping_value:.3g}) is not positive "
                "definite at these parameters (common away from a minimum). Use "
                "hessian='ggn' (always positive semi-definite) or a larger damping.")
        self.residual_ = op.relative_residual(s, g, lam)
        self.info_["recursion_residual"] = info["residual"]
        # The recursion can go below the precision at which the true residual
        # can be evaluated in float32; judge against that floor.
        floor = 50 * torch.finfo(g.dtype).eps
        if self.residual_ > max(self.tol, floor):
            msg = (f"CG stopped after {self.n_iter_} iterations at relative residual "
                   f"{self.residual_:.2e} > tol={self.tol:g} (damping {self.damping_value:.3g}); raise "
                   "max_iter or damping.")
            if self.on_failure == "raise":
                raise RuntimeError(msg)
            warnings.warn(msg, ConvergenceWarning, stacklevel=4)
        return s


class LiSSASolver(_Solver):
    """LiSSA: Neumann series on mini-batch Hessians.

    Parameters
    ----------
    operator : CurvatureOperator
    damping : float or torch.Tensor
    depth : int, default=1000
    scale : float, optional
        Must exceed the largest eigenvalue; estimated when omitted.
    batch_size : int, optional
        Mini-batch of each step (the operator's by default).
    tol : float, default=1e-8
    generator : torch.Generator, optional
    """

    name = "lissa"

    def __init__(self, operator, damping, *, depth=1000, scale=None, batch_size=None,
                 tol=1e-8, generator=None):
        super().__init__(operator, damping)
        self.depth, self.scale, self.tol = int(depth), scale, tol
        self.batch_size = batch_size or operator.batch_size
        self.generator = generator

    def solve(self, g):
        op = self.operator
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            s, info = lissa(op.minibatch_matvecs(self.batch_size), g, damping=self.damping,
                            depth=self.depth, scale=self.scale, tol=self.tol,
                            generator=self.generator, verbose=op.verbose)
        self.n_iter_ = info["n_iter"]
        self.info_.update(info)
        self._measure(s, g)
        if caught:
            warnings.warn(f"{caught[0].message} Measured relative residual "
                          f"{self.residual_:.2e}.", ConvergenceWarning, stacklevel=4)
        return s


class ArnoldiSolver(_Solver):
    """Low-rank inverse from the top eigenpairs found by Arnoldi iteration.

    Parameters
    ----------
    operator : CurvatureOperator
    damping : float
    n_iter : int, default=100
        Krylov dimension (one pass over the training data each).
    rank : int, default=20
    generator : torch.Generator, optional
    """

    name = "arnoldi"

    def __init__(self, operator, damping, *, n_iter=100, rank=20, generator=None):
        super().__init__(operator, damping)
        self.k, self.rank, self.generator = int(n_iter), int(rank), generator

    def solve(self, g):
        op = self.operator
        evals, evecs = arnoldi(op.matvec, g, n_iter=self.k, rank=self.rank,
                               generator=self.generator, verbose=op.verbose)
        keep = evals + self.damping > 0
        if not bool(keep.all()):
            warnings.warn(
                f"Arnoldi dropped {int((~keep).sum())} eigenpairs with eigenvalue + "
                "damping <= 0 (indefinite Hessian); use hessian='ggn'.",
                RuntimeWarning, stacklevel=4)
        s = arnoldi_solve(evals[keep], evecs[keep], g, damping=self.damping)
        self.n_iter_ = len(evals)
        self.info_["eigenvalues"] = evals.cpu().numpy()
        self._measure(s, g)
        return s


SOLVERS = {"cg": CGSolver, "lissa": LiSSASolver, "arnoldi": ArnoldiSolver}

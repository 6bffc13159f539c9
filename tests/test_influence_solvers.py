"""Solvers on explicit symmetric positive definite matrices."""

import numpy as np
import pytest
import torch

from skitl.influence import arnoldi, arnoldi_solve, conjugate_gradient, lissa


def _spd(p=30, cond=100.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64))
    evals = torch.logspace(0, np.log10(cond), p, dtype=torch.float64)
    return Q @ torch.diag(evals) @ Q.T, evals


def test_cg_solves_and_reports():
    A, _ = _spd()
    b = torch.arange(30, dtype=torch.float64)
    x, info = conjugate_gradient(lambda v: A @ v, b, tol=1e-12)
    np.testing.assert_allclose(x.numpy(), torch.linalg.solve(A, b).numpy(), rtol=1e-9)
    assert info["converged"] and info["residual"] <= 1e-12
    d = torch.diag(A)
    xp, infop = conjugate_gradient(lambda v: A @ v, b, tol=1e-12, preconditioner=lambda r: r / d)
    np.testing.assert_allclose(xp.numpy(), x.numpy(), rtol=1e-9)


def test_cg_refuses_indefinite():
    A = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    with pytest.raises(RuntimeError, match="curvature"):
        conjugate_gradient(lambda v: A @ v, torch.tensor([1.0, 1.0], dtype=torch.float64))
    x, info = conjugate_gradient(lambda v: A @ v, torch.tensor([1.0, 1.0], dtype=torch.float64),
                                 raise_on_failure=False)
    assert not info["converged"] and info["negative_curvature"]


def test_lissa_converges_to_inverse():
    A, evals = _spd(cond=10.0)
    b = torch.ones(30, dtype=torch.float64)
    x, info = lissa(lambda v: A @ v, b, damping=0.5, depth=2000, tol=1e-12)
    ref = torch.linalg.solve(A + 0.5 * torch.eye(30, dtype=torch.float64), b)
    np.testing.assert_allclose(x.numpy(), ref.numpy(), rtol=1e-8)
    with pytest.raises(RuntimeError, match="scale"):
        lissa(lambda v: A @ v, b, scale=1.0, depth=500)


def test_arnoldi_top_eigenpairs():
    A, evals = _spd(cond=1000.0)
    vals, vecs = arnoldi(lambda v: A @ v, torch.zeros(30, dtype=torch.float64),
                         n_iter=30, rank=5)
    np.testing.assert_allclose(np.sort(vals.numpy()), np.sort(evals.numpy())[-5:], rtol=1e-8)
    for lam, u in zip(vals, vecs):
        np.testing.assert_allclose((A @ u).numpy(), (lam * u).numpy(), atol=1e-6)
    full_vals, full_vecs = arnoldi(lambda v: A @ v, torch.zeros(30, dtype=torch.float64),
                                   n_iter=30, rank=30)
    b = torch.ones(30, dtype=torch.float64)
    np.testing.assert_allclose(arnoldi_solve(full_vals, full_vecs, b).numpy(),
                               torch.linalg.solve(A, b).numpy(), rtol=1e-6)

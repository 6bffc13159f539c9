"""Deep influence: CG against an explicit inverse Hessian, solver agreement."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.stats import pearsonr
from sklearn.datasets import load_digits
from torch.func import functional_call

from skitl.influence import deep_influence, influence_scores, select_parameters


@pytest.fixture(scope="module")
def data():
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    return X[:80], y[:80], X[500:540], y[500:540]


def _mlp(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10)).to(dtype)
    X, y = load_digits(return_X_y=True)
    Xt = torch.tensor(X[:300] / 16.0, dtype=dtype)
    yt = torch.tensor(y[:300])
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(Xt), yt).backward()
        opt.step()
    return net


def _explicit_scores(net, X, y, Xv, yv, damping):
    names = [n for n, _ in net.named_parameters()]
    params = dict(net.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    theta0 = torch.cat([params[n].detach().reshape(-1) for n in names])
    Xt = torch.tensor(X, dtype=theta0.dtype)
    Xvt = torch.tensor(Xv, dtype=theta0.dtype)

    def unflat(t):
        return dict(zip(names, (c.view(s) for c, s in zip(torch.split(t, sizes), shapes))))

    def loss(t, x, yy):
        return nn.functional.cross_entropy(functional_call(net, unflat(t), (x,)),
                                           torch.tensor(yy), reduction="none")

    H = torch.autograd.functional.hessian(lambda t: loss(t, Xt, y).mean(), theta0)
    H = H + damping * torch.eye(len(theta0), dtype=H.dtype)
    gval = torch.autograd.functional.jacobian(lambda t: loss(t, Xvt, yv).mean(), theta0)
    G = torch.autograd.functional.jacobian(lambda t: loss(t, Xt, y), theta0)  # (n, p)
    return (G @ torch.linalg.solve(H, gval) / len(X)).numpy()


def test_all_params_cg_matches_explicit_inverse_hessian(data):
    X, y, Xv, yv = data
    net = _mlp()
    lam = 0.05
    expected = _explicit_scores(net, X, y, Xv, yv, lam)
    res = deep_influence(net, X, y, Xv, yv, params="all", hessian="exact", solver="cg",
                         damping=lam, tol=1e-12, max_iter=2000)
    np.testing.assert_allclose(res.scores, expected, rtol=1e-6,
                               atol=1e-6 * np.abs(expected).max())
    assert res.residual < 1e-10 and res.damping == lam
    assert res.params == [n for n, _ in net.named_parameters()]


def test_batch_and_chunk_size_do_not_change_scores(data):
    X, y, Xv, yv = data
    net = _mlp()
    a = deep_influence(net, X, y, Xv, yv, damping=0.05, batch_size=7, chunk_size=5,
                       tol=1e-12, max_iter=2000)
    b = deep_influence(net, X, y, Xv, yv, damping=0.05, batch_size=256, chunk_size=64,
                       tol=1e-12, max_iter=2000)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-7,
                               atol=1e-8 * np.abs(b.scores).max())


@pytest.mark.filterwarnings("ignore:LiSSA stopped")
def test_lissa_and_arnoldi_approximate_cg(data):
    X, y, Xv, yv = data
    net = _mlp()
    lam = 0.05
    cg = deep_influence(net, X, y, Xv, yv, damping=lam, tol=1e-10, max_iter=1000)
    # Full-batch LiSSA converges to the CG solution; mini-batch LiSSA is a
    # noisy estimate of it.
    li = deep_influence(net, X, y, Xv, yv, damping=lam, solver="lissa", depth=1500,
                        lissa_batch_size=len(X))
    assert pearsonr(li.scores, cg.scores)[0] > 0.999
    li_mb = deep_influence(net, X, y, Xv, yv, damping=lam, solver="lissa", depth=600,
                           lissa_batch_size=20, tol=0.0)
    assert pearsonr(li_mb.scores, cg.scores)[0] > 0.9
    # Arnoldi with a Krylov space as large as the parameter count is exact;
    # a low rank keeps the dominant directions only.
    p = sum(t.numel() for t in net.parameters())
    ar = deep_influence(net, X, y, Xv, yv, damping=lam, solver="arnoldi", n_iter=p, rank=p)
    assert pearsonr(ar.scores, cg.scores)[0] > 0.999
    ar_low = deep_influence(net, X, y, Xv, yv, damping=lam, solver="arnoldi", n_iter=120,
                            rank=60)
    assert pearsonr(ar_low.scores, cg.scores)[0] > 0.8


def test_ekfac_correlates_with_ggn_cg(data):
    X, y, Xv, yv = data
    net = _mlp(torch.float32)
    cg = deep_influence(net, X, y, Xv, yv, hessian="ggn", damping=0.05, tol=1e-7,
                        max_iter=500)
    ek = deep_influence(net, X, y, Xv, yv, hessian="ekfac", damping=0.05,
                        n_label_samples=4)
    assert np.isfinite(ek.scores).all() and ek.solver == "ekfac"
    assert pearsonr(ek.scores, cg.scores)[0] > 0.5


class _CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.fc(nn.functional.max_pool2d(h, 2).flatten(1))


def test_cnn_ekfac_ggn_and_unsupported_layers(data):
    X, y, Xv, yv = data
    Xi, Xvi = X.reshape(-1, 1, 8, 8), Xv.reshape(-1, 1, 8, 8)
    torch.manual_seed(0)
    net = _CNN()
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cg = deep_influence(net, Xi, y, Xvi, yv, params=["conv.*", "fc.*"], damping=0.1,
                        tol=1e-6, max_iter=300)
    ek = deep_influence(net, Xi, y, Xvi, yv, params=["conv.*", "fc.*"], hessian="ekfac",
                        damping=0.1, n_label_samples=4)
    assert np.isfinite(cg.scores).all() and np.isfinite(ek.scores).all()
    assert pearsonr(ek.scores, cg.scores)[0] > 0.5
    assert net.training  # mode restored
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    # BatchNorm parameters get a diagonal EK-FAC block.
    ek_all = deep_influence(net, Xi, y, Xvi, yv, params="all", hessian="ekfac",
                            damping=0.1, n_label_samples=4)
    assert np.isfinite(ek_all.scores).all() and ek_all.residual < 1.0
    ident = deep_influence(net, Xi, y, Xvi, yv, params=["fc.*"], hessian="identity")
    assert ident.damping == 0.0 and np.isfinite(ident.scores).all()


def test_parameter_selection_and_errors(data):
    X, y, Xv, yv = data
    net = _mlp(torch.float32)
    assert select_parameters(net, ["2.*"]) == ["2.weight", "2.bias"]
    with pytest.raises(ValueError, match="matches no parameter"):
        select_parameters(net, ["nope.*"])
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        deep_influence(net, bad, y, Xv, yv)
    res = influence_scores(net, X, y, Xv, yv, params=["2.*"], hessian="ggn", damping=0.01)
    assert res.hessian == "ggn" and res.params == ["2.weight", "2.bias"]
    assert np.isfinite(res.scores).all() and res.damping == 0.01


def test_module_names_select_like_freeze(data):
    # The same pattern rule as freeze= / reinit=: a module name selects
    # everything under it (this raised "matches no parameter" before).
    net = _CNN()
    assert select_parameters(net, ["fc"]) == ["fc.weight", "fc.bias"]
    assert select_parameters(net, "conv") == ["conv.weight", "conv.bias"]
    assert select_parameters(net, ["bn", "fc.weight"]) == ["bn.weight", "bn.bias",
                                                           "fc.weight"]


def test_same_alpha_same_scores_from_both_entry_points(data):
    X, y, Xv, yv = data
    net = _mlp()
    kw = dict(params=["2"], hessian="ggn", damping=0.01, tol=1e-10, max_iter=500)
    a = deep_influence(net, X, y, Xv, yv, alpha=0.5, **kw)
    b = influence_scores(net, X, y, Xv, yv, alpha=0.5, **kw)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-12)
    # alpha is part of the Hessian: another alpha, other scores.
    c = deep_influence(net, X, y, Xv, yv, alpha=0.0, **kw)
    assert np.abs(c.scores - a.scores).max() > 1e-3 * np.abs(a.scores).max()


def test_deep_alpha_is_the_head_objective(data):
    # On the head alone, with the exact Hessian, the deep path at the fitted
    # head is the head path: same objective (alpha on weights, bias not
    # penalised), so the same scores.
    X, y, Xv, yv = data
    net = _mlp(torch.float32)
    alpha = 0.05
    head = influence_scores(net, X, y, Xv, yv, params="head", alpha=alpha)
    assert head.damping == 0.0
    fitted = _mlp(torch.float32)
    with torch.no_grad():
        fitted[2].weight.copy_(torch.as_tensor(head.W))
        fitted[2].bias.copy_(torch.as_tensor(head.b))
    deep = influence_scores(fitted, X, y, Xv, yv, params=["2"], hessian="exact",
                            alpha=alpha, damping=0.0, tol=1e-5, max_iter=1000)
    assert deep.hessian == "exact" and deep.residual < 1e-5
    np.testing.assert_allclose(deep.scores, head.scores, rtol=1e-3,
                               atol=1e-3 * np.abs(head.scores).max())
    # Penalising the bias too would be another objective: visibly other scores.
    wrong = head_influence_with_bias_penalty(fitted, X, y, Xv, yv, alpha)
    assert np.abs(wrong - head.scores).max() > 1e-2 * np.abs(head.scores).max()


def head_influence_with_bias_penalty(net, X, y, Xv, yv, alpha):
    # The deep path's exact scores with alpha on the bias as well: damping
    # alpha on every coordinate of the head, alpha removed from the weights.
    from skitl.influence._deep_solvers import CGSolver
    from skitl.influence._operator import CurvatureOperator, _Data, _Model

    model = _Model(net, ["2.weight", "2.bias"], "cpu")
    op = CurvatureOperator(model, _Data(X, y, "cpu", torch.float32), hessian="exact",
                           alpha=0.0, batch_size=256)
    g = op.mean_gradient(_Data(Xv, yv, "cpu", torch.float32), np.full(len(yv), 1 / len(yv)))
    s = CGSolver(op, alpha, tol=1e-5, max_iter=1000).solve(g)
    return op.directional_derivatives(_Data(X, y, "cpu", torch.float32), s, 64) / len(y)


def test_exact_hessian_is_exact_and_refuses_indefinite(data):
    X, y, Xv, yv = data
    net = _mlp()
    # "exact" through influence_scores is the exact Hessian (it was silently
    # the GGN before): it matches the explicit inverse of the exact Hessian.
    expected = _explicit_scores(net, X, y, Xv, yv, 0.05)
    res = influence_scores(net, X, y, Xv, yv, params="all", hessian="exact",
                           damping=0.05, alpha=0.0, tol=1e-12, max_iter=2000)
    assert res.hessian == "exact"
    np.testing.assert_allclose(res.scores, expected, rtol=1e-6,
                               atol=1e-6 * np.abs(expected).max())
    with pytest.raises(TypeError, match="exact_deep"):
        influence_scores(net, X, y, Xv, yv, params="all", exact_deep=True)
    # Away from a minimum the undamped exact Hessian is indefinite: a clear
    # error that names the fix.
    torch.manual_seed(3)
    raw = nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10)).double()
    with pytest.raises(RuntimeError, match="hessian='ggn'"):
        deep_influence(raw, X, y, Xv, yv, hessian="exact", damping=0.0, max_iter=200,
                       tol=1e-12)


@pytest.mark.parametrize("hessian, solver, opts", [
    ("ggn", "cg", {}),
    ("ggn", "lissa", {"depth": 50}),
    ("ggn", "arnoldi", {"n_iter": 20, "rank": 10}),
    ("ekfac", "cg", {}),
    ("identity", "cg", {}),
])
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_result_schema_and_measured_residual(data, hessian, solver, opts):
    X, y, Xv, yv = data
    net = _mlp(torch.float32)
    res = deep_influence(net, X, y, Xv, yv, hessian=hessian, solver=solver, **opts)
    assert isinstance(res.damping, float) and res.damping >= 0
    assert isinstance(res.solver, str) and isinstance(res.n_iter, int)
    assert isinstance(res.residual, float) and np.isfinite(res.residual)
    assert res.info["passes"] >= (0 if hessian == "identity" else 1)
    if hessian == "identity":
        assert res.residual == 0.0 and res.solver == "none"
    elif hessian == "ggn" and solver == "cg":
        assert res.residual <= 1e-3 and res.damping > 0
    else:  # measured against the damped GGN: approximate inverses are not exact
        assert res.residual > 1e-6 and res.damping > 0


def test_convergence_warning_when_max_iter_is_too_small(data):
    from sklearn.exceptions import ConvergenceWarning

    X, y, Xv, yv = data
    net = _mlp()
    with pytest.warns(ConvergenceWarning, match="CG stopped after 2 iterations"):
        res = deep_influence(net, X, y, Xv, yv, damping=1e-4, max_iter=2, tol=1e-10)
    assert res.n_iter == 2 and res.residual > 1e-10
    with pytest.raises(RuntimeError, match="CG stopped"):
        deep_influence(net, X, y, Xv, yv, damping=1e-4, max_iter=2, tol=1e-10,
                       on_failure="raise")


def test_default_cg_converges_without_warning(data, recwarn):
    X, y, Xv, yv = data
    res = deep_influence(_mlp(torch.float32), X, y, Xv, yv)
    assert res.residual <= 1e-3 and res.solver == "cg"
    assert not [w for w in recwarn if "CG stopped" in str(w.message)]


def test_solver_classes_on_one_operator(data):
    # The solver classes all take the same operator and expose solve(g).
    from skitl.influence._deep_solvers import (
        ArnoldiSolver,
        CGSolver,
        EKFACSolver,
        IdentitySolver,
    )
    from skitl.influence._operator import CurvatureOperator, _Data, _Model

    X, y, _, _ = data
    net = _mlp()
    model = _Model(net, select_parameters(net, "all"), "cpu")
    op = CurvatureOperator(model, _Data(X, y, "cpu", torch.float64), hessian="ggn",
                           alpha=0.1, batch_size=32)
    g = torch.randn(op.dim, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    cg = CGSolver(op, 0.05, tol=1e-10, max_iter=1000)
    s = cg.solve(g)
    assert cg.residual_ < 1e-9 and cg.n_iter_ > 1
    np.testing.assert_allclose(op.damped(0.05)(s).numpy(), g.numpy(), atol=1e-8)
    # A low-rank inverse on exact eigenvectors leaves the residual
    # ‖(I − U Uᵀ) g‖ / ‖g‖ <= 1: the measured one must say so.
    ar = ArnoldiSolver(op, 0.05, n_iter=40, rank=10)
    ar.solve(g)
    assert 0 < ar.residual_ <= 1 + 1e-6 and ar.n_iter_ == 10
    ek = EKFACSolver(op, 0.05)
    assert 0 < ek.solve(g).norm() and np.isfinite(ek.residual_)
    ident = IdentitySolver(op, 0.0)
    assert torch.equal(ident.solve(g), g) and ident.residual_ == 0.0


def test_engine_does_not_import_peers():
    # kronfluence and captum are benchmark-only peers, never dependencies.
    import ast
    from pathlib import Path

    import skitl

    for path in Path(skitl.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                        else [node.module or ""])
                assert not [m for m in mods if m.split(".")[0] in ("kronfluence", "captum")
                            ], path


def test_ekfac_sees_module_outputs_despite_inplace_ops(data):
    # ReLU(inplace=True) after a layer (and ``out += identity`` in ResNet
    # blocks) modifies the layer's output in place; EK-FAC's statistics must
    # still be those of the layer's output (they were the ReLU's before).
    X, y, Xv, yv = data

    def net(inplace):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(64, 16), nn.ReLU(inplace=inplace),
                             nn.Linear(16, 10))

    kw = dict(hessian="ekfac", damping=0.05, random_state=0)
    a = deep_influence(net(True), X, y, Xv, yv, **kw)
    b = deep_influence(net(False), X, y, Xv, yv, **kw)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5,
                               atol=1e-7 * np.abs(b.scores).max())


def test_ekfac_batchnorm_block_is_dense(data, monkeypatch):
    # With only a BatchNorm analysed, EK-FAC is its full sampled-label GGN
    # block: close to the exact damped GGN inverse; its diagonal is not.
    from skitl.influence import _ekfac

    X, y, Xv, yv = data
    Xi, Xvi = X.reshape(-1, 1, 8, 8), Xv.reshape(-1, 1, 8, 8)
    torch.manual_seed(0)
    net = _CNN().eval()
    kw = dict(params=["bn.*"], hessian="ekfac", damping=1e-3, n_label_samples=8)
    dense = deep_influence(net, Xi, y, Xvi, yv, **kw)
    monkeypatch.setattr(_ekfac, "DENSE_MAX", 0)
    diagonal = deep_influence(net, Xi, y, Xvi, yv, **kw)
    assert dense.residual < 0.2 < 1.0 < diagonal.residual


def test_auto_damping_is_ten_times_ekfac_rule_for_ggn_solves(data):
    # Same EK-FAC statistics (same random_state): the GGN solve's per-module
    # damping is GGN_DAMPING_FACTOR / EKFAC_DAMPING_FACTOR times EK-FAC's.
    from skitl.influence._deep_solvers import EKFAC_DAMPING_FACTOR, GGN_DAMPING_FACTOR

    X, y, Xv, yv = data
    net = _mlp(torch.float32)
    ek = deep_influence(net, X, y, Xv, yv, hessian="ekfac")
    cg = deep_influence(net, X, y, Xv, yv, hessian="ggn", preconditioner="ekfac")
    assert cg.info["preconditioner"] == "ekfac" and cg.residual <= 1e-3
    ratio = GGN_DAMPING_FACTOR / EKFAC_DAMPING_FACTOR
    assert ratio == pytest.approx(10.0)
    for name, value in ek.info["damping_per_module"].items():
        assert cg.info["damping_per_module"][name] == pytest.approx(ratio * value, rel=1e-5)


def test_nystrom_preconditioned_cg_same_solution_fewer_iterations(data):
    # Small damping on a fitted MLP: the damped GGN's condition number is ~1e6,
    # plain CG needs hundreds of iterations; a rank-60 Nyström sketch takes
    # the top of the spectrum away.
    X, y, Xv, yv = data
    net = _mlp()
    kw = dict(hessian="ggn", solver="cg", damping=1e-5, tol=1e-10, max_iter=5000)
    plain = deep_influence(net, X, y, Xv, yv, preconditioner=None, **kw)
    nys = deep_influence(net, X, y, Xv, yv, preconditioner="nystrom", rank=60, **kw)
    assert nys.info["preconditioner"] == "nystrom"
    assert plain.residual <= 1e-9 and nys.residual <= 1e-9
    np.testing.assert_allclose(nys.scores, plain.scores, rtol=1e-6,
                               atol=1e-6 * np.abs(plain.scores).max())
    assert nys.n_iter < plain.n_iter / 2
    # The sketch's passes are counted: rank + iterations + the residual check.
    assert nys.info["passes"] == 60 + nys.n_iter + 1


def test_nystrom_needs_positive_damping_and_a_valid_rank(data):
    X, y, Xv, yv = data
    net = _mlp()
    with pytest.raises(ValueError, match="damping > 0"):
        deep_influence(net, X, y, Xv, yv, damping=0.0, preconditioner="nystrom")
    with pytest.raises(ValueError, match="rank must be in"):
        deep_influence(net, X, y, Xv, yv, preconditioner="nystrom", rank=0)


@pytest.mark.parametrize("hessian", ["ggn", "exact"])
def test_operator_matmat_is_matvec_per_column(data, hessian):
    from skitl.influence._operator import CurvatureOperator, _Data, _Model

    X, y, _, _ = data
    net = _mlp()
    model = _Model(net, select_parameters(net, "all"), "cpu")
    op = CurvatureOperator(model, _Data(X, y, "cpu", torch.float64), hessian=hessian,
                           alpha=0.1, batch_size=32)
    V = torch.randn(op.dim, 3, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    cols = torch.stack([op.matvec(V[:, j]) for j in range(3)], 1)
    np.testing.assert_allclose(op.matmat(V).numpy(), cols.numpy(), rtol=1e-10, atol=1e-12)
    assert op.n_passes == 6


def test_full_rank_nystrom_sketch_makes_cg_converge_at_once(data):
    # A sketch as large as the parameter count captures the whole spectrum:
    # the preconditioned operator is about (λ_r + 1) I, one or two iterations,
    # with a scalar damping and with a per-module damping vector alike.
    from skitl.influence._deep_solvers import CGSolver, NystromPreconditioner
    from skitl.influence._operator import CurvatureOperator, _Data, _Model

    X, y, _, _ = data
    net = _mlp()
    model = _Model(net, ["2.weight", "2.bias"], "cpu")
    op = CurvatureOperator(model, _Data(X, y, "cpu", torch.float64), hessian="ggn",
                           alpha=0.0, batch_size=80)
    g = torch.randn(op.dim, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    for damping in (1e-6, model.per_block({"2": 1e-6}) * (1 + model.decay)):
        pre = NystromPreconditioner(op, damping, rank=op.dim).fit()
        assert pre.n_passes_ == op.dim and len(pre.eigenvalues_) > op.dim // 2
        cg = CGSolver(op, damping, tol=1e-8, preconditioner=pre)
        cg.solve(g)
        assert cg.residual_ <= 1e-8 and cg.n_iter_ <= 3

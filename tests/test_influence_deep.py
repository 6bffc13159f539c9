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


@pytest.mark.filterwarnings("ignore:LiSSA stopped:RuntimeWarning")
def test_lissa_and_arnoldi_approximate_cg(data):
    X, y, Xv, yv = data
    net = _mlp()
    lam = 0.05
    cg = deep_influence(net, X, y, Xv, yv, damping=lam, tol=1e-10, max_iter=1000)
    # Full-batch LiSSA converges to the CG solution; mini-batch LiSSA is a
    # noisy estimate of it.
    li = deep_influence(net, X, y, Xv, yv, damping=lam, solver="lissa", depth=5000,
                        lissa_batch_size=len(X))
    assert pearsonr(li.scores, cg.scores)[0] > 0.999
    li_mb = deep_influence(net, X, y, Xv, yv, damping=lam, solver="lissa", depth=3000,
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
    with pytest.raises(ValueError, match="BatchNorm2d"):
        deep_influence(net, Xi, y, Xvi, yv, params="all", hessian="ekfac")
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
    with pytest.raises(RuntimeError, match="curvature|residual"):
        # The exact Hessian of a non-minimum with a negative damping-free
        # spectrum: CG must refuse rather than return garbage.
        deep_influence(net, X, y, Xv, yv, hessian="exact", damping=0.0, max_iter=3,
                       on_failure="raise", tol=1e-12)
    res = influence_scores(net, X, y, Xv, yv, params=["2.*"], damping=0.01)
    assert res.hessian == "ggn" and res.params == ["2.weight", "2.bias"]
    assert np.isfinite(res.scores).all() and res.damping == 0.01

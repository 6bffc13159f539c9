"""Frozen-prefix caching: same scores as the uncached path, a cut that respects
skip connections, reusable caches across row subsets, stale caches refused."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from sklearn.datasets import load_digits

from skitl.influence import PrefixCache, deep_influence, prefix_cache
from skitl.influence._prefix import find_cut
from skitl.models import SmallCNN


class _Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.conv2(torch.relu(self.bn(self.conv1(x)))))


class _ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.block1 = _Block(4)
        self.block2 = _Block(4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        h = self.block2(self.block1(torch.relu(self.stem(x))))
        return self.fc(h.mean((2, 3)))


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return X[:60], y[:60], X[600:630], y[600:630]


def _resnet(dtype=torch.float64):
    torch.manual_seed(0)
    net = _ResNet().to(dtype)
    with torch.no_grad():  # non-trivial running statistics
        for blk in (net.block1, net.block2):
            blk.bn.running_mean.uniform_(-0.2, 0.2)
            blk.bn.running_var.uniform_(0.5, 2.0)
    return net


def test_cut_respects_skip_connections():
    net = _resnet()
    # block2.conv2 alone: the skip connection carries block2's input past
    # conv1, so the cut is block2's input (block1's output), not conv2's.
    cut = find_cut(net, ["block2.conv2.weight", "block2.conv2.bias", "fc.weight"])
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        net.eval()
        block1_out = net.block1(torch.relu(net.stem(x)))
        torch.testing.assert_close(cut.prefix(x), block1_out, rtol=0, atol=0)
        torch.testing.assert_close(cut.suffix(cut.prefix(x)), net(x), rtol=0, atol=0)
    assert find_cut(net, ["fc.weight"]).node_name != cut.node_name
    assert find_cut(net, ["stem.weight"]) is None  # nothing before the stem
    assert find_cut(SmallCNN(), ["fc.weight"]).node_name == "dropout"


@pytest.mark.parametrize("hessian", ["ggn", "ekfac", "identity"])
def test_cached_scores_equal_uncached(digits, hessian):
    X, y, Xv, yv = digits
    net = _resnet()
    kw = dict(params=["block2.conv2", "fc"], hessian=hessian, damping=0.05, tol=1e-10,
              max_iter=500, batch_size=16) if hessian == "ggn" else dict(
        params=["block2.conv2", "fc"], hessian=hessian, damping=0.05, batch_size=16)
    plain = deep_influence(net, X, y, Xv, yv, prefix=False, **kw)
    cached = deep_influence(net, X, y, Xv, yv, prefix=True, **kw)
    cut = find_cut(net, plain.params)
    assert plain.info["prefix_cut"] is None and cached.info["prefix_cut"] == cut.node_name
    np.testing.assert_allclose(cached.scores, plain.scores, rtol=1e-6,
                               atol=1e-6 * np.abs(plain.scores).max())


def test_float32_small_cnn_cached_equals_uncached(digits):
    X, y, Xv, yv = digits
    torch.manual_seed(0)
    net = SmallCNN(width=4)
    kw = dict(params=["features.5", "fc"], damping=0.05, tol=1e-6, max_iter=300)
    plain = deep_influence(net, X, y, Xv, yv, prefix=False, **kw)
    cached = deep_influence(net, X, y, Xv, yv, **kw)
    assert cached.info["prefix_cut"] == "features_4"
    np.testing.assert_allclose(cached.scores, plain.scores, rtol=1e-6,
                               atol=1e-6 * np.abs(plain.scores).max())


def test_one_cache_serves_every_fold(digits):
    X, y, Xv, yv = digits
    net = _resnet()
    params = ["block2", "fc"]
    cache = prefix_cache(net, np.concatenate([X, Xv]), params=params, memmap_bytes=0)
    assert isinstance(cache.activations, np.memmap) and len(cache) == len(X) + len(Xv)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(cache))
    tr, va = idx[:50], idx[50:]
    Xall, yall = np.concatenate([X, Xv]), np.concatenate([y, yv])
    kw = dict(params=params, damping=0.05, tol=1e-10, max_iter=500)
    direct = deep_influence(net, Xall[tr], yall[tr], Xall[va], yall[va], prefix=False, **kw)
    reused = deep_influence(net, cache.rows(tr), yall[tr], cache.rows(va), yall[va], **kw)
    np.testing.assert_allclose(reused.scores, direct.scores, rtol=1e-6,
                               atol=1e-6 * np.abs(direct.scores).max())
    assert reused.seconds["prefix"] < direct.seconds["total"]
    # A view of a view indexes the original rows.
    sub = cache.rows(tr).rows([0, 1])
    np.testing.assert_array_equal(sub.indices, tr[:2])


def test_stale_or_foreign_cache_is_refused(digits):
    X, y, Xv, yv = digits
    net = _resnet()
    cache = prefix_cache(net, X, params=["block2", "fc"])
    val = prefix_cache(net, Xv, params=["block2", "fc"])
    with pytest.raises(ValueError, match="cut point"):
        deep_influence(net, cache, y, val, yv, params=["block1", "fc"], damping=0.1)
    with pytest.raises(ValueError, match="prefix=False"):
        deep_influence(net, cache, y, val, yv, params=["block2", "fc"], prefix=False)
    with torch.no_grad():
        net.stem.weight.mul_(2.0)  # the prefix changed after caching
    with pytest.raises(ValueError, match="changed since"):
        deep_influence(net, cache, y, val, yv, params=["block2", "fc"], damping=0.1)


def test_prefix_errors_and_untraceable_networks(digits):
    X, y, Xv, yv = digits

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(64, 8)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            x = x.reshape(len(x), -1)  # len() of a Proxy: fx cannot trace this
            return self.fc(torch.tanh(self.body(x)))

    net = Untraceable()
    with pytest.raises(ValueError, match="suffix"):
        prefix_cache(net, X, params=["fc"])
    with pytest.raises(ValueError, match="prefix=True"):
        deep_influence(net, X, y, Xv, yv, params=["fc"], prefix=True)
    res = deep_influence(net, X, y, Xv, yv, params=["fc"], damping=0.1)
    assert res.info["prefix_cut"] is None and np.isfinite(res.scores).all()
    with pytest.raises(ValueError, match="prefix must be"):
        deep_influence(net, X, y, Xv, yv, params=["fc"], prefix="yes")
    assert issubclass(PrefixCache, object)


def test_inplace_suffix_does_not_corrupt_the_cache(digits):
    X, y, Xv, yv = digits
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(inplace=True),
                        nn.Linear(16, 16), nn.ReLU(inplace=True), nn.Linear(16, 10))
    cache = prefix_cache(net, X, params=["3", "5"])
    before = np.array(cache.activations)
    deep_influence(net, cache, y, prefix_cache(net, Xv, params=["3", "5"]), yv,
                   params=["3", "5"], damping=0.1)
    np.testing.assert_array_equal(cache.activations, before)

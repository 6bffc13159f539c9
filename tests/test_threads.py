"""limit_threads and flush_denormal: switched for a block, restored afterwards."""

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

from skitl.utils import flush_denormal
from skitl.utils._threads import _flush_denormal_is_on, limit_threads


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _pools():
    return {(p["filepath"], p["internal_api"]): p["num_threads"] for p in threadpool_info()}


def test_limit_threads_caps_and_restores(two_threads):
    pools = _pools()
    with limit_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
        assert all(v == 1 for v in _pools().values())
        # the head algebra still runs (and gives the same numbers) inside
        x = torch.randn(300, 40, dtype=torch.float64)
        inside = (x.T @ x).sum()
    assert torch.get_num_threads() == 2
    assert _pools() == pools
    torch.testing.assert_close(inside, (x.T @ x).sum())


def test_limit_threads_restores_on_exception(two_threads):
    pools = _pools()
    with pytest.raises(KeyError):
        with limit_threads(1):
            raise KeyError("boom")
    assert torch.get_num_threads() == 2
    assert _pools() == pools


def test_limit_threads_never_raises_a_lower_count(two_threads):
    with limit_threads(8) as n:
        assert n == 2 and torch.get_num_threads() == 2
    with limit_threads(None) as n:
        assert n == 2 and torch.get_num_threads() == 2
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match="n_threads"):
            with limit_threads(bad):
                pass
    assert torch.get_num_threads() == 2


def test_head_engine_restores_threads(two_threads):
    from skitl.influence import cross_fit_head_influence

    rng = np.random.default_rng(0)
    F = rng.standard_normal((60, 5))
    y = np.arange(60) % 3
    cross_fit_head_influence(F, y, n_classes=3, cv=3, alpha=1e-2, random_state=0)
    assert torch.get_num_threads() == 2


def _subnormal_survives():
    return bool((torch.tensor([1e-40], dtype=torch.float32) * 1.0)[0] != 0)


@pytest.mark.parametrize("start", [False, True])
def test_flush_denormal_switches_and_restores(start):
    if not torch.set_flush_denormal(start):
        pytest.skip("this CPU cannot flush denormals")
    try:
        assert _flush_denormal_is_on() is start
        with flush_denormal() as supported:
            assert supported
            assert not _subnormal_survives()
        assert _flush_denormal_is_on() is start
        assert _subnormal_survives() is not start
        with pytest.raises(RuntimeError):
            with flush_denormal():
                raise RuntimeError("boom")
        assert _flush_denormal_is_on() is start
    finally:
        torch.set_flush_denormal(False)

"""Searches on a Dask cluster, Accelerate, pickling, and no leaked torch state."""

import pickle
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV

from skitl import InfluenceSampleSelector, TransferClassifier
from skitl.selection import LossSelector
from skitl.utils._threads import _flush_denormal_is_on


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X[:240] / 16).astype(np.float32), y[:240]


def _net():
    # an instance of standard layers: pickled by value to any worker
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def _search(n_jobs):
    clf = TransferClassifier(
        _net(), max_epochs=2, lr=1e-2, random_state=0,
        selector=InfluenceSampleSelector(cv=3, random_state=0),
    )
    grid = {"selector__threshold": [0.0, -1e-4], "strategy": ["finetune", "linear_probe"]}
    return GridSearchCV(clf, grid, cv=2, n_jobs=n_jobs, error_score="raise")


def test_grid_search_on_a_dask_cluster_matches_sequential(digits):
    distributed = pytest.importorskip(
        "dask.distributed", reason="the dask extra is not installed "
        '(pip install "skitl[dask]")')
    from joblib import parallel_config

    X, y = digits
    sequential = _search(n_jobs=1).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dask's own start-up chatter
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, distributed.Client(cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        with parallel_config(backend="dask"):
            on_dask = _search(n_jobs=-1).fit(X, y)
    for key in ("mean_test_score", "std_test_score", "rank_test_score"):
        np.testing.assert_allclose(on_dask.cv_results_[key], sequential.cv_results_[key],
                                   rtol=1e-6, atol=1e-9)
    assert on_dask.best_params_ == sequential.best_params_


def test_estimators_and_selectors_cloudpickle(digits):
    cloudpickle = pytest.importorskip("cloudpickle")
    X, y = digits
    clf = TransferClassifier(_net(), max_epochs=1, random_state=0, device="auto")
    again = cloudpickle.loads(cloudpickle.dumps(clf))
    assert again.get_params()["device"] == "auto"  # resolved in fit, on the worker
    fitted = cloudpickle.loads(cloudpickle.dumps(clf.fit(X, y)))
    np.testing.assert_array_equal(fitted.predict(X), clf.predict(X))
    sel = LossSelector(TransferClassifier(_net()), cv=3, random_state=0).fit(X, y)
    np.testing.assert_array_equal(cloudpickle.loads(cloudpickle.dumps(sel)).scores_,
                                  sel.scores_)


def _torch_state():
    return (torch.get_num_threads(), _flush_denormal_is_on(),
            torch.get_rng_state().clone(), torch.is_grad_enabled())


@pytest.mark.parametrize("flush", [False, True])
def test_no_global_torch_state_leaks_from_fit(digits, flush):
    """A worker runs many fits: threads, flush-to-zero, the global torch
    generator and grad mode are what they were before each one."""
    X, y = digits
    torch.set_flush_denormal(flush)
    try:
        net = _net()
        before = _torch_state()
        clf = TransferClassifier(net, max_epochs=1, random_state=0,
                                 selector=InfluenceSampleSelector(cv=3, random_state=0))
        clf.fit(X, y)
        clf.predict(X)
        InfluenceSampleSelector(cv=3).fit(X, y)
        after = _torch_state()
        assert before[:2] == after[:2]
        assert torch.equal(before[2], after[2])
        assert before[3] == after[3]
    finally:
        torch.set_flush_denormal(False)


_DTYPES = []


class Recording(nn.Module):
    """Records the dtype of its hidden activations."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 32), nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = self.body(x)
        _DTYPES.append(h.dtype)
        return self.fc(h)


def test_accelerate_bf16_on_cpu(digits):
    pytest.importorskip("accelerate", reason='the accelerate extra is not installed '
                        '(pip install "skitl[accelerate]")')
    X, y = digits
    dtypes = _DTYPES
    dtypes.clear()
    clf = TransferClassifier(
        Recording, accelerator={"cpu": True, "mixed_precision": "bf16"},
        max_epochs=3, lr=1e-2, random_state=0,
    ).fit(X, y)
    assert torch.bfloat16 in set(dtypes)  # training ran under bf16 autocast
    assert clf.score(X, y) > 0.3
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(clf)).predict(X),
                                  clf.predict(X))

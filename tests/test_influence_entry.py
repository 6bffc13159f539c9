"""The engine's one entry point: modes, several validation objectives at once,
typed solver options, the fold plan."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from sklearn.datasets import load_digits

from skitl.influence import (
    CGOptions,
    HeadOptions,
    deep_influence,
    head_influence,
    influence_scores,
    make_folds,
    solver_options,
)

ALPHA = 1e-2


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float64)
    return X[:200], y[:200], X[1000:1150], y[1000:1150]


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 12), nn.Tanh(), nn.Linear(12, 10)).double()


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_several_validation_weightings_equal_separate_solves(digits, solver):
    F, y, Fv, yv = digits
    rng = np.random.RandomState(0)
    W2 = rng.rand(len(yv), 3)
    together = head_influence(F, y, Fv, yv, n_classes=10, alpha=ALPHA, solver=solver,
                              val_weights=W2)
    assert together.scores.shape == (len(y), 3)
    for j in range(3):
        alone = head_influence(F, y, Fv, yv, n_classes=10, alpha=ALPHA, solver=solver,
                               val_weights=W2[:, j])
        np.testing.assert_allclose(together.scores[:, j], alone.scores, rtol=1e-8,
                                   atol=1e-12 * np.abs(alone.scores).max())


def test_deep_several_weightings_share_one_solver(digits):
    F, y, Fv, yv = digits
    net = _mlp()
    w = np.random.RandomState(1).rand(len(yv), 2)
    kw = dict(params="all", hessian="ggn", damping=0.01, tol=1e-10, max_iter=500)
    both = deep_influence(net, F, y, Fv, yv, val_weights=w, score_val=True, **kw)
    assert both.scores.shape == (len(y), 2) and both.info["val_scores"].shape == (
        len(yv), 2)
    for j in range(2):
        one = deep_influence(net, F, y, Fv, yv, val_weights=w[:, j], **kw)
        np.testing.assert_allclose(both.scores[:, j], one.scores, rtol=1e-6,
                                   atol=1e-9 * np.abs(one.scores).max())


def test_modes_of_the_entry_point(digits):
    F, y, Fv, yv = digits
    target = np.arange(len(y)) < 100
    val = influence_scores(None, F, y, Fv, yv, alpha=ALPHA)
    pool = influence_scores(None, F, y, alpha=ALPHA, cv=3, random_state=0)
    cross = influence_scores(None, F, y, target=target, target_validation="cross_fit",
                             alpha=ALPHA, cv=3, random_state=0, adapt_folds=True)
    whole = influence_scores(None, F, y, target=target, target_validation="whole",
                             alpha=ALPHA, eval_folds=True, cv=3, random_state=0)
    assert [r.mode for r in (val, pool, cross, whole)] == [
        "validation_set", "cross_fit", "target_cross_fit", "target_whole"]
    # the whole target against a head fitted on the rest: the validation-set
    # scores of the other samples with the target as X_val
    same = influence_scores(None, F[~target], y[~target], F[target], y[target],
                            alpha=ALPHA)
    np.testing.assert_allclose(whole.scores[~target], same.scores, rtol=1e-10)
    ev = whole.eval_folds
    assert ev.on == "train" and ev.order.shape == (3, len(y))
    assert (ev.fold_of[~target] == -1).all() and set(ev.fold_of[target]) == {0, 1, 2}
    assert pool.oof_proba.shape == (len(y), 10) and len(pool.per_fold) == 3


def test_misspelt_options_fail_before_any_work(digits):
    F, y, Fv, yv = digits

    class NoForward(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(64, 8)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            raise AssertionError("a forward pass ran before the options were checked")

    with pytest.raises(TypeError, match=r"Unknown option\(s\) \['tolerance'\] for the "
                                        r"deep solver 'cg'.*valid options: \['tol'"):
        deep_influence(NoForward(), F, y, Fv, yv, tolerance=1e-4)
    with pytest.raises(TypeError, match=r"\['depht'\] for the deep solver 'lissa'"):
        influence_scores(NoForward(), F, y, Fv, yv, params="all", solver="lissa",
                         solver_options={"depht": 10})
    with pytest.raises(TypeError, match=r"head solver 'auto'.*valid options: "
                                        r"\['tol', 'max_iter'\]"):
        influence_scores(NoForward(), F, y, Fv, yv, solver_options={"rank": 3})
    assert solver_options("deep", "auto", {"tol": 1e-4}) == CGOptions(tol=1e-4)
    assert solver_options("head", "cg", None) == HeadOptions()
    with pytest.raises(ValueError, match="preconditioner must be"):
        CGOptions(preconditioner="jacobi")


def test_selector_rejects_a_misspelt_option_before_the_network_runs(digits):
    from skitl import InfluenceSampleSelector, TransferClassifier

    F, y, _, _ = digits

    class NoForward(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            raise AssertionError("a forward pass ran")

    sel = InfluenceSampleSelector(TransferClassifier(NoForward),
                                  solver_options={"maxiter": 3})
    with pytest.raises(TypeError, match=r"\['maxiter'\].*valid options"):
        sel.fit(F.astype(np.float32), y)


def test_fold_plan_adapts_to_small_classes():
    y = np.r_[np.zeros(20, int), np.ones(3, int), np.full(2, 2)]
    with pytest.raises(ValueError, match="class 2 has 2"):
        make_folds(y, 5, n_classes=3, random_state=0)
    fold_of, n = make_folds(y, 5, n_classes=3, random_state=0, adapt=True)
    assert n == 2 and set(fold_of) == {0, 1}
    for c in range(3):  # stratified: each fold holds each class
        assert set(fold_of[y == c]) == {0, 1}
    y1 = np.r_[np.zeros(20, int), 1]
    fold_of, n = make_folds(y1, 5, n_classes=2, random_state=0, adapt=True)
    assert n == 5 and (fold_of >= 0).all()  # unstratified, every sample held out once


# -- the attribution matrix -----------------------------------------------------


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_attribution_matrix_is_the_score_of_each_query(digits, solver, tmp_path):
    from skitl.influence import attribution_matrix

    F, y, Fv, yv = digits
    M = attribution_matrix(F, y, Fv[:40], yv[:40], n_classes=10, alpha=ALPHA,
                           solver=solver, block_size=16)
    assert M.shape == (len(y), 40)
    # each column: the query alone as the validation set
    for j in (0, 17, 39):
        one = head_influence(F, y, Fv[j:j + 1], yv[j:j + 1], n_classes=10, alpha=ALPHA)
        np.testing.assert_allclose(M[:, j], one.scores, rtol=1e-7,
                                   atol=1e-9 * np.abs(one.scores).max())
    # their mean: the mean-loss score against all the queries
    mean = head_influence(F, y, Fv[:40], yv[:40], n_classes=10, alpha=ALPHA)
    np.testing.assert_allclose(M.mean(1), mean.scores, rtol=1e-7,
                               atol=1e-9 * np.abs(mean.scores).max())
    # written into a memmap block by block
    out = np.lib.format.open_memmap(tmp_path / "A.npy", mode="w+", dtype=np.float64,
                                    shape=M.shape)
    attribution_matrix(F, y, Fv[:40], yv[:40], n_classes=10, alpha=ALPHA, solver=solver,
                       block_size=16, out=out)
    np.testing.assert_allclose(np.asarray(out), M, rtol=1e-9, atol=1e-15)
    with pytest.raises(ValueError, match="out must have shape"):
        attribution_matrix(F, y, Fv[:4], yv[:4], n_classes=10, alpha=ALPHA,
                           out=np.empty((3, 3)))


def test_selector_attribution_averages_to_its_scores(digits):
    import warnings

    from skitl import InfluenceSampleSelector

    F, y, Fv, yv = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sel = InfluenceSampleSelector(random_state=0).fit(F, y, X_val=Fv, y_val=yv)
    M = sel.attribution(F, y, Fv, yv)
    np.testing.assert_allclose(M.mean(1), sel.scores_, rtol=1e-7,
                               atol=1e-9 * np.abs(sel.scores_).max())
    with pytest.raises(ValueError, match="labels not seen in fit"):
        sel.attribution(F, y, Fv[:2], np.array([0, 42]))

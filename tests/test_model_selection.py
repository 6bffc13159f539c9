"""Deciding by the target: target-only test folds, the selector grid, the report.

A pool of a few target digits (scikit-learn's digits) and auxiliary digits
rotated by 90 degrees (correctly labelled, harmful), a tiny MLP; every search
runs in seconds.
"""

import warnings

import numpy as np
import pytest
import sklearn
import torch.nn as nn
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV

from skitl import InfluenceSampleSelector, TransferClassifier
from skitl.metrics import make_target_scorer
from skitl.model_selection import (
    TargetStratifiedKFold,
    TargetStratifiedShuffleSplit,
    search_report,
    selector_grid,
    stack_target,
)
from skitl.selection import TargetAgnostic, TargetOnlySelector


def _pool(n_target=90, n_aux=210, seed=0):
    d = load_digits()
    X = (d.images / 16).astype(np.float32)
    rng = np.random.RandomState(seed)
    idx = rng.permutation(len(d.target))
    tgt, aux = idx[:n_target], idx[n_target:n_target + n_aux]
    Xa = np.rot90(X[aux], 1, axes=(1, 2)).reshape(len(aux), -1)
    Xp = np.vstack([X[tgt].reshape(len(tgt), -1), Xa])
    yp = np.r_[d.target[tgt], d.target[aux]]
    sd = np.r_[-np.ones(len(tgt), int), np.ones(len(aux), int)]
    return Xp, yp, sd


@pytest.fixture(scope="module")
def pool():
    return _pool()


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


# -- the splitters --------------------------------------------------------------


@pytest.mark.parametrize("splitter", [
    TargetStratifiedKFold(3, shuffle=True, random_state=0),
    TargetStratifiedShuffleSplit(4, test_size=0.3, random_state=0),
], ids=["kfold", "shuffle"])
def test_test_folds_hold_target_only_and_training_keeps_every_auxiliary(pool, splitter):
    X, y, sd = pool
    splits = list(splitter.split(X, y, sample_domain=sd))
    assert len(splits) == splitter.get_n_splits()
    aux = np.flatnonzero(sd > 0)
    for train, test in splits:
        assert (sd[test] < 0).all()
        assert np.isin(aux, train).all()
        assert len(np.intersect1d(train, test)) == 0
        assert len(train) + len(test) == len(y)
        # stratified: every class of the target is tested
        assert set(y[test]) == set(y[sd < 0])
    if isinstance(splitter, TargetStratifiedKFold):
        tested = np.concatenate([t for _, t in splits])
        np.testing.assert_array_equal(np.sort(tested), np.flatnonzero(sd < 0))


def test_splitter_errors_name_the_problem(pool):
    X, y, sd = pool
    with pytest.raises(ValueError, match="needs sample_domain"):
        list(TargetStratifiedKFold(3).split(X, y))
    with pytest.raises(ValueError, match="no target sample"):
        list(TargetStratifiedKFold(3).split(X, y, sample_domain=np.abs(sd)))
    few = sd.copy()
    few[np.flatnonzero((sd < 0) & (y == 3))[2:]] = 1  # two target 3s left
    with pytest.raises(ValueError, match=r"class 3 has 2 target sample\(s\), fewer "
                                         r"than n_splits"):
        list(TargetStratifiedKFold(3).split(X, y, sample_domain=few))
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        list(TargetStratifiedKFold(3).split(X, y[:-1], sample_domain=sd))
    with pytest.raises(ValueError, match="n_splits must be an int >= 2"):
        list(TargetStratifiedKFold(1).split(X, y, sample_domain=sd))


def test_splitter_requests_sample_domain_by_default():
    routing = TargetStratifiedKFold().get_metadata_routing()
    assert routing.consumes("split", ["sample_domain"]) == {"sample_domain"}
    assert repr(TargetStratifiedKFold(4)) == (
        "TargetStratifiedKFold(n_splits=4, random_state=None, shuffle=False)")


def test_stack_target_reproduces_the_validation_set_scores(pool):
    """The target given as X_val, or stacked into the pool and validated whole:
    the same scores for the auxiliary samples."""
    X, y, sd = pool
    aux, tgt = sd > 0, sd < 0
    by_val = InfluenceSampleSelector(alpha=1e-2).fit(X[aux], y[aux], X[tgt], y[tgt])
    Xs, ys, sds = stack_target(X[aux], y[aux], X[tgt], y[tgt])
    assert (sds[: aux.sum()] == 1).all() and (sds[aux.sum():] == -1).all()
    whole = InfluenceSampleSelector(alpha=1e-2, target_validation="whole").fit(
        Xs, ys, sample_domain=sds)
    assert whole.influence_["mode"] == "target_whole"
    np.testing.assert_allclose(whole.scores_[: aux.sum()], by_val.scores_, rtol=1e-10,
                               atol=1e-14)
    with pytest.raises(ValueError, match="per-sample shape"):
        stack_target(X, y, X[:, :10], y)


# -- the search ------------------------------------------------------------------


def mlp():
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _clf(**kw):
    return TransferClassifier(mlp, max_epochs=2, lr=1e-2, batch_size=32, device="cpu",
                              random_state=0, **kw)


def test_the_search_over_selectors_runs_for_every_candidate(pool, tmp_path):
    pytest.importorskip("imblearn")
    X, y, sd = pool
    grid = selector_grid(
        ["none", "target_only", "influence", "influence_auto", "domain", "loss_auto",
         "undersample"], memory=str(tmp_path), cv=3, random_state=0)
    with sklearn.config_context(enable_metadata_routing=True):
        search = GridSearchCV(
            _clf().set_fit_request(sample_domain=True), grid,
            cv=TargetStratifiedKFold(3, shuffle=True, random_state=0),
            scoring=make_target_scorer(), error_score="raise")
        search.fit(X, y, sample_domain=sd)
    scores = search.cv_results_["mean_test_score"]
    assert np.isfinite(scores).all() and len(scores) == 7
    best = search.best_estimator_
    # target-only keeps exactly the target samples
    only = [i for i, p in enumerate(search.cv_results_["params"])
            if isinstance(p["selector"], TargetOnlySelector)][0]
    assert search.cv_results_["mean_test_score"][only] <= 1.0
    report = search_report(search)
    assert report.best == report.table[0]["candidate"]
    assert report.table[0]["diff"] == 0.0 and report.table[0]["within_noise"]
    assert all(r["diff"] >= 0 for r in report.table)
    assert report.resolved == (not report.tied)
    assert "within noise of the best (3 splits)" in report.text
    assert best.selector_ is None or hasattr(best.selector_, "support_")


def test_search_without_routing_takes_precomputed_splits(pool):
    X, y, sd = pool
    splits = list(TargetStratifiedKFold(2, shuffle=True, random_state=0).split(
        X, y, sample_domain=sd))
    search = GridSearchCV(_clf(), {"lr": [1e-2, 3e-2]}, cv=splits,
                          error_score="raise").fit(X, y)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()


# -- target-only and target-agnostic selectors -----------------------------------


def test_target_only_keeps_the_target_whatever_the_class_sizes(pool):
    X, y, sd = pool
    sel = TargetOnlySelector().fit(X, y, sample_domain=sd)
    np.testing.assert_array_equal(sel.support_, sd < 0)
    assert sel.n_removed_ == (sd > 0).sum() and sel.n_protected_ == 0
    with pytest.raises(ValueError, match="needs sample_domain"):
        TargetOnlySelector().fit(X, y)
    gone = sd.copy()
    gone[(sd < 0) & (y == 5)] = 1
    with pytest.raises(ValueError, match=r"Class\(es\) \[5\] have no target sample"):
        TargetOnlySelector().fit(X, y, sample_domain=gone)


def test_target_agnostic_runs_an_imblearn_sampler_on_images(pool):
    pytest.importorskip("imblearn")
    from imblearn.under_sampling import RandomUnderSampler

    X, y, sd = pool
    images = X.reshape(len(X), 1, 8, 8)
    y2 = (y == 0).astype(int)  # 1 vs rest: imbalanced
    sel = TargetAgnostic(RandomUnderSampler(random_state=0))
    X_kept, y_kept = sel.fit_resample(images, y2, sample_domain=sd)
    assert X_kept.shape[1:] == (1, 8, 8)
    assert np.bincount(y_kept)[0] == np.bincount(y_kept)[1] == (y2 == 1).sum()
    np.testing.assert_array_equal(X_kept, images[sel.sample_indices_])
    clf = _clf(selector=TargetAgnostic(RandomUnderSampler(random_state=0)))
    # inside the classifier the target is handed over and ignored
    clf.fit(X, y2, sample_domain=sd)
    assert len(clf.selector_.sample_indices_) == 2 * (y2 == 1).sum()

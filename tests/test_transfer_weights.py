"""TransferClassifier's ``sample_weight`` (per-sample loss weights) and
``target_share`` (a target fraction of every epoch's draws), alone, together,
through a selector and through scikit-learn's metadata routing.

Tiny MLPs on generated arrays: every fit takes well under a second. The last
feature of ``X`` is the row's id, so a ``train_transform`` can record which
rows training drew, and a spy can check which weights reached which rows.
"""

import pickle

import numpy as np
import pytest
import sklearn
import torch
import torch.nn as nn
from scipy.stats import chisquare
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils._param_validation import InvalidParameterError
from torch.utils.data import TensorDataset

from skitl import TransferClassifier
from skitl.selection import RandomSelector

N_FEATURES = 5


def mlp():
    # no BatchNorm, no dropout: a fit depends on the loss only, not on which
    # rows share a batch
    return nn.Sequential(nn.Linear(N_FEATURES, 16), nn.Tanh(), nn.Linear(16, 2))


def make_data(n_target=20, n_aux=200, seed=0):
    """Target rows first (domain -1), then auxiliary rows (domain 1); the
    last column is the row id."""
    rs = np.random.RandomState(seed)
    n = n_target + n_aux
    X = rs.randn(n, N_FEATURES).astype(np.float32)
    X[:, -1] = np.arange(n)
    y = (X[:, 0] + 0.5 * rs.randn(n) > 0).astype(int)
    domain = np.where(np.arange(n) < n_target, -1, 1)
    return X, y, domain


def clf(**kwargs):
    params = dict(strategy="scratch", lr=1e-2, max_epochs=3, batch_size=32,
                  random_state=0, device="cpu")
    params.update(kwargs)
    return TransferClassifier(mlp, **params)


def params_of(est):
    return [p.detach().clone() for p in est.net_.module_.parameters()]


def assert_same_params(a, b):
    for pa, pb in zip(params_of(a), params_of(b), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


class Recorder:
    """A train_transform that records the id of every row drawn."""

    def __init__(self):
        self.ids = []

    def __call__(self, x):
        self.ids.append(int(x[-1]))
        return x


# -- the weighted loss --------------------------------------------------------


@pytest.mark.parametrize("early_stopping", [False, True])
def test_zero_weight_is_removing_the_row(early_stopping):
    """Rows of weight 0 leave before selection, hold-out and batching: the fit
    is bit-identical to one on the other rows with their weights, also with
    mini-batches, shuffling and an early-stopping hold-out."""
    X, y, _ = make_data()
    w = np.random.RandomState(1).uniform(0.5, 2.0, len(y))
    w[::4] = 0.0
    keep = w > 0
    kwargs = dict(early_stopping=early_stopping, n_iter_no_change=2, max_epochs=4)
    weighted = clf(**kwargs).fit(X, y, sample_weight=w)
    dropped = clf(**kwargs).fit(X[keep], y[keep], sample_weight=w[keep])
    assert_same_params(weighted, dropped)


def test_zero_one_weights_equal_an_unweighted_fit_without_those_rows():
    X, y, _ = make_data()
    w = np.ones(len(y))
    w[1::3] = 0.0
    keep = w > 0
    weighted = clf().fit(X, y, sample_weight=w)
    plain = clf().fit(X[keep], y[keep])
    # the weighted loss multiplies by 1.0 then averages, the plain one averages
    np.testing.assert_allclose(weighted.predict_proba(X), plain.predict_proba(X),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_integer_weights_equal_repeated_rows_full_batch(optimizer):
    """With one batch per epoch the loss is sum(w_i L_i) / sum(w_i): a weight
    of 2 is the row twice, whatever the optimizer (float32 rounding aside)."""
    X, y, _ = make_data(n_target=10, n_aux=70)
    w = np.ones(len(y))
    w[::3] = 2.0
    X_rep = np.repeat(X, w.astype(int), axis=0)
    y_rep = np.repeat(y, w.astype(int))
    kwargs = dict(batch_size=len(y_rep), max_epochs=10, optimizer=optimizer, lr=0.05)
    weighted = clf(**kwargs).fit(X, y, sample_weight=w)
    repeated = clf(**kwargs).fit(X_rep, y_rep)
    np.testing.assert_allclose(weighted.predict_proba(X), repeated.predict_proba(X),
                               rtol=0, atol=1e-5)
    # and the weights did change the fit
    unweighted = clf(**kwargs).fit(X, y)
    assert np.abs(unweighted.predict_proba(X) - weighted.predict_proba(X)).max() > 1e-4


def test_only_weight_ratios_matter():
    X, y, _ = make_data()
    w = np.random.RandomState(2).uniform(0.1, 3.0, len(y))
    a = clf().fit(X, y, sample_weight=w)
    b = clf().fit(X, y, sample_weight=1000.0 * w)
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), rtol=0, atol=1e-6)
    ones = clf().fit(X, y, sample_weight=np.full(len(y), 7.0))
    plain = clf().fit(X, y)
    np.testing.assert_allclose(ones.predict_proba(X), plain.predict_proba(X),
                               rtol=0, atol=1e-6)


def _cross_entropy(est, X, y):
    with torch.no_grad():
        logits = est.net_.module_(torch.as_tensor(X))
        return nn.functional.cross_entropy(logits, torch.as_tensor(y), reduction="none")


def test_training_loss_weighted_validation_loss_unweighted():
    """One full batch at a negligible learning rate: the recorded training loss
    is the weighted mean of the per-sample losses, the early-stopping
    validation loss the plain mean."""
    X, y, _ = make_data()
    X_val, y_val, _ = make_data(seed=5)
    w = np.random.RandomState(3).uniform(0.0, 4.0, len(y))
    est = clf(batch_size=len(y), max_epochs=1, lr=1e-12, optimizer="sgd",
              early_stopping=True).fit(X, y, X_val=X_val, y_val=y_val, sample_weight=w)
    history = est.net_.history[-1]
    train_ce = _cross_entropy(est, X, y).numpy()
    expected = np.sum(w * train_ce) / np.sum(w)
    assert history["train_loss"] == pytest.approx(expected, rel=1e-5)
    assert history["train_loss"] != pytest.approx(train_ce.mean(), rel=1e-3)
    assert history["valid_loss"] == pytest.approx(
        _cross_entropy(est, X_val, y_val).mean().item(), rel=1e-5)


def test_predict_proba_and_pickle_unchanged_by_weights():
    X, y, domain = make_data()
    w = np.random.RandomState(4).uniform(0.0, 2.0, len(y))
    est = clf(target_share=0.4).fit(X, y, sample_domain=domain, sample_weight=w)
    proba = est.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.predict_proba(X), proba)
    assert clone(est).get_params()["target_share"] == 0.4


# -- target_share -------------------------------------------------------------


@pytest.mark.parametrize("share", [0.5, 0.2])
def test_target_share_of_the_draws(share):
    n_target, n_aux, epochs = 20, 300, 5
    X, y, domain = make_data(n_target, n_aux)
    rec = Recorder()
    clf(target_share=share, max_epochs=epochs, train_transform=rec).fit(
        X, y, sample_domain=domain)
    ids = np.asarray(rec.ids)
    n_draws = epochs * len(y)
    assert len(ids) == n_draws  # an epoch is still len(training set) draws
    observed = np.mean(ids < n_target)
    tolerance = 4 * np.sqrt(share * (1 - share) / n_draws)
    assert abs(observed - share) < tolerance, (observed, share)
    # with replacement: a target row comes back more than once an epoch
    counts = np.bincount(ids, minlength=len(y))
    assert counts[:n_target].max() > epochs
    # uniformly within each group
    assert chisquare(counts[:n_target]).pvalue > 1e-3
    assert chisquare(counts[n_target:]).pvalue > 1e-3


def test_plain_shuffling_without_target_share():
    """Without target_share each row is drawn once per epoch (the target is
    drowned: 20 of 320)."""
    X, y, domain = make_data(20, 300)
    rec = Recorder()
    clf(max_epochs=2, train_transform=rec).fit(X, y, sample_domain=domain)
    np.testing.assert_array_equal(np.bincount(rec.ids), np.full(len(y), 2))


def test_target_share_is_repeatable():
    X, y, domain = make_data()
    runs = []
    for seed in (0, 0, 1):
        rec = Recorder()
        est = clf(target_share=0.5, train_transform=rec, random_state=seed).fit(
            X, y, sample_domain=domain)
        runs.append((rec.ids, est.predict_proba(X)))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert runs[0][0] != runs[2][0]


def test_target_share_draws_the_training_part_only():
    X, y, domain = make_data(30, 200)
    rec = Recorder()
    est = clf(target_share=0.5, early_stopping=True, validation_fraction=0.2,
              train_transform=rec, max_epochs=2).fit(X, y, sample_domain=domain)
    valid = est.net_.train_split.valid_indices
    n_train = len(y) - len(valid)
    assert len(rec.ids) == 2 * n_train
    assert not np.isin(rec.ids, valid).any()


def test_target_share_with_weights_applies_both():
    X, y, domain = make_data()
    w = np.random.RandomState(6).uniform(0.2, 2.0, len(y))
    rec_both, rec_sampler = Recorder(), Recorder()
    both = clf(target_share=0.5, train_transform=rec_both).fit(
        X, y, sample_domain=domain, sample_weight=w)
    sampler_only = clf(target_share=0.5, train_transform=rec_sampler).fit(
        X, y, sample_domain=domain)
    # the same draws, a different loss
    assert rec_both.ids == rec_sampler.ids
    assert np.abs(both.predict_proba(X) - sampler_only.predict_proba(X)).max() > 1e-4


# -- selector -------------------------------------------------------------------


def test_selector_weights_and_domains_follow_the_kept_rows():
    """A fit through RandomSelector equals a fit on the rows it kept, with
    their own weights and domains (and not with misaligned ones)."""
    X, y, domain = make_data()
    w = np.random.RandomState(7).uniform(0.2, 3.0, len(y))
    selector = RandomSelector(max_remove=5, random_state=0)
    est = clf(selector=selector, target_share=0.3).fit(
        X, y, sample_domain=domain, sample_weight=w)
    kept = est.selector_.sample_indices_
    assert len(kept) == len(y) - 5
    aligned = clf(target_share=0.3).fit(
        X[kept], y[kept], sample_domain=domain[kept], sample_weight=w[kept])
    assert_same_params(est, aligned)
    misaligned = clf(target_share=0.3).fit(
        X[kept], y[kept], sample_domain=domain[kept], sample_weight=w[: len(kept)])
    assert np.abs(misaligned.predict_proba(X) - est.predict_proba(X)).max() > 1e-6


def test_selector_sees_only_positive_weights():
    X, y, domain = make_data()
    w = np.ones(len(y))
    w[-10:] = 0.0
    est = clf(selector=RandomSelector(max_remove=5, random_state=0)).fit(
        X, y, sample_domain=domain, sample_weight=w)
    assert len(est.selector_.support_) == len(y) - 10


class _NoIndicesSelector:
    """Drops the last two rows and does not say which rows it kept."""

    def fit_resample(self, X, y, **kwargs):
        return X[:-2], y[:-2]


@pytest.mark.parametrize("what", ["sample_weight", "target_share"])
def test_selector_without_sample_indices(what):
    X, y, domain = make_data()
    kwargs, fit = {}, {"sample_domain": domain}
    if what == "sample_weight":
        fit["sample_weight"] = np.ones(len(y))
    else:
        kwargs["target_share"] = 0.5
    est = clf(selector=_NoIndicesSelector(), **kwargs)
    with pytest.raises(ValueError, match=r"_NoIndicesSelector reports no sample_indices_"):
        est.fit(X, y, **fit)
    assert not hasattr(est, "net_")
    # without weights or target_share the selection needs no indices
    clf(selector=_NoIndicesSelector()).fit(X, y, sample_domain=domain)


# -- errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    "weights, match",
    [
        (np.ones(7), r"sample_weight has 7 values but X has 220 samples"),
        (np.ones((220, 2)), r"sample_weight must be 1-D.*got shape \(220, 2\)"),
        (np.ones((220, 1)), r"sample_weight must be 1-D"),
        (1.0, r"sample_weight must be 1-D.*got shape \(\)"),
        (np.r_[-1.0, np.ones(219)], r"sample_weight has 1 negative value"),
        (np.r_[np.nan, np.ones(219)], r"sample_weight contains NaN"),
        (np.r_[np.inf, np.ones(219)], r"sample_weight contains infinity"),
        (np.zeros(220), r"sample_weight is zero for every sample"),
    ],
)
def test_invalid_sample_weight(weights, match):
    X, y, _ = make_data()
    with pytest.raises(ValueError, match=match):
        clf().fit(X, y, sample_weight=weights)


def test_weights_leaving_one_class():
    X, y, _ = make_data()
    with pytest.raises(ValueError, match=r"sample_weight is zero .* all classes but one"):
        clf().fit(X, y, sample_weight=(y == 1).astype(float))


def test_target_share_needs_sample_domain():
    X, y, _ = make_data()
    with pytest.raises(ValueError, match=r"target_share=0.5 needs sample_domain.*None"):
        clf(target_share=0.5).fit(X, y)


@pytest.mark.parametrize("group", ["target", "aux"])
def test_target_share_with_one_group_left_shuffles_as_usual(group):
    """A selector that keeps only the target (a search's target-only candidate)
    leaves nothing to balance: the fit is the one without target_share."""
    X, y, domain = make_data()
    keep = (domain < 0) if group == "target" else (domain > 0)
    shared = clf(target_share=0.5).fit(X[keep], y[keep], sample_domain=domain[keep])
    plain = clf().fit(X[keep], y[keep])
    assert_same_params(shared, plain)


def test_max_steps_gives_every_training_set_the_same_compute():
    X, y, domain = make_data()
    small = clf(max_steps=20, max_epochs=100).fit(X[:64], y[:64])
    large = clf(max_steps=20, max_epochs=100).fit(X, y)
    # 2 batches an epoch -> 10 epochs; 7 batches an epoch -> 3 epochs
    assert len(small.net_.history) == 10 and len(large.net_.history) == 3
    capped = clf(max_steps=1000, max_epochs=4).fit(X[:64], y[:64])
    assert len(capped.net_.history) == 4


@pytest.mark.parametrize("share", [0, 1, 1.5, -0.1, "half"])
def test_target_share_range(share):
    X, y, domain = make_data()
    with pytest.raises(InvalidParameterError, match="target_share"):
        clf(target_share=share).fit(X, y, sample_domain=domain)


# -- caller's data, routing -------------------------------------------------------


def test_callers_arrays_unchanged():
    X, y, domain = make_data()
    w = np.random.RandomState(8).uniform(0.0, 2.0, len(y))
    w[:3] = 0.0
    originals = [a.copy() for a in (X, y, domain, w)]
    for a in (X, y, domain, w):
        a.setflags(write=False)  # a write would raise
    clf(selector=RandomSelector(max_remove=5, random_state=0), target_share=0.5,
        early_stopping=True).fit(X, y, sample_domain=domain, sample_weight=w)
    for a, original in zip((X, y, domain, w), originals, strict=True):
        np.testing.assert_array_equal(a, original)


class _Spy(TransferClassifier):
    """Records the ids of the rows and the weights each fit receives."""

    calls = []

    def fit(self, X, y=None, *, X_val=None, y_val=None, sample_domain=None,
            sample_weight=None):
        _Spy.calls.append((np.asarray(X)[:, -1].astype(int), np.asarray(sample_weight)))
        return super().fit(X, y, X_val=X_val, y_val=y_val, sample_domain=sample_domain,
                           sample_weight=sample_weight)


def test_sample_weight_routed_through_grid_search():
    X, y, _ = make_data(10, 90)
    w = np.random.RandomState(9).uniform(0.1, 2.0, len(y))
    _Spy.calls.clear()
    with sklearn.config_context(enable_metadata_routing=True):
        est = _Spy(mlp, strategy="scratch", max_epochs=2, random_state=0, device="cpu")
        est.set_fit_request(sample_weight=True).set_score_request(sample_weight=False)
        search = GridSearchCV(est, {"lr": [1e-2, 3e-2]},
                              cv=KFold(3, shuffle=True, random_state=0),
                              error_score="raise")
        search.fit(X, y, sample_weight=w)
    assert not sklearn.get_config()["enable_metadata_routing"]
    assert len(_Spy.calls) == 2 * 3 + 1  # every candidate and fold, then the refit
    for ids, weights in _Spy.calls:
        np.testing.assert_array_equal(weights, w[ids])  # split with X
    assert sorted(len(ids) for ids, _ in _Spy.calls)[-1] == len(y)
    # the refit is the plain weighted fit
    direct = clf(lr=search.best_params_["lr"], max_epochs=2, batch_size=64).fit(
        X, y, sample_weight=w)
    np.testing.assert_array_equal(search.best_estimator_.predict_proba(X),
                                  direct.predict_proba(X))


def test_unrequested_sample_weight_is_refused_by_routing():
    X, y, _ = make_data(10, 90)
    with sklearn.config_context(enable_metadata_routing=True):
        search = GridSearchCV(clf(), {"lr": [1e-2]}, cv=2)
        with pytest.raises(ValueError, match="sample_weight"):
            search.fit(X, y, sample_weight=np.ones(len(y)))


def test_sample_weight_routed_through_pipeline():
    X, y, _ = make_data(10, 60)
    w = np.random.RandomState(10).uniform(0.1, 2.0, len(y))
    _Spy.calls.clear()
    with sklearn.config_context(enable_metadata_routing=True):
        est = _Spy(mlp, strategy="scratch", max_epochs=1, random_state=0, device="cpu")
        make_pipeline(FunctionTransformer(), est.set_fit_request(sample_weight=True)).fit(
            X, y, sample_weight=w)
    (ids, weights), = _Spy.calls
    np.testing.assert_array_equal(weights, w[ids])


def test_zero_weights_with_a_dataset():
    """Zero-weight rows of a torch Dataset are dropped too (through a Subset)."""
    X, y, _ = make_data()
    w = np.random.RandomState(11).uniform(0.5, 2.0, len(y))
    w[::5] = 0.0
    dataset = TensorDataset(torch.as_tensor(X), torch.as_tensor(y))
    from_dataset = clf().fit(dataset, sample_weight=w)
    from_array = clf().fit(X, y, sample_weight=w)
    assert_same_params(from_dataset, from_array)

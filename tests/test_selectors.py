"""The selector contract: scores, masks, fit_resample, guards, repeatability."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.preprocessing import LabelEncoder

from skitl.influence import cross_fit_head_influence, fit_head, head_influence
from skitl.selection import (
    ConfidentLearningSelector,
    InfluenceSampleSelector,
    LossSelector,
    RandomSelector,
    removal_mask,
)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    rng = np.random.RandomState(0)
    idx = rng.permutation(len(y))[:400]
    return X[idx], y[idx]


@pytest.fixture(scope="module")
def noisy_digits(digits):
    X, y = digits
    rng = np.random.RandomState(1)
    y_noisy = y.copy()
    flip = rng.choice(len(y), size=60, replace=False)
    y_noisy[flip] = (y[flip] + rng.randint(1, 10, size=60)) % 10
    return X, y_noisy, y_noisy != y


def test_scores_equal_engine_with_validation_set(digits):
    X, y = digits
    Xtr, ytr, Xva, yva = X[:300], y[:300], X[300:], y[300:]
    sel = InfluenceSampleSelector(alpha=1e-2).fit(Xtr, ytr, X_val=Xva, y_val=yva)
    W, b = fit_head(Xtr.astype(np.float64), ytr, 10, alpha=1e-2)
    ref = head_influence(Xtr, ytr, Xva, yva, n_classes=10, alpha=1e-2, W=W, b=b)
    np.testing.assert_allclose(sel.scores_, ref.scores, rtol=1e-6, atol=1e-12)


def test_scores_equal_engine_cross_fitted(digits):
    X, y = digits
    sel = InfluenceSampleSelector(alpha=1e-2, cv=4, random_state=3).fit(X, y)
    ref = cross_fit_head_influence(X, y, n_classes=10, cv=4, alpha=1e-2,
                                   val_trim="auto", random_state=3)
    np.testing.assert_allclose(sel.scores_, ref.scores, rtol=1e-6, atol=1e-12)
    # cross-fitting scores every sample, and not trivially
    assert np.isfinite(sel.scores_).all()
    assert (sel.scores_ != 0).all()


def test_fit_resample_returns_kept_rows_in_order(noisy_digits):
    X, y, _ = noisy_digits
    labels = np.array([f"digit-{v}" for v in y])
    sel = InfluenceSampleSelector(alpha=1e-2, random_state=0)
    Xk, yk = sel.fit_resample(X, labels)
    assert sel.n_removed_ > 0
    keep = np.flatnonzero(sel.scores_ >= 0)
    np.testing.assert_array_equal(sel.sample_indices_, np.sort(sel.sample_indices_))
    np.testing.assert_array_equal(sel.get_support(indices=True), sel.sample_indices_)
    np.testing.assert_array_equal(Xk, X[sel.support_])
    np.testing.assert_array_equal(yk, labels[sel.support_])
    assert set(keep) <= set(sel.sample_indices_)
    assert sel.n_removed_ == len(y) - len(yk)
    assert yk.dtype == labels.dtype


def test_fit_resample_with_dataset_returns_subset(digits):
    X, y = digits
    ds = torch.utils.data.TensorDataset(torch.as_tensor(X), torch.as_tensor(y))
    sel = RandomSelector(max_remove=10, random_state=0)
    Xk, yk = sel.fit_resample(ds, y)
    assert isinstance(Xk, torch.utils.data.Subset)
    assert len(Xk) == len(y) - 10 == len(yk)
    assert list(Xk.indices) == sel.sample_indices_.tolist()


def test_max_remove_and_threshold(noisy_digits):
    X, y, _ = noisy_digits
    full = InfluenceSampleSelector(alpha=1e-2, random_state=0).fit(X, y)
    capped = InfluenceSampleSelector(alpha=1e-2, random_state=0, max_remove=5).fit(X, y)
    frac = InfluenceSampleSelector(alpha=1e-2, random_state=0, max_remove=0.01).fit(X, y)
    assert full.n_removed_ > 5
    assert capped.n_removed_ == 5
    assert frac.n_removed_ == 4
    # the capped removal takes the most harmful first
    worst = np.argsort(full.scores_, kind="stable")[:5]
    np.testing.assert_array_equal(np.sort(worst), np.flatnonzero(~capped.support_))
    higher = InfluenceSampleSelector(alpha=1e-2, random_state=0,
                                     threshold=float(np.median(full.scores_))).fit(X, y)
    assert higher.n_removed_ >= full.n_removed_


def test_no_class_disappears():
    rng = np.random.RandomState(0)
    scores = rng.normal(size=40)
    y = np.repeat([0, 1], 20)
    scores[y == 1] = -1.0  # every sample of class 1 is a candidate
    remove, protected = removal_mask(scores, y, candidates=scores < 0)
    assert (~remove[y == 1]).sum() == 2
    assert protected[1] == 2


def test_floor_warns(digits):
    X, y = digits
    with pytest.warns(UserWarning, match="floor"):
        RandomSelector(max_remove=0.95, random_state=0).fit(X, y)


def test_random_state_repeatable(noisy_digits):
    X, y, _ = noisy_digits
    a = InfluenceSampleSelector(alpha=1e-2, random_state=7).fit(X, y)
    b = InfluenceSampleSelector(alpha=1e-2, random_state=7).fit(X, y)
    np.testing.assert_array_equal(a.scores_, b.scores_)
    np.testing.assert_array_equal(a.support_, b.support_)
    r1 = RandomSelector(random_state=3).fit(X, y)
    r2 = RandomSelector(random_state=3).fit(X, y)
    np.testing.assert_array_equal(r1.support_, r2.support_)


def test_val_trim_auto_finds_noise_plain_rule_does_not_need_to(noisy_digits):
    from sklearn.metrics import roc_auc_score

    X, y, corrupted = noisy_digits
    auto = InfluenceSampleSelector(alpha=1e-2, random_state=0).fit(X, y)
    auroc = roc_auc_score(corrupted, -auto.scores_)
    assert auroc > 0.9, auroc
    removed = ~auto.support_
    assert corrupted[removed].mean() >= 0.7
    plain = InfluenceSampleSelector(alpha=1e-2, random_state=0, val_trim=0).fit(X, y)
    assert np.isfinite(plain.scores_).all()


def test_user_validation_set_untrimmed_by_default(digits):
    X, y = digits
    sel = InfluenceSampleSelector(alpha=1e-2).fit(X[:300], y[:300], X_val=X[300:],
                                                  y_val=y[300:])
    assert sel.influence_["damping"] >= 0


def test_loss_selector_removes_highest_oof_loss(noisy_digits):
    X, y, corrupted = noisy_digits
    sel = LossSelector(max_remove=60, alpha=1e-2, random_state=0).fit(X, y)
    np.testing.assert_allclose(sel.scores_, -sel.oof_loss_)
    assert sel.n_removed_ == 60
    assert corrupted[~sel.support_].mean() > 0.7


def test_confident_learning_selector(noisy_digits):
    pytest.importorskip("cleanlab")
    from cleanlab.filter import find_label_issues

    X, y, corrupted = noisy_digits
    sel = ConfidentLearningSelector(alpha=1e-2, random_state=0).fit(X, y)
    y_enc = LabelEncoder().fit_transform(y)
    ref = find_label_issues(labels=y_enc, pred_probs=sel.oof_proba_)
    np.testing.assert_array_equal(sel.label_issues_, ref)
    assert sel.n_removed_ <= ref.sum()
    assert corrupted[~sel.support_].mean() > 0.6


def test_gradient_similarity_is_identity_hessian(noisy_digits):
    X, y, _ = noisy_digits
    sel = InfluenceSampleSelector(hessian="identity", alpha=1e-2, random_state=0).fit(X, y)
    ref = cross_fit_head_influence(X, y, n_classes=10, cv=5, alpha=1e-2,
                                   hessian="identity", random_state=0)
    np.testing.assert_allclose(sel.scores_, ref.scores, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"hessian": "bogus"}, "hessian"),
        ({"cv": 1}, "cv"),
        ({"val_trim": 1.5}, "val_trim"),
        ({"max_remove": -1}, "max_remove"),
        ({"max_remove": 1.5}, "max_remove"),
        ({"params": "layer*"}, "params"),
        ({"params": "all"}, "needs a network"),
        ({"alpha": -1.0}, "alpha"),
    ],
)
def test_bad_parameters_raise_clear_errors(digits, params, match):
    X, y = digits
    with pytest.raises((ValueError, TypeError), match=match):
        InfluenceSampleSelector(**params).fit(X, y)


def test_no_silent_pass_through():
    assert not hasattr(InfluenceSampleSelector(), "transform")
    assert not hasattr(LossSelector(), "transform")


def test_refit_resets_state(digits):
    X, y = digits
    sel = RandomSelector(max_remove=5, random_state=0).fit(X, y)
    sel.set_params(max_remove=7).fit(X[:200], y[:200])
    assert sel.support_.shape == (200,)
    assert sel.n_removed_ == 7


def test_no_warning_on_normal_fit(digits):
    X, y = digits
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        InfluenceSampleSelector(alpha=1e-2, random_state=0).fit(X, y)


def _schema_cases(X, y):
    import torch.nn as nn

    from skitl import TransferClassifier

    def mlp():
        return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))

    est = TransferClassifier(mlp, random_state=0, device="cpu")
    sd = np.where(np.arange(len(y)) % 2 == 0, -1, 1)
    return {
        "head_val": (InfluenceSampleSelector(alpha=1e-2), dict(X_val=X[:100], y_val=y[:100])),
        "head_cross_fit": (InfluenceSampleSelector(alpha=1e-2, cv=3, random_state=0), {}),
        "head_target": (InfluenceSampleSelector(alpha=1e-2, cv=3, random_state=0),
                        dict(sample_domain=sd)),
        "head_auto": (InfluenceSampleSelector(alpha=1e-2, cv=3, random_state=0,
                                              max_remove="auto"), {}),
        "network_head": (InfluenceSampleSelector(est, alpha=1e-2, cv=3, random_state=0), {}),
        "deep_val": (InfluenceSampleSelector(est, params=["2"], hessian="ggn", alpha=1e-2),
                     dict(X_val=X[:100], y_val=y[:100])),
        "deep_cross_fit": (InfluenceSampleSelector(est, params=["2"], hessian="ggn",
                                                   alpha=1e-2, cv=3, random_state=0), {}),
    }


def test_influence_info_has_one_schema(digits):
    """influence_ has the same keys and types on every path."""
    X, y = digits
    keys = None
    for name, (sel, kw) in _schema_cases(X, y).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            info = sel.fit(X, y, **kw).influence_
        if keys is None:
            keys = set(info)
        assert set(info) == keys, name
        assert isinstance(info["damping"], float) and info["damping"] >= 0, name
        assert isinstance(info["residual"], float), name
        assert isinstance(info["n_iter"], int), name
        assert isinstance(info["solver"], str) and info["solver"], name
        assert isinstance(info["per_fold"], list), name
        assert info["n_folds"] == len(info["per_fold"]), name
        assert info["params"], name
    assert {"mode", "alpha", "alpha_rule", "params", "hessian", "solver", "damping",
            "residual", "n_iter", "n_folds", "per_fold", "seconds", "oof_proba",
            "oof_loss"} == keys


def test_influence_info_names_the_real_head(digits):
    import torch.nn as nn

    from skitl import TransferClassifier

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(64, 16), nn.ReLU())
            self.classifier = nn.Linear(16, 10)

        def forward(self, x):
            return self.classifier(self.body(x))

    X, y = digits
    est = TransferClassifier(Net, random_state=0, device="cpu")
    sel = InfluenceSampleSelector(est, alpha=1e-2, cv=3, random_state=0).fit(X, y)
    assert sel.influence_["params"] == ["classifier.weight", "classifier.bias"]


def test_deep_cross_fit_runs_the_prefix_once(digits, monkeypatch):
    """Deeper parameters: the folds share one cached prefix, and the scores
    equal those of running the whole network in every fold."""
    import torch
    import torch.nn as nn

    import skitl.influence._api as api
    import skitl.influence._prefix as prefix
    from skitl import TransferClassifier

    X, y = digits
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                        nn.Linear(16, 10))
    est = TransferClassifier(net, random_state=0, device="cpu")
    calls = []
    original = prefix.prefix_cache

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(prefix, "prefix_cache", counting)
    params = dict(params=["4"], hessian="ggn", alpha=1e-2, cv=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cached = InfluenceSampleSelector(est, **params).fit(X, y).scores_
        assert len(calls) == 1
        monkeypatch.setattr(api._Job, "_prefix_once", lambda self, X: X)
        whole = InfluenceSampleSelector(est, **params).fit(X, y).scores_
    np.testing.assert_allclose(cached, whole, rtol=1e-6, atol=1e-12)


class _ForwardNotAllowed(torch.nn.Module):
    """A network whose forward pass fails the test: nothing may run it."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(64, 8)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        raise AssertionError("a forward pass ran before the parameters were checked")


@pytest.mark.parametrize(
    "params, match",
    [
        ({"solver": "qr"}, "'solver' parameter"),
        ({"hessian": "newton"}, "'hessian' parameter"),
        ({"params": "layers"}, "'params' parameter"),
        ({"params": ["nothing_here"]}, "matches no parameter"),
    ],
)
def test_bad_parameters_fail_before_any_forward_pass(digits, params, match):
    from skitl import TransferClassifier

    X, y = digits
    sel = InfluenceSampleSelector(TransferClassifier(_ForwardNotAllowed), **params)
    with pytest.raises(ValueError, match=match):
        sel.fit(X, y)

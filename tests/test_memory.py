"""``memory``: scores computed once per data split, never stale."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV

import skitl.influence._features as engine_features
import skitl.selection._features as selection_features
from skitl import InfluenceSampleSelector, TransferClassifier
from skitl.selection import DomainClassifierSelector, LossSelector


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X[:240] / 16).astype(np.float32), y[:240]


@pytest.fixture
def counter(monkeypatch):
    """Counts the scoring runs (forward pass and influence) of the selectors:
    what the cache saves."""
    calls = []
    original = selection_features._run

    # the same signature as the original: joblib's cache reads it
    def counting(selector, plan, net, head_name, key, X, y, X_val, y_val, target):
        calls.append(1)
        return original(selector, plan, net, head_name, key, X, y, X_val, y_val, target)

    monkeypatch.setattr(selection_features, "_run", counting)
    return calls


def mlp():
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def test_grid_over_the_rule_scores_once_per_split(digits, counter, tmp_path):
    X, y = digits
    clf = TransferClassifier(
        mlp, max_epochs=1, random_state=0, device="cpu",
        selector=InfluenceSampleSelector(cv=3, random_state=0, memory=str(tmp_path)),
    )
    grid = {
        "selector__threshold": [0.0, -1e-4],
        "selector__max_remove": [None, 0.05],
        "strategy": ["finetune", "linear_probe"],
    }
    search = GridSearchCV(clf, grid, cv=2, error_score="raise").fit(X, y)
    n_fits = 2 * 8 + 1
    assert len(search.cv_results_["params"]) == 8
    # one forward pass per split and one for the refit on all the data,
    # instead of one per fit: the strategies share the pretrained network
    assert len(counter) == 3
    counter.clear()
    GridSearchCV(clf.set_params(selector__memory=None), grid, cv=2,
                 error_score="raise").fit(X, y)
    assert len(counter) == n_fits


def test_cached_and_fresh_results_agree(digits, tmp_path):
    X, y = digits
    fresh = InfluenceSampleSelector(cv=3, random_state=0).fit(X, y)
    cached = InfluenceSampleSelector(cv=3, random_state=0, memory=str(tmp_path))
    first = cached.fit(X, y).scores_.copy()
    second = cached.fit(X, y).scores_
    np.testing.assert_array_equal(first, fresh.scores_)
    np.testing.assert_array_equal(second, fresh.scores_)
    assert cached.influence_["mode"] == "cross_fit"


def test_a_changed_input_recomputes(digits, counter, tmp_path):
    X, y = digits
    est = TransferClassifier(mlp, random_state=0, device="cpu")

    def fit(**changes):
        params = dict(estimator=est, cv=3, random_state=0, memory=str(tmp_path))
        data = changes.pop("data", (X, y))
        InfluenceSampleSelector(**{**params, **changes}).fit(*data)
        return len(counter)

    assert fit() == 1
    assert fit() == 1                      # same everything: cached
    assert fit(threshold=-1.0) == 1         # the rule is not part of the key
    assert fit(max_remove=3) == 1
    assert fit(alpha=1e-2) == 2             # alpha changes the scores
    X2 = X.copy()
    X2[0, 0] += 1e-3
    assert fit(data=(X2, y)) == 3           # the data
    y2 = y.copy()
    y2[0] = (y2[0] + 1) % 10
    assert fit(data=(X, y2)) == 4           # the labels
    other = TransferClassifier(mlp, random_state=1, device="cpu")
    assert fit(estimator=other) == 5        # other weights (another init)
    state = {k: v + 1e-3 for k, v in est._pretrained_network()[0].state_dict().items()}
    path = tmp_path / "w.pt"
    torch.save(state, path)
    shifted = TransferClassifier(mlp, weights=str(path), random_state=0, device="cpu")
    assert fit(estimator=shifted) == 6      # other weights (a file)


@pytest.mark.parametrize("make", [
    lambda m: LossSelector(cv=3, random_state=0, memory=m),
    lambda m: DomainClassifierSelector(cv=3, random_state=0, memory=m),
], ids=["loss", "domain"])
def test_baselines_cache_too(digits, counter, tmp_path, make):
    X, y = digits
    sd = np.where(np.arange(len(y)) % 2 == 0, -1, 1)
    a = make(str(tmp_path)).fit(X, y, sample_domain=sd)
    b = make(str(tmp_path)).set_params(max_remove=5).fit(X, y, sample_domain=sd)
    np.testing.assert_array_equal(a.scores_, b.scores_)
    assert len(counter) == 1


@pytest.mark.parametrize("where", ["temporary", "directory"])
def test_features_on_disk_give_the_same_scores_and_are_removed(digits, monkeypatch,
                                                               tmp_path, where):
    X, y = digits
    est = TransferClassifier(mlp, random_state=0, device="cpu")
    seen = []
    original = engine_features.extract_features

    def spying(*args, **kwargs):
        F = original(*args, **kwargs)
        seen.append((type(F), getattr(F, "filename", None)))
        return F

    monkeypatch.setattr(engine_features, "extract_features", spying)
    in_memory = InfluenceSampleSelector(est, cv=3, random_state=0).fit(X, y)
    feature_dir = True if where == "temporary" else str(tmp_path / "features")
    on_disk = InfluenceSampleSelector(est, cv=3, random_state=0, feature_dir=feature_dir,
                                      max_remove="auto").fit(X, y)
    np.testing.assert_allclose(on_disk.scores_, in_memory.scores_, rtol=1e-10,
                               atol=1e-15)
    kind, filename = seen[-1]
    assert issubclass(kind, np.memmap) and filename is not None
    import os

    assert not os.path.exists(filename)  # removed when fit ended
    if where == "directory":
        assert os.listdir(tmp_path / "features") == []

"""Instance transfer judged against a target: X_val, sample_domain, routing.

The pool mixes a few target samples (scikit-learn's digits) with correctly
labelled auxiliary samples from another distribution (the same digits rotated
by 90 degrees, or plain digits, which help). Features are the pixels
themselves (``estimator=None``), so every test runs in seconds.
"""

import warnings

import numpy as np
import pytest
import sklearn
import torch.nn as nn
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from skitl import InfluenceSampleSelector, TransferClassifier
from skitl.metrics import make_target_scorer
from skitl.selection import (
    DomainClassifierSelector,
    LossSelector,
    RandomSelector,
)


def _pool(n_target=100, n_aux=200, rotate=1, seed=0):
    d = load_digits()
    X = (d.images / 16).astype(np.float32)
    rng = np.random.RandomState(seed)
    idx = rng.permutation(len(d.target))
    tgt, aux, val = idx[:n_target], idx[n_target:n_target + n_aux], idx[-300:]
    Xa = np.rot90(X[aux], rotate, axes=(1, 2)).reshape(len(aux), -1)
    Xp = np.vstack([X[tgt].reshape(len(tgt), -1), Xa])
    yp = np.r_[d.target[tgt], d.target[aux]]
    sd = np.r_[-np.ones(len(tgt), int), np.ones(len(aux), int)]
    return Xp, yp, sd, X[val].reshape(len(val), -1), d.target[val]


@pytest.fixture(scope="module")
def rotated():
    return _pool(rotate=1)


@pytest.fixture(scope="module")
def plain():
    return _pool(rotate=0)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def _auroc_aux(sel, sd):
    return roc_auc_score(sd > 0, -sel.scores_)


# -- what the target changes ----------------------------------------------------


def test_target_aware_scores_find_the_harmful_auxiliary_samples(rotated):
    X, y, sd, Xv, yv = rotated
    by_domain = InfluenceSampleSelector(alpha=1e-2, cv=3, random_state=0,
                                        target_validation="cross_fit").fit(
        X, y, sample_domain=sd)
    whole = InfluenceSampleSelector(alpha=1e-2, random_state=0).fit(
        X, y, sample_domain=sd)
    by_val = InfluenceSampleSelector(alpha=1e-2, random_state=0).fit(X, y, Xv, yv)
    pool = InfluenceSampleSelector(alpha=1e-2, cv=3, random_state=0).fit(X, y)
    assert _auroc_aux(by_domain, sd) > 0.8
    assert _auroc_aux(whole, sd) > 0.8
    assert _auroc_aux(by_val, sd) > 0.8
    # cross-fitting on the pool judges samples by the pool's own distribution,
    # where the auxiliary majority looks normal: no better than chance
    assert _auroc_aux(pool, sd) < 0.65
    assert by_domain.influence_["mode"] == "target_cross_fit"
    assert whole.influence_["mode"] == "target_whole"
    assert by_val.influence_["mode"] == "validation_set"
    assert pool.influence_["mode"] == "cross_fit"


def test_only_auxiliary_samples_are_removed_by_default(rotated):
    X, y, sd, _, _ = rotated
    sel = InfluenceSampleSelector(alpha=1e-2, cv=3, threshold=np.inf,
                                  random_state=0).fit(X, y, sample_domain=sd)
    assert sel.support_[sd < 0].all()
    assert sel.n_removed_ > 0
    everything = InfluenceSampleSelector(alpha=1e-2, cv=3, threshold=np.inf,
                                         remove_from="all", random_state=0)
    everything.fit(X, y, sample_domain=sd)
    assert not everything.support_[sd < 0].all()


@pytest.mark.parametrize(
    "make",
    [
        lambda: LossSelector(cv=3, max_remove=0.3, random_state=0),
        lambda: RandomSelector(max_remove=0.3, random_state=0),
        lambda: DomainClassifierSelector(cv=3, random_state=0),
    ],
    ids=["loss", "random", "domain"],
)
def test_baselines_take_sample_domain(rotated, make):
    X, y, sd, _, _ = rotated
    sel = make().fit(X, y, sample_domain=sd)
    assert sel.n_removed_ > 0
    assert sel.support_[sd < 0].all()
    X_kept, y_kept = make().fit_resample(X, y, sample_domain=sd)
    assert len(X_kept) == len(y_kept) == len(y) - sel.n_removed_


def test_domain_classifier_is_a_density_ratio(rotated):
    X, y, sd, Xv, yv = rotated
    sel = DomainClassifierSelector(cv=3, random_state=0).fit(X, y, sample_domain=sd)
    # rotated digits are easy to tell from upright ones
    assert _auroc_aux(sel, sd) > 0.95
    assert sel.target_proba_[sd < 0].mean() > sel.target_proba_[sd > 0].mean()
    # with X_val the target is the validation set; every training sample is a
    # candidate and the upright (target-like) ones score higher
    by_val = DomainClassifierSelector(cv=3, random_state=0).fit(X, y, Xv, yv)
    assert by_val.scores_[sd < 0].mean() > by_val.scores_[sd > 0].mean()


# -- how much to remove ----------------------------------------------------------


@pytest.mark.parametrize("rotate, expect_most", [(1, True), (0, False)],
                         ids=["harmful_auxiliary", "helpful_auxiliary"])
@pytest.mark.parametrize("threshold", [np.inf, None], ids=["inf", "none"])
def test_auto_count_follows_the_target(rotate, expect_most, threshold):
    """Every auxiliary sample is a candidate (no threshold); the target loss
    of refitted heads decides how many go: nearly all harmful (rotated) ones,
    few of the helpful (plain) ones."""
    X, y, sd, _, _ = _pool(rotate=rotate)
    sel = InfluenceSampleSelector(alpha=1e-2, cv=3, threshold=threshold,
                                  max_remove="auto",
                                  random_state=0).fit(X, y, sample_domain=sd)
    search = sel.removal_search_
    assert sel.n_removed_ == search["chosen"]
    assert search["chosen"] in search["counts"]
    assert search["counts"].max() == (sd > 0).sum()
    if expect_most:
        assert sel.n_removed_ >= 0.8 * (sd > 0).sum()
    else:
        assert sel.n_removed_ <= 0.2 * (sd > 0).sum()


def test_auto_count_with_a_validation_set(rotated):
    X, y, sd, Xv, yv = rotated
    sel = InfluenceSampleSelector(alpha=1e-2, cv=3, max_remove="auto",
                                  random_state=0).fit(X, y, Xv, yv)
    n_candidates = int((sel.scores_ < 0).sum())
    assert sel.removal_search_["counts"].max() == n_candidates
    assert 0 <= sel.n_removed_ <= n_candidates


# -- errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "sample_domain, match",
    [
        (lambda n: -np.ones(n, int), r"marks every sample as target"),
        (lambda n: np.ones(n, int), r"no target sample"),
        (lambda n: np.r_[0, -np.ones(n - 1, int)], r"contains 0"),
        (lambda n: -np.ones(n - 1, int), r"inconsistent numbers of samples"),
        (lambda n: np.full(n, "a"), r"must hold integers"),
    ],
    ids=["all_target", "no_target", "zero", "length", "strings"],
)
def test_bad_sample_domain(rotated, sample_domain, match):
    X, y, _, _, _ = rotated
    sel = InfluenceSampleSelector(cv=3)
    with pytest.raises(ValueError, match=match):
        sel.fit(X, y, sample_domain=sample_domain(len(y)))
    assert not hasattr(sel, "scores_")


@pytest.mark.parametrize("per_class", [1, 2])
def test_a_tiny_target_is_cross_fitted_with_fewer_folds(rotated, per_class):
    """Two (or one) target samples per class: fewer (or unstratified) folds,
    with a warning, instead of an error; every auxiliary sample is scored."""
    X, y, sd, _, _ = rotated
    few = sd.copy()
    for c in np.unique(y):
        few[np.flatnonzero((sd < 0) & (y == c))[per_class:]] = 1
    folds = "2 stratified folds" if per_class == 2 else "unstratified folds"
    with pytest.warns(UserWarning, match=rf"target sample\(s\), fewer than cv=3: "
                                         rf"cross-fitting uses {folds}"):
        sel = InfluenceSampleSelector(cv=3, random_state=0,
                                      target_validation="cross_fit").fit(
            X, y, sample_domain=few)
    assert np.isfinite(sel.scores_).all()
    assert sel.influence_["n_folds"] == (2 if per_class == 2 else 3)
    # the default validates on the whole target: no folds to make
    whole = InfluenceSampleSelector(random_state=0).fit(X, y, sample_domain=few)
    assert whole.influence_["mode"] == "target_whole" and whole.influence_["n_folds"] == 0
    assert np.isfinite(whole.scores_).all()


def test_class_without_target_samples(rotated):
    X, y, sd, _, _ = rotated
    gone = sd.copy()
    gone[(sd < 0) & (y == y[0])] = 1  # one class has auxiliary samples only
    with pytest.raises(ValueError, match=rf"Class\(es\) \[{y[0]}\] have no target sample"):
        InfluenceSampleSelector(cv=3).fit(X, y, sample_domain=gone)


def test_scorer_needs_routing():
    with pytest.raises(RuntimeError, match="enable_metadata_routing"):
        make_target_scorer()


# -- through the classifier, a Pipeline and a search -----------------------------


def mlp():
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


class RecordingSelector:
    """Keeps everything and records what it was given."""

    def __init__(self):
        self.seen = None

    def fit_resample(self, X, y, X_val=None, y_val=None, *, sample_domain=None):
        self.seen = dict(n=len(X), X_val=X_val, y_val=y_val, sample_domain=sample_domain)
        return X, y


def _clf(**kw):
    params = dict(max_epochs=2, lr=1e-2, batch_size=32, device="cpu", random_state=0)
    params.update(kw)
    return TransferClassifier(mlp, **params)


def test_classifier_hands_the_target_to_its_selector(rotated):
    X, y, sd, Xv, yv = rotated
    clf = _clf(selector=RecordingSelector()).fit(X, y, X_val=Xv, y_val=yv, sample_domain=sd)
    seen = clf.selector_.seen
    assert seen["n"] == len(y)
    np.testing.assert_array_equal(seen["sample_domain"], sd)
    np.testing.assert_array_equal(seen["y_val"], yv)
    assert seen["X_val"].shape == Xv.shape


def test_classifier_names_a_selector_that_cannot_take_the_target(rotated):
    X, y, sd, _, _ = rotated

    class Plain:
        def fit_resample(self, X, y):
            return X, y

    with pytest.raises(TypeError, match=r"Plain.fit_resample does not accept "
                                        r"\['sample_domain'\]"):
        _clf(selector=Plain()).fit(X, y, sample_domain=sd)


def test_early_stopping_validates_on_the_target(rotated):
    X, y, _, Xv, yv = rotated
    clf = _clf(early_stopping=True, max_epochs=3).fit(X, y, X_val=Xv, y_val=yv)
    history = clf.net_.history
    assert "valid_loss" in history[-1]
    # every training sample was trained on: nothing held out
    assert history[-1]["batches"][0]["train_batch_size"] <= 32
    assert sum(b["train_batch_size"] for b in history[-1]["batches"]
               if "train_batch_size" in b) == len(y)


def test_grid_search_routes_sample_domain_and_scores_the_target(rotated):
    X, y, sd, _, _ = rotated
    with sklearn.config_context(enable_metadata_routing=True):
        clf = _clf(selector=InfluenceSampleSelector(cv=2, random_state=0))
        clf.set_fit_request(sample_domain=True)
        pipe = Pipeline([("id", FunctionTransformer()), ("clf", clf)])
        search = GridSearchCV(
            pipe, {"clf__selector__threshold": [0.0, np.inf]},
            # shuffled, so that every training part holds target samples
            cv=StratifiedKFold(2, shuffle=True, random_state=0),
            scoring=make_target_scorer(), error_score="raise",
        )
        search.fit(X, y, sample_domain=sd)
        best = search.best_estimator_["clf"]
        assert best.selector_.influence_["mode"] == "target_whole"
        # the splitter split sample_domain with X: the refit saw all of it
        assert len(best.selector_.scores_) == len(y)
        assert best.selector_.support_[sd < 0].all()
        # the scorer saw only the target part of each test fold
        scorer = make_target_scorer()
        target_only = scorer(search, X[sd < 0], y[sd < 0],
                             sample_domain=sd[sd < 0])
        mixed = scorer(search, X, y, sample_domain=sd)
        assert mixed == pytest.approx(target_only)


# -- defects a search over selectors met -----------------------------------------


def test_domain_scores_are_finite_on_a_pool_it_separates_perfectly():
    """float32 features, a pool the domain classifier separates perfectly: the
    probabilities round to exactly 0 or 1 and their log odds were infinite."""
    rng = np.random.RandomState(0)
    n_t, n_a = 60, 240
    y = rng.randint(0, 3, n_t + n_a)
    X = rng.randn(n_t + n_a, 512).astype(np.float32)
    X[n_t:] += 30.0
    sd = np.r_[np.full(n_t, -1), np.full(n_a, 1)]
    sel = DomainClassifierSelector(random_state=0).fit(X, y, sample_domain=sd)
    assert np.isfinite(sel.scores_).all()
    assert (sel.scores_[:n_t].min() > sel.scores_[n_t:].max())
    assert sel.n_removed_ > 0.8 * n_a
    assert np.isfinite(sel.target_proba_).all()


@pytest.mark.parametrize("make", [
    lambda m: InfluenceSampleSelector(cv=2, random_state=0, memory=m),
    lambda m: LossSelector(cv=2, random_state=0, memory=m),
    lambda m: DomainClassifierSelector(cv=2, random_state=0, memory=m),
], ids=["influence", "loss", "domain"])
def test_a_cached_result_serves_every_removal_rule(rotated, tmp_path, make):
    """A search over the rule with memory: the candidates after the first read
    the cache, and "auto" finds what it needs there (no NaN, no error)."""
    X, y, sd, _, _ = rotated
    grid = {"selector__max_remove": [None, "auto"],
            "selector__threshold": [0.0, None],
            "selector__remove_from": ["auxiliary", "all"]}
    with sklearn.config_context(enable_metadata_routing=True):
        clf = _clf(selector=make(str(tmp_path))).set_fit_request(sample_domain=True)
        search = GridSearchCV(clf, grid, cv=StratifiedKFold(2, shuffle=True,
                                                            random_state=0),
                              scoring=make_target_scorer(), error_score="raise")
        search.fit(X, y, sample_domain=sd)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    # the same fits without the cache: the same decisions
    fresh = make(None).set_params(max_remove="auto", threshold=None)
    cached = make(str(tmp_path)).set_params(max_remove="auto", threshold=None)
    fresh.fit(X, y, sample_domain=sd)
    cached.fit(X, y, sample_domain=sd)
    np.testing.assert_array_equal(fresh.support_, cached.support_)
    assert fresh.removal_search_["chosen"] == cached.removal_search_["chosen"]

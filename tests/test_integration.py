"""Selectors inside TransferClassifier, Pipelines, GridSearchCV and imblearn."""

import numpy as np
import pytest
import torch.nn as nn
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from skitl import InfluenceSampleSelector, TransferClassifier
from skitl.selection import LossSelector, RandomSelector


def tiny_mlp():
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    rng = np.random.RandomState(0)
    idx = rng.permutation(len(y))[:300]
    return (X[idx] / 16.0).astype(np.float32), y[idx]


def _clf(**kw):
    params = dict(max_epochs=5, lr=1e-2, backbone_lr_scale=1.0, batch_size=32,
                  device="cpu", random_state=0)
    params.update(kw)
    return TransferClassifier(tiny_mlp, **params)


def test_classifier_prunes_with_its_own_network(digits):
    X, y = digits
    sel = InfluenceSampleSelector(max_remove=12, alpha=1e-2, random_state=0)
    clf = _clf(selector=sel).fit(X, y)
    assert clf.selector_ is not sel
    assert sel.__dict__.get("scores_") is None  # the user's selector is untouched
    assert clf.selector_.estimator is not None  # it analysed the classifier's network
    assert clf.selector_.n_removed_ == 12
    assert clf.selector_.network_ is not None
    assert clf.score(X, y) > 0.3


def test_plain_pipeline_with_preprocessing(digits):
    X, y = digits
    pipe = Pipeline([
        ("scale", StandardScaler()),
        ("to32", FunctionTransformer(lambda a: a.astype(np.float32))),
        ("clf", _clf(selector=RandomSelector(max_remove=10, random_state=0))),
    ])
    pipe.fit(X, y)
    assert pipe.named_steps["clf"].selector_.n_removed_ == 10
    assert pipe.predict(X).shape == y.shape


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_grid_search_over_selector_params(digits, n_jobs):
    X, y = digits
    grid = GridSearchCV(
        _clf(selector=InfluenceSampleSelector(alpha=1e-2, cv=3, random_state=0)),
        {"selector__max_remove": [0, 15], "selector__threshold": [0.0, -1e-4]},
        cv=2,
        n_jobs=n_jobs,
    )
    grid.fit(X, y)
    assert len(grid.cv_results_["params"]) == 4
    assert np.isfinite(grid.cv_results_["mean_test_score"]).all()
    removed = grid.best_estimator_.selector_.n_removed_
    assert removed <= grid.best_params_["selector__max_remove"]


def test_grid_search_over_strategy(digits):
    X, y = digits
    grid = GridSearchCV(
        _clf(selector=LossSelector(max_remove=5, alpha=1e-2, cv=3, random_state=0)),
        {"strategy": ["finetune", "linear_probe"]},
        cv=2,
    )
    grid.fit(X, y)
    assert set(grid.cv_results_["param_strategy"]) == {"finetune", "linear_probe"}


def test_imblearn_pipeline(digits):
    imblearn = pytest.importorskip("imblearn")
    X, y = digits
    pipe = imblearn.pipeline.Pipeline([
        ("select", InfluenceSampleSelector(alpha=1e-2, random_state=0)),
        ("lr", LogisticRegression(max_iter=500)),
    ])
    pipe.fit(X, y)
    sel = pipe.named_steps["select"]
    assert sel.n_removed_ > 0
    lr = pipe.named_steps["lr"]
    ref = LogisticRegression(max_iter=500).fit(X[sel.support_], y[sel.support_])
    np.testing.assert_allclose(lr.coef_, ref.coef_)
    # at predict time the sampler is skipped, every row gets a prediction
    assert pipe.predict(X).shape == y.shape

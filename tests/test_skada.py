"""skitl selectors as steps of skada's pipelines and searches (skitl.skada).

Tiny feature tables (skada's ``make_shifted_datasets``) and selectors without
a network, so the module runs in seconds. skada is imported inside
``config_context`` because its import switches scikit-learn's metadata
routing on for the whole process; each test turns it on for itself.
"""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import sklearn
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

with sklearn.config_context():
    skada = pytest.importorskip(
        "skada", reason='skada is an optional dependency (pip install "skitl[skada]")')
    from skada import DensityReweightAdapter, make_da_pipeline
    from skada.datasets import make_shifted_datasets
    from skada.metrics import ImportanceWeightedScorer, SupervisedScorer
    from skada.model_selection import (
        DomainShuffleSplit,
        SourceTargetShuffleSplit,
        StratifiedDomainShuffleSplit,
    )

from skitl.selection import (  # noqa: E402
    DomainClassifierSelector,
    InfluenceSampleSelector,
    RandomSelector,
    TargetOnlySelector,
)
from skitl.skada import SelectorAdapter, make_selection_pipeline  # noqa: E402


@pytest.fixture(autouse=True)
def _routing():
    with sklearn.config_context(enable_metadata_routing=True):
        yield


def _data(n=10, random_state=0):
    """skada's toy shift: ``8 n`` source rows (domain 1), ``8 n`` target rows (-2)."""
    with warnings.catch_warnings():
        # skada 0.6 passes its own deprecated return_X_y internally
        warnings.simplefilter("ignore", DeprecationWarning)
        X, y, sd = make_shifted_datasets(
            n_samples_source=n, n_samples_target=n, shift="covariate_shift", noise=0.3,
            random_state=random_state)
    y_true = y.copy()
    y_masked = np.where(sd < 0, -1, y)  # what skada's dataset.pack(mask_target_labels=True) gives
    return X, y_masked, sd, y_true


def _readonly(*arrays):
    out = []
    for a in arrays:
        a = np.array(a, copy=True)
        a.setflags(write=False)
        out.append(a)
    return out


def _adapter(pipe):
    return pipe[0].get_estimator()


def _estimator(pipe):
    return pipe[-1].get_estimator()


class RecordingSelector(RandomSelector):
    """A RandomSelector that keeps the labels and domains its fit received."""

    def fit(self, X, y, X_val=None, y_val=None, *, sample_domain=None):
        super().fit(X, y, X_val, y_val, sample_domain=sample_domain)
        self.seen_y = np.array(y, copy=True)
        self.seen_domain = None if sample_domain is None else np.array(sample_domain)
        return self


# ---------------------------------------------------------------------------
# the pipeline fits on the kept rows and predicts
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("selector", [InfluenceSampleSelector(random_state=0),
                                      DomainClassifierSelector(random_state=0)],
                         ids=["influence", "domain_classifier"])
def test_pipeline_fits_on_kept_rows_and_predicts(selector):
    X, y, sd, y_true = _data()
    pipe = make_da_pipeline(SelectorAdapter(selector), LogisticRegression())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pipe.fit(X, y, sample_domain=sd, target_labels=y_true)
    step = _adapter(pipe)
    assert step.n_removed_ > 0
    # under skada's masking the estimator trains on the source rows kept
    rows = step.support_ & (sd > 0)
    assert step.n_train_ == rows.sum()
    ref = LogisticRegression().fit(X[rows], y_true[rows])
    np.testing.assert_allclose(_estimator(pipe).coef_, ref.coef_, rtol=1e-6)
    # predict: every row passes through the adapter
    target = sd < 0
    pred = pipe.predict(X[target], sample_domain=sd[target])
    assert pred.shape == (target.sum(),)
    np.testing.assert_array_equal(pred, ref.predict(X[target]))
    assert 0.0 <= pipe.score(X[target], y_true[target], sample_domain=sd[target]) <= 1.0


def test_make_selection_pipeline_is_make_da_pipeline_with_the_adapter():
    pipe = make_selection_pipeline(RandomSelector(max_remove=3), LogisticRegression(),
                                   train_on_target=True)
    assert [name for name, _ in pipe.steps] == ["selectoradapter", "logisticregression"]
    assert pipe.get_params()["selectoradapter__train_on_target"] is True
    assert pipe.get_params()["selectoradapter__selector__max_remove"] == 3
    with pytest.raises(TypeError, match="at least one step"):
        make_selection_pipeline(RandomSelector())


def test_selector_sees_target_labels_under_masking():
    X, y, sd, y_true = _data()
    pipe = make_da_pipeline(SelectorAdapter(RecordingSelector(max_remove=5, random_state=0)),
                            LogisticRegression())
    y_given = y.copy()
    pipe.fit(X, y_given, sample_domain=sd, target_labels=y_true)
    seen = _adapter(pipe).selector_
    np.testing.assert_array_equal(seen.seen_y, y_true)
    np.testing.assert_array_equal(seen.seen_domain, sd)
    assert (y_given[sd < 0] == -1).all()  # what skada handed the step was masked


def test_sample_domain_inferred_from_masked_labels():
    """Without sample_domain, the masked rows are the target, as skada infers it."""
    X, y, sd, y_true = _data()
    pipe = make_da_pipeline(SelectorAdapter(RecordingSelector(max_remove=5, random_state=0)),
                            LogisticRegression())
    pipe.fit(X, y.copy(), target_labels=y_true)
    seen = _adapter(pipe).selector_
    np.testing.assert_array_equal(seen.seen_y, y_true)
    np.testing.assert_array_equal(seen.seen_domain < 0, sd < 0)


def test_train_on_target_trains_on_kept_target_rows():
    X, y, sd, y_true = _data()
    pipe = make_da_pipeline(
        SelectorAdapter(DomainClassifierSelector(random_state=0), train_on_target=True),
        StandardScaler(), LogisticRegression())
    pipe.fit(X, y.copy(), sample_domain=sd, target_labels=y_true)
    step = _adapter(pipe)
    kept = step.support_
    assert step.n_train_ == kept.sum() and (kept & (sd < 0)).sum() == (sd < 0).sum()
    ref = make_pipeline(StandardScaler(), LogisticRegression()).fit(X[kept], y_true[kept])
    np.testing.assert_allclose(_estimator(pipe).coef_, ref[-1].coef_, rtol=1e-6)


def test_sample_weight_follows_the_kept_rows():
    X, y, sd, y_true = _data()
    w = np.linspace(0.5, 2.0, len(y))
    pipe = make_da_pipeline(SelectorAdapter(RandomSelector(max_remove=20, random_state=0)),
                            LogisticRegression().set_fit_request(sample_weight=True))
    pipe.fit(X, y.copy(), sample_domain=sd, target_labels=y_true, sample_weight=w)
    rows = _adapter(pipe).support_ & (sd > 0)
    ref = LogisticRegression().fit(X[rows], y_true[rows], sample_weight=w[rows])
    np.testing.assert_allclose(_estimator(pipe).coef_, ref.coef_, rtol=1e-6)


def test_a_skada_adapter_after_the_selector():
    """The kept rows, with their sample_domain, go on to skada's own adapters."""
    X, y, sd, y_true = _data()
    pipe = make_da_pipeline(
        SelectorAdapter(RandomSelector(max_remove=20, random_state=0)),
        DensityReweightAdapter(),
        LogisticRegression().set_fit_request(sample_weight=True))
    pipe.fit(X, y.copy(), sample_domain=sd, target_labels=y_true)
    assert _estimator(pipe).classes_.tolist() == [0, 1]
    assert pipe.predict(X[sd < 0], sample_domain=sd[sd < 0]).shape == ((sd < 0).sum(),)


# ---------------------------------------------------------------------------
# searches with skada's splitters and scorers; clone
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("cv", [SourceTargetShuffleSplit(n_splits=2, random_state=0),
                                StratifiedDomainShuffleSplit(n_splits=2, random_state=0),
                                DomainShuffleSplit(n_splits=2, random_state=0)],
                         ids=lambda cv: type(cv).__name__)
@pytest.mark.parametrize("scoring", [SupervisedScorer, ImportanceWeightedScorer],
                         ids=lambda s: s.__name__)
def test_grid_search_with_skada_splitters_and_scorers(cv, scoring):
    X, y, sd, y_true = _data()
    pipe = make_da_pipeline(
        SelectorAdapter(InfluenceSampleSelector(random_state=0)),
        LogisticRegression().set_score_request(sample_weight=True))
    grid = {"selectoradapter__selector__threshold": [0.0, None],
            "selectoradapter__train_on_target": [False, True]}
    search = GridSearchCV(pipe, grid, cv=cv, scoring=scoring(), error_score="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # class floors on tiny folds
        search.fit(X, y.copy(), sample_domain=sd, target_labels=y_true)
    scores = search.cv_results_["mean_test_score"]
    assert scores.shape == (4,) and np.isfinite(scores).all()
    assert _estimator(search.best_estimator_).classes_.tolist() == [0, 1]


def test_clone_keeps_every_parameter():
    pipe = make_da_pipeline(
        SelectorAdapter(RandomSelector(max_remove=7, remove_from="all", random_state=3),
                        train_on_target=True),
        LogisticRegression(C=0.5))
    before, after = pipe.get_params(deep=True), clone(pipe).get_params(deep=True)
    assert before.keys() == after.keys()
    for name, value in before.items():
        if name == "steps" or hasattr(value, "get_params"):
            continue
        assert after[name] == value, name
    assert after["selectoradapter__train_on_target"] is True
    assert after["selectoradapter__selector__max_remove"] == 7
    adapter = SelectorAdapter(RandomSelector(max_remove=2), train_on_target=True)
    assert clone(adapter).get_params(deep=False).keys() == {"selector", "train_on_target"}
    assert clone(adapter).train_on_target is True


# ---------------------------------------------------------------------------
# the caller's arrays are never modified
# ---------------------------------------------------------------------------
def test_fit_transform_leaves_read_only_inputs_alone():
    X, y, sd, y_true = _data()
    w = np.ones(len(y))
    Xr, yr, sdr, tr, wr = _readonly(X, y, sd, y_true, w)
    step = SelectorAdapter(RandomSelector(max_remove=10, random_state=0), train_on_target=True)
    X_kept, y_kept, params = step.fit_transform(
        Xr, yr, sample_domain=sdr, target_labels=tr, sample_weight=wr)
    idx = step.sample_indices_
    np.testing.assert_array_equal(X_kept, X[idx])
    np.testing.assert_array_equal(y_kept, y_true[idx])
    assert sorted(params) == ["sample_domain", "sample_weight", "target_labels"]
    np.testing.assert_array_equal(params["sample_domain"], sd[idx])
    for given, original in zip((Xr, yr, sdr, tr, wr), (X, y, sd, y_true, w)):
        np.testing.assert_array_equal(given, original)
    # transform passes rows through at predict time
    assert step.transform(Xr) is Xr


def test_pipeline_leaves_caller_arrays_unchanged():
    X, y, sd, y_true = _data()
    Xr, sdr, tr = _readonly(X, sd, y_true)
    # skada's masking writes -1 into the y given to fit (in place): give it
    # y already masked, as skada's datasets do, and it stays as it was
    y_given = y.copy()
    pipe = make_da_pipeline(SelectorAdapter(DomainClassifierSelector(random_state=0)),
                            LogisticRegression())
    pipe.fit(Xr, y_given, sample_domain=sdr, target_labels=tr)
    np.testing.assert_array_equal(y_given, y)
    # masking off: nothing is written, so every array can be read-only
    Xr2, yr2, sdr2 = _readonly(X, y_true, sd)
    pipe = make_da_pipeline(SelectorAdapter(DomainClassifierSelector(random_state=0)),
                            LogisticRegression(), mask_target_labels=False)
    pipe.fit(Xr2, yr2, sample_domain=sdr2)
    for given, original in ((Xr, X), (sdr, sd), (tr, y_true), (Xr2, X), (yr2, y_true),
                            (sdr2, sd)):
        np.testing.assert_array_equal(given, original)


# ---------------------------------------------------------------------------
# the class floor is counted on the rows that stay in training
# ---------------------------------------------------------------------------
def _floor_data():
    """Source: 10 rows of class 0, 30 of class 1; target: 30 of each."""
    rng = np.random.RandomState(0)
    y_true = np.r_[np.zeros(10), np.ones(30), np.zeros(30), np.ones(30)].astype(int)
    sd = np.r_[np.full(40, 1), np.full(60, -2)]
    X = rng.randn(100, 3) + y_true[:, None]
    return X, np.where(sd < 0, -1, y_true), sd, y_true


def test_class_floor_counts_the_rows_that_stay_in_training():
    X, y, sd, y_true = _floor_data()
    pipe = make_da_pipeline(SelectorAdapter(RandomSelector(max_remove=40, random_state=0)),
                            LogisticRegression())
    with pytest.warns(UserWarning, match="put back 5 rows"):
        pipe.fit(X, y.copy(), sample_domain=sd, target_labels=y_true)
    step = _adapter(pipe)
    # counted on every row it saw (target included), the selector's own floor
    # let every source row go: the classifier would have had nothing
    assert not (step.selector_.support_ & (sd > 0)).any()
    # counted on the source rows that train: max(2, 10 %) of 10 and of 30
    assert step.n_restored_ == 5
    kept_source = y_true[step.support_ & (sd > 0)]
    assert np.bincount(kept_source).tolist() == [2, 3]
    assert _estimator(pipe).classes_.tolist() == [0, 1]


def test_class_floor_with_train_on_target_is_the_selectors():
    X, y, sd, y_true = _floor_data()
    step = SelectorAdapter(RandomSelector(max_remove=40, random_state=0), train_on_target=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        step.fit(X, y, sample_domain=sd, target_labels=y_true)
    assert step.n_restored_ == 0
    np.testing.assert_array_equal(step.support_, step.selector_.support_)


def test_target_only_selector_needs_train_on_target():
    X, y, sd, y_true = _data()
    with pytest.raises(ValueError, match="train_on_target=True"):
        SelectorAdapter(TargetOnlySelector()).fit(X, y, sample_domain=sd,
                                                  target_labels=y_true)
    pipe = make_da_pipeline(SelectorAdapter(TargetOnlySelector(), train_on_target=True),
                            LogisticRegression())
    pipe.fit(X, y.copy(), sample_domain=sd, target_labels=y_true)
    target = sd < 0
    ref = LogisticRegression().fit(X[target], y_true[target])
    np.testing.assert_allclose(_estimator(pipe).coef_, ref.coef_, rtol=1e-6)


# ---------------------------------------------------------------------------
# skada's pitfalls: clear errors
# ---------------------------------------------------------------------------
def test_masked_target_labels_without_target_labels_raise_clearly():
    """skada masks target labels before a step sees y: the adapter says what to pass."""
    X, y, sd, y_true = _data()
    pipe = make_da_pipeline(SelectorAdapter(InfluenceSampleSelector()), LogisticRegression())
    with pytest.raises(ValueError, match="target_labels=y_true"):
        pipe.fit(X, y_true.copy(), sample_domain=sd)


def test_target_labels_overwritten_in_place_raise_clearly():
    """skada writes -1 into the y it is given; the same array as target_labels is lost."""
    X, y, sd, y_true = _data()
    pipe = make_da_pipeline(SelectorAdapter(InfluenceSampleSelector()), LogisticRegression())
    y_both = y_true.copy()
    with pytest.raises(ValueError, match="overwrote its target entries in place"):
        pipe.fit(X, y_both, sample_domain=sd, target_labels=y_both)


def test_mask_target_labels_false_does_not_survive_a_search():
    """skada's Shared.get_params leaves mask_target_labels out, so clone masks again."""
    X, y, sd, y_true = _data()
    pipe = make_da_pipeline(SelectorAdapter(RandomSelector(max_remove=5)),
                            LogisticRegression().set_score_request(sample_weight=True),
                            mask_target_labels=False)
    search = GridSearchCV(pipe, {"selectoradapter__selector__max_remove": [2, 5]},
                          cv=SourceTargetShuffleSplit(n_splits=2, random_state=0),
                          scoring=ImportanceWeightedScorer(), error_score="raise")
    if clone(pipe)[0].mask_target_labels:  # skada 0.6: the setting is lost
        # y with its target labels, as masking off suggests: they arrive masked
        with pytest.raises(ValueError, match="GridSearchCV's clone"):
            search.fit(X, y_true.copy(), sample_domain=sd)
    # routing target_labels works whatever the setting
    search.fit(X, y.copy(), sample_domain=sd, target_labels=y_true)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()


def test_supervised_scorer_finds_the_target_from_masked_y():
    """skada's SupervisedScorer is not routed sample_domain (its second
    set_score_request call replaces the first); it takes the rows whose y is
    -1 as the target, so a search scored with it needs y masked."""
    X, y, sd, y_true = _data()
    pipe = make_da_pipeline(SelectorAdapter(RandomSelector(max_remove=5, random_state=0)),
                            LogisticRegression())
    search = GridSearchCV(pipe, {"selectoradapter__selector__max_remove": [2, 5]},
                          cv=SourceTargetShuffleSplit(n_splits=2, random_state=0),
                          scoring=SupervisedScorer(), error_score="raise")
    search.fit(X, y, sample_domain=sd, target_labels=y_true)
    masked_scores = search.cv_results_["mean_test_score"]
    # asking for sample_domain explicitly gives the same scores
    scorer = SupervisedScorer().set_score_request(sample_domain=True, target_labels=True)
    search.set_params(scoring=scorer).fit(X, y, sample_domain=sd, target_labels=y_true)
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], masked_scores)


def test_adapter_input_errors():
    X, y, sd, y_true = _data()
    step = SelectorAdapter(RandomSelector(max_remove=2))
    with pytest.raises(ValueError, match="requires y"):
        step.fit(X)
    y_bad = y_true.copy()
    y_bad[0] = -1  # a source row (sd == 1) masked
    with pytest.raises(ValueError, match="source rows have the masked label"):
        step.fit(X, y_bad, sample_domain=sd)
    with pytest.raises(ValueError):
        step.fit(X, y, sample_domain=sd[:-1], target_labels=y_true)
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        SelectorAdapter().transform(X)


def test_import_does_not_need_skada():
    """``import skitl.skada`` leaves skada alone; using the pipeline helper
    without it names the install command."""
    code = (
        "import sys\n"
        "import skitl.skada\n"
        "assert 'skada' not in sys.modules, 'skada imported eagerly'\n"
        "sys.modules['skada'] = None\n"
        "try:\n"
        "    skitl.skada.make_selection_pipeline(None, object())\n"
        "except ImportError as exc:\n"
        "    assert 'pip install \"skitl[skada]\"' in str(exc), exc\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]

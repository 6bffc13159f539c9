"""Property tests (hypothesis) of the selector invariants.

For any scores, labels and settings:

- the kept rows are a subset of the input, in their original order;
- ``max_remove`` is honoured;
- a higher ``threshold`` never keeps more samples;
- no class disappears (and none falls below its floor);
- only removal candidates are removed, the most harmful of a class first.

They are checked on :func:`skitl.selection.removal_mask` directly (cheap, many
examples) and through ``fit_resample`` of real selectors on small generated
data sets (fewer examples: each one fits heads).
"""

import warnings

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skitl.selection import (
    InfluenceSampleSelector,
    LossSelector,
    RandomSelector,
    removal_mask,
)
from skitl.selection._base import MIN_CLASS_FRACTION, MIN_SAMPLES_PER_CLASS

#: examples per property: removal_mask is pure numpy; the selectors fit heads.
MASK_EXAMPLES = 300
SELECTOR_EXAMPLES = 100

MASK_SETTINGS = settings(max_examples=MASK_EXAMPLES, deadline=None)
SELECTOR_SETTINGS = settings(
    max_examples=SELECTOR_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _floor(count):
    return min(count, max(MIN_SAMPLES_PER_CLASS, int(np.ceil(MIN_CLASS_FRACTION * count))))


# ---------------------------------------------------------------------------
# removal_mask on arbitrary scores
# ---------------------------------------------------------------------------

# few distinct score values on purpose: ties and a threshold that hits a score
# exactly are where ordering rules break.
_score = st.one_of(
    st.sampled_from([-1.0, -0.5, 0.0, 0.5, 1.0]),
    # no subnormals: a compiled dependency switches the FPU to flush-to-zero,
    # and hypothesis then refuses to generate them (FloatingPointError).
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, allow_subnormal=False),
)


@st.composite
def problems(draw):
    n = draw(st.integers(1, 60))
    k = draw(st.integers(1, 4))
    y = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    scores = np.array(draw(st.lists(_score, min_size=n, max_size=n)))
    max_remove = draw(st.one_of(st.none(), st.integers(0, n + 5)))
    t1 = draw(_score)
    t2 = draw(_score)
    return scores, y, max_remove, min(t1, t2), max(t1, t2)


def _check_mask(remove, scores, y, candidates, max_remove):
    assert remove.dtype == bool and remove.shape == scores.shape
    # only candidates are removed
    assert not (remove & ~candidates).any()
    # max_remove honoured
    if max_remove is not None:
        assert remove.sum() <= max_remove
    # no class disappears, none drops below its floor
    for c in np.unique(y):
        n_c = (y == c).sum()
        kept_c = ((y == c) & ~remove).sum()
        assert kept_c >= 1
        assert kept_c >= _floor(n_c)
    # most harmful first within a class: a kept candidate never scores lower
    # than a removed sample of its class
    for c in np.unique(y):
        rem = scores[(y == c) & remove]
        kept_cand = scores[(y == c) & candidates & ~remove]
        if len(rem) and len(kept_cand):
            assert kept_cand.min() >= rem.max()


@MASK_SETTINGS
@given(problems())
def test_removal_mask_invariants(problem):
    scores, y, max_remove, t1, _ = problem
    candidates = scores < t1
    remove, protected = removal_mask(scores, y, candidates=candidates, max_remove=max_remove)
    _check_mask(remove, scores, y, candidates, max_remove)
    # kept indices are the complement, ascending (original order)
    kept = np.flatnonzero(~remove)
    assert np.all(np.diff(kept) > 0)
    assert len(kept) + remove.sum() == len(y)
    # protected counts only candidates the floor saved
    assert sum(protected.values()) <= (candidates & ~remove).sum()


@MASK_SETTINGS
@given(problems())
def test_removal_mask_higher_threshold_never_keeps_more(problem):
    scores, y, max_remove, t1, t2 = problem
    low, _ = removal_mask(scores, y, candidates=scores < t1, max_remove=max_remove)
    high, _ = removal_mask(scores, y, candidates=scores < t2, max_remove=max_remove)
    assert (~high).sum() <= (~low).sum()
    # ... and what the lower threshold removes, the higher one removes too
    assert not (low & ~high).any()


@MASK_SETTINGS
@given(problems())
def test_removal_mask_is_deterministic_and_order_free(problem):
    """Same input, same mask; permuting the samples permutes the mask when the
    scores are distinct (ties are broken by index)."""
    scores, y, max_remove, t1, _ = problem
    cand = scores < t1
    a, _ = removal_mask(scores, y, candidates=cand, max_remove=max_remove)
    b, _ = removal_mask(scores.copy(), y.copy(), candidates=cand.copy(), max_remove=max_remove)
    np.testing.assert_array_equal(a, b)
    if len(np.unique(scores)) == len(scores):
        perm = np.random.RandomState(len(scores)).permutation(len(scores))
        c, _ = removal_mask(scores[perm], y[perm], candidates=cand[perm], max_remove=max_remove)
        np.testing.assert_array_equal(c, a[perm])


# ---------------------------------------------------------------------------
# Real selectors through fit_resample
# ---------------------------------------------------------------------------


@st.composite
def datasets(draw, min_per_class=3):
    k = draw(st.integers(2, 3))
    per_class = draw(
        st.lists(st.integers(min_per_class, 12), min_size=k, max_size=k)
    )
    d = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**16))
    noise = draw(st.sampled_from([0.0, 0.2, 0.4]))
    rng = np.random.RandomState(seed)
    y = np.repeat(np.arange(k), per_class)
    rng.shuffle(y)
    X = (2.0 * rng.randn(k, d)[y] + rng.randn(len(y), d)).astype(np.float32)
    flip = rng.rand(len(y)) < noise
    y_noisy = np.where(flip, (y + 1) % k, y)
    if len(np.unique(y_noisy)) < k or np.bincount(y_noisy).min() < min_per_class:
        y_noisy = y
    # string labels: the selectors must map them back, in the input's order
    labels = np.array(["ant", "bee", "cat"])[y_noisy]
    return X, labels, seed


def _fit_resample(selector, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # class-floor warnings
        return selector.fit_resample(X, y)


def _check_resample(selector, X, y, X_kept, y_kept, max_remove=None):
    idx = selector.sample_indices_
    # a subset, in the original order
    assert np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(X_kept, X[idx])
    np.testing.assert_array_equal(y_kept, y[idx])
    np.testing.assert_array_equal(selector.support_, np.isin(np.arange(len(y)), idx))
    assert selector.n_removed_ == len(y) - len(idx)
    # max_remove honoured
    if max_remove is not None:
        limit = max_remove if isinstance(max_remove, int) else int(np.floor(max_remove * len(y)))
        assert selector.n_removed_ <= limit
    # no class disappears
    assert set(y_kept) == set(y)
    for c in np.unique(y):
        assert (y_kept == c).sum() >= _floor((y == c).sum())
    assert np.isfinite(selector.scores_).all()


_max_remove = st.one_of(st.none(), st.integers(0, 10), st.sampled_from([0.0, 0.1, 0.5, 0.9]))
_thresholds = st.tuples(
    st.sampled_from([-np.inf, -1e-3, -1e-5, 0.0, 1e-5, 1e-3, np.inf]),
    st.sampled_from([-1e-3, 0.0, 1e-4, 1e-2]),
)


@SELECTOR_SETTINGS
@given(datasets(), _max_remove, _thresholds)
def test_influence_selector_invariants(data, max_remove, thresholds):
    X, y, seed = data
    low = thresholds[0]
    high = low + abs(thresholds[1]) if np.isfinite(low) else low
    kw = dict(cv=3, max_remove=max_remove, random_state=seed, alpha=1e-2)
    sel_low = InfluenceSampleSelector(threshold=low, **kw)
    X_kept, y_kept = _fit_resample(sel_low, X, y)
    _check_resample(sel_low, X, y, X_kept, y_kept, max_remove)
    sel_high = InfluenceSampleSelector(threshold=high, **kw)
    X_kept2, y_kept2 = _fit_resample(sel_high, X, y)
    _check_resample(sel_high, X, y, X_kept2, y_kept2, max_remove)
    # same seed, same scores; the higher threshold never keeps more
    np.testing.assert_array_equal(sel_low.scores_, sel_high.scores_)
    assert len(y_kept2) <= len(y_kept)
    assert not (sel_high.support_ & ~sel_low.support_).any()


@SELECTOR_SETTINGS
@given(datasets(), _max_remove, st.sampled_from([None, -2.0, -0.5, -0.1]))
def test_loss_selector_invariants(data, max_remove, threshold):
    X, y, seed = data
    kw = dict(cv=3, max_remove=max_remove, random_state=seed)
    sel = LossSelector(threshold=threshold, **kw)
    X_kept, y_kept = _fit_resample(sel, X, y)
    _check_resample(sel, X, y, X_kept, y_kept, max_remove)
    if threshold is not None:
        higher = LossSelector(threshold=threshold + 0.05, **kw)
        _, y_kept2 = _fit_resample(higher, X, y)
        assert len(y_kept2) <= len(y_kept)


@SELECTOR_SETTINGS
@given(datasets(min_per_class=1), st.one_of(st.integers(0, 40), st.sampled_from([0.0, 0.3, 0.99])))
def test_random_selector_invariants(data, max_remove):
    X, y, seed = data
    sel = RandomSelector(max_remove=max_remove, random_state=seed)
    X_kept, y_kept = _fit_resample(sel, X, y)
    _check_resample(sel, X, y, X_kept, y_kept, max_remove)

"""Robustness: bad input, numerical faults, interruption and reproducibility.

Every public entry point is fed bad input and must answer with an error that
names the problem; odd but valid input must give the same result as the
plain float32 array; numerical corner cases give finite scores or a clear
error; a ``KeyboardInterrupt`` in ``fit`` leaves nothing that claims to be
fitted and never touches the user's objects; fits are repeatable and survive a
pickle round trip into a fresh Python process. docs/robustness.md tabulates
the cases.
"""

import hashlib
import os
import pickle
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
import torch.nn as nn
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from skitl import InfluenceSampleSelector, TransferClassifier
from skitl.influence import (
    extract_features,
    fit_head,
    head_influence,
    influence_scores,
)
from skitl.selection import (
    ConfidentLearningSelector,
    LossSelector,
    RandomSelector,
)

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------
# Small data and networks
# ---------------------------------------------------------------------------


def _blobs(n=60, d=4, k=3, seed=0):
    """Three well separated Gaussian blobs in 4-D, float32, balanced."""
    rng = np.random.RandomState(seed)
    y = np.arange(n) % k
    centers = 3.0 * rng.randn(k, d)
    X = (centers[y] + rng.randn(n, d)).astype(np.float32)
    return X, y


@pytest.fixture(scope="module")
def blobs():
    return _blobs()


@pytest.fixture(scope="module")
def digit_images():
    """200 digits as uint8 images (N, 1, 8, 8) and their labels."""
    d = load_digits()
    X = np.round(d.images[:200] * (255 / 16)).astype(np.uint8)[:, None]
    return X, d.target[:200]


def mlp4():
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()
        )
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(self.body(x))


class InterruptingMLP(nn.Module):
    """An MLP whose forward raises KeyboardInterrupt on its Nth call."""

    def __init__(self, interrupt_at=3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 16), nn.ReLU())
        self.fc = nn.Linear(16, 3)
        self.interrupt_at = interrupt_at
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt("simulated Ctrl-C")
        return self.fc(self.body(x))


def _clf(module=mlp4, **kwargs):
    params = dict(max_epochs=2, lr=1e-2, batch_size=16, device="cpu", random_state=0)
    params.update(kwargs)
    return TransferClassifier(module, **params)


def _digest(a):
    """Hash of an array's bytes, shape, dtype and writeability."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    h = hashlib.sha256(np.ascontiguousarray(a).tobytes())
    h.update(f"{a.shape}{a.dtype}{a.flags.writeable}".encode())
    return h.hexdigest()


def _module_digest(net):
    h = hashlib.sha256()
    for k, v in net.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    h.update(str([p.requires_grad for p in net.parameters()]).encode())
    h.update(str([m.training for m in net.modules()]).encode())
    return h.hexdigest()


def _file_digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _assert_not_fitted(est):
    with pytest.raises(NotFittedError):
        check_is_fitted(est)
    leftover = [k for k in vars(est) if k.endswith("_") and not k.startswith("__")]
    assert leftover == []


# ---------------------------------------------------------------------------
# 1. Bad input: TransferClassifier
# ---------------------------------------------------------------------------

_X, _Y = _blobs()
_NAN = _X.copy()
_NAN[3, 1] = np.nan
_INF = _X.copy()
_INF[5, 0] = -np.inf

CLASSIFIER_FIT_CASES = {
    "nan_in_X": (_NAN, _Y, ValueError, r"Input X contains NaN"),
    "inf_in_X": (_INF, _Y, ValueError, r"Input X contains infinity"),
    "X_1d": (_X[:, 0], _Y, ValueError, r"Expected 2D array, got 1D"),
    "X_0d": (np.float32(1.0), _Y, ValueError, r"Expected 2D array, got scalar"),
    "lengths_differ": (_X, _Y[:-1], ValueError, r"inconsistent lengths: 60 .* 59"),
    "one_class": (_X, np.zeros(60, int), ValueError, r"1 class"),
    "empty_X": (_X[:0], _Y[:0], ValueError, r"0 sample\(s\)"),
    "no_features": (_X[:, :0], _Y, ValueError, r"0 feature"),
    "object_strings": (
        np.full((60, 4), "a", dtype=object),
        _Y,
        ValueError,
        r"could not convert string to float",
    ),
    "object_dicts": (
        np.array([[{"a": 1}] * 4] * 60, dtype=object),
        _Y,
        TypeError,
        r"must be a string or a real number, not 'dict'",
    ),
    "unicode_dtype": (_X.astype(str), _Y, ValueError, r"not compatible with arrays of bytes/strings"),
    "complex": (_X.astype(complex), _Y, ValueError, r"Complex data"),
    "sparse": (sp.csr_matrix(_X), _Y, TypeError, r"Sparse data was passed for X"),
    "nan_label": (_X, np.r_[np.nan, _Y[1:]], ValueError, r"Input y contains NaN"),
    "continuous_y": (_X, np.linspace(0, 1, 60), ValueError, r"continuous"),
    "y_2d": (_X, np.c_[_Y, _Y], ValueError, r"y should be a 1d array"),
    "y_none": (_X, None, ValueError, r"requires y"),
    "y_empty": (_X, _Y[:0], ValueError, r"y is empty"),
}


@pytest.mark.parametrize(
    "X, y, exc, match",
    list(CLASSIFIER_FIT_CASES.values()),
    ids=list(CLASSIFIER_FIT_CASES),
)
def test_classifier_fit_bad_input(X, y, exc, match):
    clf = _clf(max_epochs=1)
    with pytest.raises(exc, match=match):
        clf.fit(X, y)
    _assert_not_fitted(clf)


@pytest.fixture(scope="module")
def fitted_mlp(blobs):
    X, y = blobs
    return _clf().fit(X, y)


def _predict_cases():
    X, _ = _blobs()
    nan = X[:5].copy()
    nan[0, 0] = np.nan
    return {
        "other_n_features": (X[:, :3], ValueError, r"3 features.*expecting 4"),
        "other_ndim": (X[:, :, None], ValueError, r"3 dimensions.*2-D input"),
        "nan": (nan, ValueError, r"Input X contains NaN"),
        "empty": (X[:0], ValueError, r"0 sample\(s\)"),
        "1d": (X[0], ValueError, r"Expected 2D array"),
        "strings": (X.astype(str), ValueError, r"not compatible with arrays of bytes/strings"),
    }


@pytest.mark.parametrize("method", ["predict", "predict_proba"])
@pytest.mark.parametrize(
    "case", list(_predict_cases()), ids=list(_predict_cases())
)
def test_classifier_predict_bad_input(fitted_mlp, method, case):
    X, exc, match = _predict_cases()[case]
    with pytest.raises(exc, match=match):
        getattr(fitted_mlp, method)(X)


def test_classifier_unfitted_predict():
    X, _ = _blobs()
    with pytest.raises(NotFittedError):
        _clf().predict(X)


def test_classifier_image_channels_mismatch(digit_images):
    X, y = digit_images
    clf = _clf(TinyCNN, max_epochs=1).fit(X[:60], y[:60])
    with pytest.raises(ValueError, match=r"X has 3 features, but TransferClassifier is "
                       r"expecting 1 features"):
        clf.predict(np.repeat(X[:5], 3, axis=1))
    # another spatial size reaches the network: the error names both shapes
    with pytest.raises(ValueError, match=r"per-sample shape \(1, 16, 16\).*fitted on "
                       r"per-sample shape \(1, 8, 8\)"):
        clf.predict(np.repeat(np.repeat(X[:5], 2, axis=2), 2, axis=3))
    with pytest.raises(ValueError, match=r"2 dimensions.*fitted on 4-D"):
        clf.predict(X[:5].reshape(5, -1))


def test_classifier_unseen_labels_count_as_errors(fitted_mlp, blobs):
    """Labels never seen in fit: predict answers with known classes only and
    score counts them as errors, as scikit-learn classifiers do (a rare class
    absent from a training fold must not crash cross-validation)."""
    X, y = blobs
    pred = fitted_mlp.predict(X)
    assert set(pred) <= set(fitted_mlp.classes_)
    full = fitted_mlp.score(X, y)
    assert full > 0.8  # known labels still score
    y_new = np.where(y == 2, 7, y)
    expected = np.mean(pred == y_new)
    assert fitted_mlp.score(X, y_new) == pytest.approx(expected)
    assert fitted_mlp.score(X, y_new) < full


def test_cross_validation_with_a_rare_class_scores(blobs):
    from sklearn.model_selection import KFold, cross_val_score

    X, y = blobs
    y = y.copy()
    y[-1] = 3  # one sample of class 3: some training folds never see it
    scores = cross_val_score(_clf(), X, y, cv=KFold(3), error_score="raise")
    assert np.isfinite(scores).all()


# ---------------------------------------------------------------------------
# 1b. Odd but valid input: same answer as the plain float32 array
# ---------------------------------------------------------------------------


def test_classifier_accepts_uint8_and_float64_images(digit_images):
    X8, y = digit_images
    X32 = X8.astype(np.float32) / np.float32(255)
    ref = _clf(TinyCNN, max_epochs=1).fit(X32, y).predict_proba(X32)
    for X in (X8, X32.astype(np.float64)):
        got = _clf(TinyCNN, max_epochs=1).fit(X, y).predict_proba(X)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_classifier_accepts_non_contiguous_images(digit_images):
    X8, y = digit_images
    X = X8.astype(np.float32) / np.float32(255)
    flipped = X[:, :, ::-1]  # negative strides
    assert not flipped.flags.c_contiguous
    before = _digest(flipped)
    ref = _clf(TinyCNN, max_epochs=1).fit(np.ascontiguousarray(flipped), y)
    got = _clf(TinyCNN, max_epochs=1).fit(flipped, y)
    np.testing.assert_array_equal(got.predict_proba(flipped), ref.predict_proba(flipped))
    assert _digest(flipped) == before


@pytest.mark.parametrize("kind", ["transposed", "strided", "pandas", "torch"])
def test_classifier_accepts_2d_variants(blobs, kind):
    X, y = blobs
    ref = _clf().fit(X, y)
    if kind == "transposed":
        Xv, yv = np.ascontiguousarray(X.T).T, y  # F-ordered view
        assert not Xv.flags.c_contiguous
    elif kind == "strided":
        big = np.zeros((len(X), 8), np.float32)
        big[:, ::2] = X
        Xv, yv = big[:, ::2], y
        assert not Xv.flags.c_contiguous
    elif kind == "pandas":
        Xv = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
        yv = pd.Series(y, name="label")
    else:
        Xv, yv = torch.from_numpy(X.copy()), torch.from_numpy(y.copy())
    before = _digest(np.asarray(Xv))
    clf = _clf().fit(Xv, yv)
    np.testing.assert_array_equal(clf.predict_proba(Xv), ref.predict_proba(X))
    np.testing.assert_array_equal(clf.predict(Xv), ref.predict(X))
    assert clf.score(Xv, yv) == ref.score(X, y)
    assert _digest(np.asarray(Xv)) == before
    if kind == "pandas":
        np.testing.assert_array_equal(clf.feature_names_in_, Xv.columns)


# ---------------------------------------------------------------------------
# 4. Interruption: TransferClassifier
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["forward", "skorch_epoch_hook"])
def test_classifier_interrupt_unfits_fresh_estimator(blobs, monkeypatch, where):
    X, y = blobs
    if where == "forward":
        clf = _clf(lambda: InterruptingMLP(interrupt_at=3), max_epochs=3)
    else:  # raised from skorch's on_epoch_end notification, after epoch 1
        from skitl.classification._transfer import _TransferNet

        def on_epoch_end(self, net, **kwargs):
            raise KeyboardInterrupt("simulated Ctrl-C after an epoch")

        monkeypatch.setattr(_TransferNet, "on_epoch_end", on_epoch_end)
        clf = _clf(max_epochs=3)
    with pytest.raises(KeyboardInterrupt, match="simulated"):
        clf.fit(X, y)
    _assert_not_fitted(clf)
    with pytest.raises(NotFittedError):
        clf.predict(X)


def test_classifier_interrupt_resets_previous_fit(blobs):
    """Decision: an interrupted refit resets the estimator (like a failed one);
    it never keeps a half-trained network that claims to be fitted."""
    X, y = blobs
    clf = _clf(max_epochs=1).fit(X, y)
    check_is_fitted(clf)
    clf.set_params(module=lambda: InterruptingMLP(interrupt_at=3))
    with pytest.raises(KeyboardInterrupt):
        clf.fit(X, y)
    _assert_not_fitted(clf)
    # ... and a later fit works normally
    clf.set_params(module=mlp4).fit(X, y)
    check_is_fitted(clf)


def test_classifier_interrupt_never_touches_user_objects(blobs, tmp_path):
    X, y = blobs
    X, y = X.copy(), y.copy()
    user_net = InterruptingMLP(interrupt_at=4)
    source = InterruptingMLP()
    torch.manual_seed(1)
    for p in source.parameters():
        nn.init.normal_(p)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    digests = (_module_digest(user_net), _file_digest(path), _digest(X), _digest(y))
    clf = _clf(user_net, weights=str(path), max_epochs=3)
    with pytest.raises(KeyboardInterrupt):
        clf.fit(X, y)
    _assert_not_fitted(clf)
    assert user_net.calls == 0  # skitl trained its own copy
    assert clf.module is user_net
    assert (
        _module_digest(user_net),
        _file_digest(path),
        _digest(X),
        _digest(y),
    ) == digests


def test_classifier_interrupt_during_selection(blobs, monkeypatch):
    import skitl.influence._crossfit as influence_mod

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt("Ctrl-C in the engine")

    monkeypatch.setattr(influence_mod, "cross_fit_head_influence", interrupted)
    X, y = blobs
    selector = InfluenceSampleSelector(cv=3, random_state=0)
    clf = _clf(selector=selector)
    with pytest.raises(KeyboardInterrupt, match="engine"):
        clf.fit(X, y)
    _assert_not_fitted(clf)
    _assert_not_fitted(selector)  # the user's selector is cloned, never fitted


def test_early_stopping_is_not_an_interrupt(blobs):
    """skorch stops training by raising KeyboardInterrupt; that must still end
    in a fitted estimator."""
    X, y = blobs
    clf = _clf(
        max_epochs=40,
        lr=0.5,
        early_stopping=True,
        n_iter_no_change=1,
        validation_fraction=0.25,
    ).fit(X, y)
    check_is_fitted(clf)
    assert len(clf.net_.history) < 40


# ---------------------------------------------------------------------------
# 1c. Bad input: the selectors
# ---------------------------------------------------------------------------

SELECTORS = {
    "influence": lambda: InfluenceSampleSelector(cv=3, random_state=0),
    "loss": lambda: LossSelector(cv=3, random_state=0),
    "confident_learning": lambda: ConfidentLearningSelector(cv=3, random_state=0),
    "random": lambda: RandomSelector(random_state=0),
}

_ONE_PER_CLASS = np.r_[np.zeros(58, int), 1, 2]  # classes 1 and 2 have 1 sample

SELECTOR_FIT_CASES = {
    "nan_in_X": (_NAN, _Y, ValueError, r"Input X contains NaN"),
    "inf_in_X": (_INF, _Y, ValueError, r"Input X contains infinity"),
    "X_1d": (_X[:, 0], _Y, ValueError, r"Expected 2D array, got 1D"),
    "lengths_differ": (_X, _Y[:-1], ValueError, r"inconsistent lengths: 60 .* 59"),
    "one_class": (_X, np.full(60, "a"), ValueError, r"1 class \('a'\)"),
    "empty_X": (_X[:0], _Y[:0], ValueError, r"0 sample\(s\)"),
    "object_strings": (
        np.full((60, 4), "a", dtype=object),
        _Y,
        ValueError,
        r"could not convert string to float",
    ),
    "complex": (_X.astype(complex), _Y, ValueError, r"Complex data not supported"),
    "sparse": (sp.csr_matrix(_X), _Y, TypeError, r"Sparse data was passed for X"),
    "no_features": (_X[:, :0], _Y, ValueError, r"0 feature\(s\) \(shape=\(60, 0\)\)"),
    "y_none": (_X, None, ValueError, r"requires y to be passed"),
    "y_2d": (_X, np.c_[_Y, _Y], ValueError, r"y should be a 1d array"),
    "nan_label": (_X, np.r_[np.nan, _Y[1:]], ValueError, r"Input y contains NaN"),
}


@pytest.mark.parametrize("name", list(SELECTORS))
@pytest.mark.parametrize(
    "X, y, exc, match",
    list(SELECTOR_FIT_CASES.values()),
    ids=list(SELECTOR_FIT_CASES),
)
def test_selector_fit_bad_input(name, X, y, exc, match):
    sel = SELECTORS[name]()
    with pytest.raises(exc, match=match):
        sel.fit_resample(X, y)
    _assert_not_fitted(sel)


@pytest.mark.parametrize("name", ["influence", "loss", "confident_learning"])
def test_selector_class_smaller_than_cv(name):
    """A class with fewer samples than cv is cross-fitted with fewer (here
    unstratified) folds, with a warning that says so, instead of refused."""
    sel = SELECTORS[name]()
    with pytest.warns(UserWarning, match=r"Class 1 has 1 sample\(s\), fewer than "
                                         r"cv=3: cross-fitting uses unstratified folds"):
        sel.fit(_X, _ONE_PER_CLASS)
    assert np.isfinite(sel.scores_).all()
    assert set(_ONE_PER_CLASS[sel.support_]) == {0, 1, 2}


def test_influence_selector_small_class_fine_with_validation_set(blobs):
    """With a user X_val there is no cross-fitting, so tiny classes are fine."""
    X, y = blobs
    y_small = np.r_[np.zeros(58, int), 1, 2]
    sel = InfluenceSampleSelector(cv=3).fit(X, y_small, X_val=X, y_val=y)
    assert np.isfinite(sel.scores_).all()
    assert set(y_small[sel.support_]) == {0, 1, 2}


def _val_cases():
    X, y = _blobs()
    nan = X.copy()
    nan[0, 0] = np.nan
    return {
        "X_val_other_shape": (dict(X_val=X[:, :3], y_val=y), r"X_val has per-sample shape \(3,\) but X has \(4,\)"),
        "X_val_3d": (dict(X_val=X[:, :, None], y_val=y), r"X_val has per-sample shape"),
        "X_val_nan": (dict(X_val=nan, y_val=y), r"Input X_val contains NaN"),
        "X_val_empty": (dict(X_val=X[:0], y_val=y[:0]), r"0 sample\(s\)"),
        "y_val_unseen": (dict(X_val=X, y_val=y + 1), r"y_val contains labels not present in y: \[3\]"),
        "y_val_length": (dict(X_val=X, y_val=y[:-2]), r"inconsistent lengths.* 58 labels in y_val"),
        "only_X_val": (dict(X_val=X), r"Pass both X_val and y_val"),
        "only_y_val": (dict(y_val=y), r"Pass both X_val and y_val"),
    }


@pytest.mark.parametrize("case", list(_val_cases()), ids=list(_val_cases()))
def test_influence_selector_bad_validation_set(blobs, case):
    X, y = blobs
    kwargs, match = _val_cases()[case]
    sel = InfluenceSampleSelector(cv=3)
    with pytest.raises(ValueError, match=match):
        sel.fit(X, y, **kwargs)
    _assert_not_fitted(sel)


def test_selector_without_estimator_rejects_dataset(blobs):
    X, y = blobs
    ds = torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(y))
    with pytest.raises(TypeError, match=r"without an estimator .* needs an array"):
        InfluenceSampleSelector(cv=3).fit(ds, y)


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(cv=1), r"'cv' parameter of InfluenceSampleSelector must be an int in "
                     r"the range \[2, inf\)"),
        # (the order inside the set of strings varies between runs)
        (dict(alpha=-1.0), r"'alpha' parameter .* must be a str among \{'\w+', '\w+'\} "
                           r"or a float in the range \[0"),
        (dict(alpha=0.0, damping=0), r"alpha=0 with damping=0"),
        (dict(damping=-1e-3), r"'damping' parameter .* must be a str among \{'auto'\} or "
                              r"a float in the range \[0"),
        (dict(val_trim=1.0), r"'val_trim' parameter .* a float in the range \[0.0, 1.0\)"),
        (dict(max_remove=1.5), r"'max_remove' parameter"),
        (dict(max_remove=-1), r"'max_remove' parameter"),
        (dict(threshold=float("nan")), r"'threshold' parameter"),
        (dict(hessian="newton"), r"'hessian' parameter .* must be a str among"),
        (dict(solver="qr"), r"'solver' parameter .* must be a str among"),
        (dict(params="layers"), r"'params' parameter"),
        (dict(solver="lissa"), r"solver='lissa' is for deeper parameters"),
    ],
)
def test_influence_selector_bad_parameters(blobs, params, match):
    X, y = blobs
    sel = InfluenceSampleSelector(**params)
    with pytest.raises(ValueError, match=match):
        sel.fit(X, y)
    _assert_not_fitted(sel)


# ---------------------------------------------------------------------------
# 1d. Odd but valid input: the selectors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["float64", "object", "transposed", "strided", "pandas", "torch", "uint8"]
)
def test_selector_accepts_input_variants(blobs, kind):
    X, y = blobs
    if kind == "uint8":
        X8 = np.clip(np.round((X - X.min()) * 10), 0, 255).astype(np.uint8)
        X = X8.astype(np.float32) / np.float32(255)
    ref = InfluenceSampleSelector(cv=3, random_state=0).fit(X, y)
    if kind == "float64":
        Xv, yv = X.astype(np.float64), y
    elif kind == "object":  # numbers stored as Python objects
        Xv, yv = X.astype(object), y
    elif kind == "transposed":
        Xv, yv = np.ascontiguousarray(X.T).T, y
    elif kind == "strided":
        big = np.zeros((len(X), 8), np.float32)
        big[:, 1::2] = X
        Xv, yv = big[:, 1::2], y
    elif kind == "pandas":
        Xv, yv = pd.DataFrame(X), pd.Series(y, index=np.arange(100, 160))
    elif kind == "torch":
        Xv, yv = torch.from_numpy(X.copy()), torch.from_numpy(y.copy())
    else:
        Xv, yv = X8, y
    before = _digest(np.asarray(Xv))
    sel = InfluenceSampleSelector(cv=3, random_state=0)
    X_kept, y_kept = sel.fit_resample(Xv, yv)
    np.testing.assert_allclose(sel.scores_, ref.scores_, rtol=1e-6, atol=1e-12)
    np.testing.assert_array_equal(sel.support_, ref.support_)
    assert type(X_kept) is type(Xv) and type(y_kept) is type(yv)
    np.testing.assert_array_equal(np.asarray(X_kept), np.asarray(Xv)[sel.support_])
    np.testing.assert_array_equal(np.asarray(y_kept), np.asarray(yv)[sel.support_])
    if kind == "pandas":  # rows keep their index labels
        np.testing.assert_array_equal(y_kept.index, yv.index[sel.support_])
    assert _digest(np.asarray(Xv)) == before


def test_selector_with_network_accepts_uint8_images(digit_images):
    X8, y = digit_images
    X32 = X8.astype(np.float32) / np.float32(255)
    net = TinyCNN()
    est = TransferClassifier(net, device="cpu")
    ref = InfluenceSampleSelector(est, cv=3, random_state=0, device="cpu").fit(X32, y)
    sel = InfluenceSampleSelector(est, cv=3, random_state=0, device="cpu").fit(X8, y)
    np.testing.assert_allclose(sel.scores_, ref.scores_, rtol=1e-6, atol=1e-12)
    flipped = X32[:, :, :, ::-1]
    ref_f = InfluenceSampleSelector(est, cv=3, random_state=0, device="cpu")
    ref_f.fit(np.ascontiguousarray(flipped), y)
    sel_f = InfluenceSampleSelector(est, cv=3, random_state=0, device="cpu").fit(flipped, y)
    np.testing.assert_array_equal(sel_f.scores_, ref_f.scores_)


# ---------------------------------------------------------------------------
# 1e. Bad input: the engine functions
# ---------------------------------------------------------------------------


def _engine_cases():
    X, y = _blobs()
    F = X.astype(np.float64)
    net = mlp4()
    nan = X.copy()
    nan[2, 2] = np.nan
    return {
        "fit_head_nan": (lambda: fit_head(nan, y, 3, alpha=1e-3), ValueError, r"F contains NaN"),
        "fit_head_1d": (lambda: fit_head(F[:, 0], y, 3, alpha=1e-3), ValueError, r"F must be 2-D"),
        "fit_head_lengths": (lambda: fit_head(F, y[:-1], 3, alpha=1e-3), ValueError, r"60 rows but y has 59"),
        "fit_head_empty": (lambda: fit_head(F[:0], y[:0], 3, alpha=1e-3), ValueError, r"F is empty"),
        "fit_head_label_range": (lambda: fit_head(F, y + 1, 3, alpha=1e-3), ValueError, r"labels in 0\.\.2"),
        "fit_head_string_labels": (lambda: fit_head(F, y.astype(str), 3, alpha=1e-3), ValueError, r"integer labels"),
        "head_influence_inf": (
            lambda: head_influence(np.where(nan != nan, np.inf, F), y, F, y, n_classes=3, alpha=1e-3),
            ValueError, r"F_train contains NaN or infinite",
        ),
        "head_influence_val_features": (
            lambda: head_influence(F, y, F[:, :3], y, n_classes=3, alpha=1e-3),
            ValueError, r"F_train has 4 features, F_val 3",
        ),
        "head_influence_lengths": (
            lambda: head_influence(F, y[:-1], F, y, n_classes=3, alpha=1e-3),
            ValueError, r"inconsistent lengths",
        ),
        "head_influence_unseen_val_label": (
            lambda: head_influence(F, y, F, y + 3, n_classes=3, alpha=1e-3),
            ValueError, r"y_val must hold labels in 0\.\.2",
        ),
        "head_influence_empty_val": (
            lambda: head_influence(F, y, F[:0], y[:0], n_classes=3, alpha=1e-3),
            ValueError, r"F_val is empty",
        ),
        "influence_scores_nan": (
            lambda: influence_scores(net, nan, y, X, y), ValueError, r"Input X_train contains NaN",
        ),
        "influence_scores_1d": (
            lambda: influence_scores(net, X[:, 0], y, X, y), ValueError, r"Expected 2D array, got 1D",
        ),
        "influence_scores_lengths": (
            lambda: influence_scores(net, X, y[:-1], X, y), ValueError, r"inconsistent lengths",
        ),
        "influence_scores_empty": (
            lambda: influence_scores(net, X[:0], y[:0], X, y), ValueError, r"0 sample\(s\)",
        ),
        "influence_scores_object": (
            lambda: influence_scores(net, np.full((60, 4), "a", dtype=object), y, X, y),
            ValueError, r"could not convert string to float",
        ),
        "influence_scores_string_labels": (
            lambda: influence_scores(net, X, y.astype(str), X, y), ValueError, r"encode them first",
        ),
        "influence_scores_unseen_val_label": (
            lambda: influence_scores(net, X, y, X, y + 3, n_classes=3), ValueError, r"y_val must hold labels",
        ),
        "extract_features_nan": (
            lambda: extract_features(net, nan), ValueError, r"Input X contains NaN",
        ),
        "extract_features_empty": (
            lambda: extract_features(net, X[:0]), ValueError, r"0 sample\(s\)",
        ),
        "extract_features_bad_layer": (
            lambda: extract_features(net, X, layer="nope"), ValueError, r"layer='nope' is not a submodule",
        ),
    }


@pytest.mark.parametrize("case", list(_engine_cases()), ids=list(_engine_cases()))
def test_engine_bad_input(case):
    call, exc, match = _engine_cases()[case]
    with pytest.raises(exc, match=match):
        call()


def test_engine_one_class_errors(blobs):
    X, _ = blobs
    y = np.zeros(len(X), int)
    with pytest.raises(ValueError, match="class"):
        influence_scores(mlp4(), X, y, X, y)


def test_engine_val_shape_named(blobs):
    X, y = blobs
    with pytest.raises(ValueError, match="X_val"):
        influence_scores(mlp4(), X, y, X[:, :3], y)


# ---------------------------------------------------------------------------
# 3. Numerical faults: finite scores or a clear error, never silent NaN
# ---------------------------------------------------------------------------


def _features(kind):
    X, y = _blobs()
    Xv, yv = _blobs(n=30, seed=0)
    yv = yv.copy()
    yv[:4] = (yv[:4] + 1) % 3  # a few wrong validation labels
    if kind == "duplicated_columns":
        X, Xv = np.c_[X, X, X[:, :1]], np.c_[Xv, Xv, Xv[:, :1]]
    elif kind == "constant_columns":
        X = np.c_[X, np.ones((len(X), 2), np.float32), np.zeros((len(X), 1), np.float32)]
        Xv = np.c_[Xv, np.ones((len(Xv), 2), np.float32), np.zeros((len(Xv), 1), np.float32)]
    elif kind == "duplicated_samples":
        X, y = np.r_[X, X, X[:5]], np.r_[y, y, y[:5]]
    elif kind == "extreme_logits":
        X, Xv = X * 1e3, Xv * 1e3
    elif kind == "huge_features":
        X, Xv = X * 1e20, Xv * 1e20
    elif kind == "all_zero":
        X, Xv = np.zeros_like(X), np.zeros_like(Xv)
    return X, y, Xv, yv


FAULTS = [
    "duplicated_columns",
    "constant_columns",
    "duplicated_samples",
    "extreme_logits",
    "huge_features",
    "all_zero",
]
DAMPINGS = [1e-8, 1e-6, 1e-4, 1e-2, 1.0]


def _finite_or_clear_error(call):
    """Run an influence computation: finite scores, or an error that names the
    cure (alpha / damping). A silent NaN or an unexplained failure fails."""
    try:
        res = call()
    except (np.linalg.LinAlgError, RuntimeError, FloatingPointError, ValueError) as exc:
        assert re.search(r"alpha|damping", str(exc)), f"unclear error: {exc!r}"
        return None
    assert np.isfinite(res.scores).all()
    assert np.isfinite(res.damping) and res.damping >= 0
    return res


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
@pytest.mark.parametrize("damping", DAMPINGS)
@pytest.mark.parametrize("kind", FAULTS)
def test_head_influence_numerical_faults(kind, damping, solver):
    X, y, Xv, yv = _features(kind)
    res = _finite_or_clear_error(
        lambda: head_influence(
            X, y, Xv, yv, n_classes=3, alpha=1e-3, damping=damping, solver=solver
        )
    )
    if res is None:
        return
    assert res.damping == damping
    assert np.isfinite(res.residual) and res.residual < 1e-4
    if kind == "all_zero":  # nothing to tell the samples apart but their labels
        for c in range(3):
            assert np.ptp(res.scores[y == c]) < 1e-12


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
@pytest.mark.parametrize("damping", [0.0, "auto"])
@pytest.mark.parametrize("kind", ["duplicated_columns", "constant_columns", "all_zero", "huge_features"])
def test_singular_hessian_finite_or_clear_error(kind, damping, solver):
    """alpha=0 on rank-deficient features: H is singular but for damping."""
    X, y, Xv, yv = _features(kind)
    _finite_or_clear_error(
        lambda: head_influence(
            X, y, Xv, yv, n_classes=3, alpha=0.0, damping=damping, solver=solver
        )
    )


def test_duplicated_samples_score_alike():
    X, y, Xv, yv = _features("duplicated_samples")
    res = head_influence(X, y, Xv, yv, n_classes=3, alpha=1e-3)
    np.testing.assert_allclose(res.scores[:60], res.scores[60:120], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("damping", DAMPINGS + ["auto"])
@pytest.mark.parametrize("kind", ["duplicated_columns", "constant_columns", "duplicated_samples", "extreme_logits"])
def test_selector_numerical_faults(kind, damping):
    X, y, _, _ = _features(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sel = InfluenceSampleSelector(cv=3, damping=damping, random_state=0).fit(X, y)
    assert np.isfinite(sel.scores_).all()
    assert sel.support_.sum() >= 3 * 2


def test_selector_never_returns_nan_scores(blobs, monkeypatch):
    """If the engine ever produced NaN, the selector refuses to pick."""
    import skitl.influence._crossfit as influence_mod

    real = influence_mod.cross_fit_head_influence

    def nan_scores(*args, **kwargs):
        res = real(*args, **kwargs)
        res.scores = res.scores.copy()
        res.scores[3] = np.nan
        return res

    monkeypatch.setattr(influence_mod, "cross_fit_head_influence", nan_scores)
    X, y = blobs
    sel = InfluenceSampleSelector(cv=3, random_state=0)
    with pytest.raises(FloatingPointError, match=r"1 non-finite scores"):
        sel.fit(X, y)
    _assert_not_fitted(sel)


def test_network_producing_nan_is_a_clear_error(blobs):
    X, y = blobs
    net = mlp4()
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    sel = InfluenceSampleSelector(TransferClassifier(net), cv=3, device="cpu")
    with pytest.raises(ValueError, match=r"network produced NaN or infinite features"):
        sel.fit(X, y)
    _assert_not_fitted(sel)


# ---------------------------------------------------------------------------
# 4. Interruption: the selectors
# ---------------------------------------------------------------------------


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt("Ctrl-C in the engine")


@pytest.mark.parametrize(
    "name, target",
    [
        ("influence", "skitl.influence._crossfit.cross_fit_head_influence"),
        ("loss", "skitl.selection._loss.cross_fit_head_influence"),
    ],
)
def test_selector_interrupt_unfits(blobs, monkeypatch, name, target):
    X, y = blobs
    X, y = X.copy(), y.copy()
    digests = (_digest(X), _digest(y))
    fresh = SELECTORS[name]()
    refit = SELECTORS[name]().fit(X, y)
    check_is_fitted(refit)
    monkeypatch.setattr(target, _interrupt)
    for sel in (fresh, refit):
        with pytest.raises(KeyboardInterrupt, match="engine"):
            sel.fit(X, y)
        _assert_not_fitted(sel)
        with pytest.raises(NotFittedError):
            sel.get_support()
    assert (_digest(X), _digest(y)) == digests


def test_selector_interrupt_in_network_never_touches_user_objects(blobs, tmp_path):
    X, y = blobs
    X, y = X.copy(), y.copy()
    user_net = InterruptingMLP(interrupt_at=1)
    path = tmp_path / "w.pt"
    torch.save(InterruptingMLP().state_dict(), path)
    digests = (_module_digest(user_net), _file_digest(path), _digest(X), _digest(y))
    est = TransferClassifier(user_net, weights=str(path), device="cpu")
    sel = InfluenceSampleSelector(est, cv=3, device="cpu")
    with pytest.raises(KeyboardInterrupt):
        sel.fit(X, y)
    _assert_not_fitted(sel)
    assert user_net.calls == 0 and user_net.training
    assert (
        _module_digest(user_net),
        _file_digest(path),
        _digest(X),
        _digest(y),
    ) == digests


# ---------------------------------------------------------------------------
# 5. Reproducibility
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["influence", "loss", "random"])
def test_selector_same_random_state_same_scores(name):
    X, y = _blobs(n=90)
    y = y.copy()
    y[::7] = (y[::7] + 1) % 3  # some noise so that scores vary
    factory = {
        "influence": lambda rs: InfluenceSampleSelector(cv=3, random_state=rs),
        "loss": lambda rs: LossSelector(cv=3, random_state=rs),
        "random": lambda rs: RandomSelector(random_state=rs),
    }[name]
    a = factory(0).fit(X, y)
    b = factory(0).fit(X, y)
    c = factory(1).fit(X, y)
    np.testing.assert_array_equal(a.scores_, b.scores_)
    np.testing.assert_array_equal(a.support_, b.support_)
    assert not np.array_equal(a.scores_, c.scores_)


def test_classifier_with_selector_same_random_state_same_predictions(blobs):
    X, y = blobs
    y = y.copy()
    y[::9] = (y[::9] + 1) % 3

    def fit(rs):
        sel = InfluenceSampleSelector(cv=3, random_state=rs)
        return _clf(selector=sel, random_state=rs).fit(X, y)

    a, b, c = fit(0), fit(0), fit(1)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    np.testing.assert_array_equal(a.selector_.scores_, b.selector_.scores_)
    assert not np.array_equal(a.predict_proba(X), c.predict_proba(X))


_CHILD = r"""
import pickle, sys
import numpy as np
import torch
torch.set_num_threads(1)
d = sys.argv[1]
X = np.load(d + "/X.npy")
with open(d + "/clf.pkl", "rb") as f:
    clf = pickle.load(f)
with open(d + "/sel.pkl", "rb") as f:
    sel = pickle.load(f)
with torch.no_grad():
    net_out = sel.network_(torch.from_numpy(X)).numpy()
np.savez(
    d + "/child.npz",
    proba=clf.predict_proba(X),
    pred=clf.predict(X),
    support=sel.get_support(),
    scores=sel.scores_,
    net_out=net_out,
    inner_support=clf.selector_.get_support(),
)
"""


def test_pickle_round_trip_in_fresh_process(blobs, tmp_path):
    X, y = blobs
    y = np.array(["ant", "bee", "cat"])[y]
    y[::9] = "bee"
    net = mlp4()  # an instance: pickled by value, nothing to import
    est = TransferClassifier(net, device="cpu")
    sel = InfluenceSampleSelector(est, cv=3, random_state=0, device="cpu").fit(X, y)
    clf = _clf(net, selector=InfluenceSampleSelector(cv=3, random_state=0)).fit(X, y)
    np.save(tmp_path / "X.npy", X)
    (tmp_path / "clf.pkl").write_bytes(pickle.dumps(clf))
    (tmp_path / "sel.pkl").write_bytes(pickle.dumps(sel))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    child = np.load(tmp_path / "child.npz", allow_pickle=False)
    np.testing.assert_array_equal(child["proba"], clf.predict_proba(X))
    np.testing.assert_array_equal(child["pred"], clf.predict(X))
    assert child["pred"].dtype == clf.predict(X).dtype
    np.testing.assert_array_equal(child["support"], sel.get_support())
    np.testing.assert_array_equal(child["scores"], sel.scores_)
    with torch.no_grad():
        here = sel.network_(torch.from_numpy(X)).numpy()
    np.testing.assert_array_equal(child["net_out"], here)
    np.testing.assert_array_equal(child["inner_support"], clf.selector_.get_support())
    assert proc.stdout == ""


def test_standalone_selector_with_factory_network_repeatable(blobs):
    X, y = blobs

    def scores():
        est = TransferClassifier(mlp4, random_state=0, device="cpu")
        sel = InfluenceSampleSelector(est, cv=3, random_state=0, device="cpu")
        return sel.fit(X, y).scores_

    np.testing.assert_array_equal(scores(), scores())


@pytest.mark.parametrize("random_state", [0, "instance", None],
                         ids=["int", "RandomState", "None"])
def test_selector_analyses_the_network_the_classifier_fine_tunes(blobs, random_state):
    """The classifier is the one place that builds and seeds its network: its
    selector analyses exactly the network it then fine-tunes, also when
    random_state is a RandomState instance (which fit advances) or None."""
    X, y = blobs
    rs = np.random.RandomState(3) if random_state == "instance" else random_state
    clf = _clf(mlp4, strategy="linear_probe", random_state=rs,
               selector=InfluenceSampleSelector(cv=3, random_state=0)).fit(X, y)
    analysed = clf.selector_.network_.state_dict()
    trained = clf.net_.module_.state_dict()
    # the frozen backbone of a linear probe is the network as built
    for key in ("0.weight", "0.bias"):
        torch.testing.assert_close(analysed[key], trained[key], rtol=0, atol=0)


def test_pretrained_network_does_not_advance_the_random_state():
    rs = np.random.RandomState(5)
    est = TransferClassifier(mlp4, random_state=rs)
    state = rs.get_state()[1].copy()
    a, _ = est._pretrained_network()
    b, _ = est._pretrained_network()
    np.testing.assert_array_equal(rs.get_state()[1], state)
    torch.testing.assert_close(a.state_dict(), b.state_dict(), rtol=0, atol=0)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_weights_file_is_named(tmp_path, damage):
    path = tmp_path / "weights.pt"
    torch.save(mlp4().state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"x" * 100)
    with pytest.raises(ValueError, match=r"Could not read the weights file .*weights\.pt"):
        _clf(mlp4, weights=str(path)).fit(*_blobs())


def test_refit_on_a_dataset_forgets_the_array_fit(blobs):
    X, y = blobs
    frame = pd.DataFrame(X, columns=list("abcd"))
    clf = _clf().fit(frame, y)
    assert list(clf.feature_names_in_) == list("abcd")
    ds = torch.utils.data.TensorDataset(torch.from_numpy(X[:, :4]), torch.from_numpy(y))
    clf.fit(ds)
    assert not hasattr(clf, "feature_names_in_")
    assert clf.n_features_in_ == 4
    images = torch.utils.data.TensorDataset(torch.zeros(30, 1, 8, 8), torch.arange(30) % 3)
    cnn = _clf(TinyCNN, max_epochs=1).fit(images)
    assert cnn.n_features_in_ == 1  # channels, as for image arrays

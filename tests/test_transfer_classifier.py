"""Tests of TransferClassifier on scikit-learn's digits as 8x8 images."""

import hashlib
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn
from sklearn.base import BaseEstimator, clone
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.utils._param_validation import InvalidParameterError
from skorch import NeuralNetClassifier
from skorch.helper import SliceDataset
from torch.utils.data import TensorDataset

from skitl import TransferClassifier


class TinyCNN(nn.Module):
    """Conv + BatchNorm backbone and a Linear head, for (N, 1, 8, 8) digits."""

    def __init__(self, n_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * 4 * 4, 32),
            nn.ReLU(),
        )
        self.fc = nn.Linear(32, n_classes)

    def forward(self, x):
        return self.fc(self.features(x))


def mlp64():
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    X = (d.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8)
    return X[:600], d.target[:600], X[1500:], d.target[1500:]


@pytest.fixture(scope="module")
def pretrained():
    """A 'pretrained' TinyCNN: random weights, non-default BN statistics."""
    torch.manual_seed(0)
    net = TinyCNN()
    with torch.no_grad():
        net.features[1].running_mean.uniform_(-1, 1)
        net.features[1].running_var.uniform_(0.5, 2)
    return net


def _state(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _fast(**kwargs):
    params = dict(max_epochs=2, lr=1e-2, batch_size=64, random_state=0, device="cpu")
    params.update(kwargs)
    return params


# -- basics -----------------------------------------------------------------


def test_fit_predict_tiny_cnn(digits):
    X, y, Xt, yt = digits
    clf = TransferClassifier(TinyCNN, **_fast(max_epochs=4)).fit(X, y)
    assert isinstance(clf.net_, NeuralNetClassifier)
    np.testing.assert_array_equal(clf.classes_, np.arange(10))
    assert clf.n_features_in_ == 1  # X.shape[1]: channels, as validate_data says
    proba = clf.predict_proba(Xt)
    assert proba.shape == (len(Xt), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(clf.predict(Xt), proba.argmax(axis=1))
    assert clf.score(Xt, yt) > 0.6
    assert clf.selector_ is None


def test_string_labels_and_uint8(digits):
    X, y, Xt, _ = digits
    names = np.array(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
        ],
        dtype=object,
    )
    clf = TransferClassifier(TinyCNN, **_fast()).fit(X, names[y])
    np.testing.assert_array_equal(clf.classes_, np.sort(names))
    pred = clf.predict(Xt)
    assert set(pred) <= set(names)
    # uint8 images are scaled to [0, 1]: same result as the float images
    X8 = np.round(X * 255).astype(np.uint8)
    a = TransferClassifier(TinyCNN, **_fast(max_epochs=1)).fit(X8, y)
    b = TransferClassifier(TinyCNN, **_fast(max_epochs=1)).fit(X8 / np.float32(255), y)
    np.testing.assert_allclose(
        a.predict_proba(X8), b.predict_proba(X8 / np.float32(255)), atol=1e-6
    )


def test_two_d_input_and_feature_checks(digits):
    X, y, Xt, _ = digits
    clf = TransferClassifier(mlp64, **_fast()).fit(X.reshape(len(X), -1), y)
    assert clf.n_features_in_ == 64
    assert clf.predict(Xt.reshape(len(Xt), -1)).shape == (len(Xt),)
    with pytest.raises(ValueError, match="expecting 64 features"):
        clf.predict(np.zeros((2, 10), dtype=np.float32))
    with pytest.raises(ValueError, match="dimensions"):
        clf.predict(Xt)


def test_verbose(digits, capsys):
    X, y, _, _ = digits
    TransferClassifier(TinyCNN, **_fast(max_epochs=1)).fit(X, y)
    assert capsys.readouterr().out == ""
    TransferClassifier(TinyCNN, **_fast(max_epochs=1, verbose=1)).fit(X, y)
    out = capsys.readouterr().out
    assert "epoch" in out and "train_loss" in out


def test_parameter_validation(digits):
    X, y, _, _ = digits
    with pytest.raises(InvalidParameterError):
        TransferClassifier(TinyCNN, strategy="nope").fit(X, y)
    with pytest.raises(InvalidParameterError):
        TransferClassifier(TinyCNN, lr=-1).fit(X, y)
    with pytest.raises(ValueError, match="needs reinit"):
        TransferClassifier(TinyCNN, strategy="partial").fit(X, y)
    with pytest.raises(ValueError, match="only used by strategy='partial'"):
        TransferClassifier(TinyCNN, reinit="fc").fit(X, y)
    with pytest.raises(ValueError, match="matches no parameter"):
        TransferClassifier(TinyCNN, freeze="layer9").fit(X, y)
    with pytest.raises(ValueError, match="Every parameter is frozen"):
        TransferClassifier(TinyCNN, freeze="*").fit(X, y)
    with pytest.raises(ValueError, match="requires y"):
        TransferClassifier(TinyCNN).fit(X)
    with pytest.raises(ValueError, match="Unknown label type"):
        TransferClassifier(TinyCNN).fit(X, np.linspace(0, 1, len(X)))


# -- torchvision models and weight files ------------------------------------


@pytest.fixture(scope="module")
def small_rgb():
    rng = np.random.RandomState(0)
    X = rng.rand(20, 3, 32, 32).astype(np.float32)
    y = np.array(["cat", "dog"] * 10)
    return X, y


def test_torchvision_by_name(small_rgb):
    X, y = small_rgb
    clf = TransferClassifier("resnet18", None, **_fast(max_epochs=1, batch_size=10))
    clf.fit(X, y)
    assert clf.net_.module_.fc.out_features == 2
    assert clf.predict(X).shape == (20,)


@pytest.mark.parametrize("layout", ["plain", "wrapped", "prefixed"])
def test_torchvision_weights_file(tmp_path, small_rgb, layout):
    import torchvision

    X, y = small_rgb
    torch.manual_seed(1)
    src = torchvision.models.resnet18(weights=None).state_dict()
    state = src
    if layout == "prefixed":
        state = {f"module.{k}": v for k, v in state.items()}
    if layout == "wrapped":
        state = {"state_dict": state, "epoch": 3}
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    clf = TransferClassifier(
        "resnet18",
        str(path),
        strategy="linear_probe",
        **_fast(max_epochs=1, batch_size=10),
    ).fit(X, y)
    trained = clf.net_.module_.state_dict()
    for key, value in src.items():
        if not key.startswith("fc."):
            assert torch.equal(trained[key], value), key
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


# -- strategies -------------------------------------------------------------


def test_finetune_param_groups(digits, pretrained):
    X, y, _, _ = digits
    clf = TransferClassifier(
        pretrained, lr=1e-2, backbone_lr_scale=0.1, max_epochs=1, random_state=0
    ).fit(X, y)
    groups = clf.net_.optimizer_.param_groups
    net = clf.net_.module_
    head = {id(p) for p in net.fc.parameters()}
    for group in groups:
        ids = {id(p) for p in group["params"]}
        expected = 1e-2 if ids <= head else 1e-3
        assert ids <= head or not (ids & head)
        assert group["lr"] == pytest.approx(expected)
    n_opt = sum(len(g["params"]) for g in groups)
    assert n_opt == len(list(net.parameters()))


def test_linear_probe_backbone_bit_identical(digits, pretrained):
    X, y, _, _ = digits
    before = _state(pretrained)
    clf = TransferClassifier(pretrained, strategy="linear_probe", **_fast()).fit(X, y)
    after = clf.net_.module_.state_dict()
    for key, value in before.items():
        if key.startswith("fc."):
            continue
        assert torch.equal(after[key], value), key  # weights AND BN buffers
    assert not torch.equal(after["fc.weight"][:, :5], before["fc.weight"][:, :5])
    groups = clf.net_.optimizer_.param_groups
    assert sum(len(g["params"]) for g in groups) == 2  # only the head trains


def test_partial_reinitialises_and_copies(digits, pretrained):
    X, y, _, _ = digits
    before = _state(pretrained)
    # lr tiny: parameters stay where the strategy put them
    clf = TransferClassifier(
        pretrained,
        strategy="partial",
        reinit=["features.5"],
        **_fast(max_epochs=1, lr=1e-12, backbone_lr_scale=0.0),
    ).fit(X, y)
    after = clf.net_.module_.state_dict()
    for key in ("features.5.weight", "features.5.bias"):
        assert not torch.allclose(after[key], before[key], atol=1e-3), key
    bound = 1 / (8 * 4 * 4) ** 0.5  # nn.Linear's default init range
    assert after["features.5.weight"].abs().max() <= bound + 1e-6
    for key in ("features.0.weight", "features.0.bias", "features.1.weight"):
        assert torch.equal(after[key], before[key]), key
    # the re-initialised layer trains at lr, the copied ones at lr * scale
    names = {id(p): n for n, p in clf.net_.module_.named_parameters()}
    lr_of = {
        names[id(p)]: g["lr"]
        for g in clf.net_.optimizer_.param_groups
        for p in g["params"]
    }
    assert lr_of["features.5.weight"] == lr_of["fc.bias"] == 1e-12
    assert lr_of["features.0.weight"] == lr_of["features.1.bias"] == 0.0


def test_scratch_ignores_pretrained_weights(digits, pretrained):
    X, y, _, _ = digits
    before = _state(pretrained)
    params = _fast(max_epochs=1, lr=1e-12)
    a = TransferClassifier(pretrained, strategy="scratch", **params).fit(X, y)
    b = TransferClassifier(
        TinyCNN, pretrained.state_dict(), strategy="scratch", **params
    ).fit(X, y)
    for clf in (a, b):
        after = clf.net_.module_.state_dict()
        assert not torch.allclose(
            after["features.0.weight"], before["features.0.weight"]
        )
    # repeatable from random_state
    c = TransferClassifier(TinyCNN, strategy="scratch", **params).fit(X, y)
    assert torch.equal(
        b.net_.module_.features[0].weight, c.net_.module_.features[0].weight
    )


def test_freeze_patterns_keep_bn_statistics(digits, pretrained):
    X, y, _, _ = digits
    before = _state(pretrained)
    clf = TransferClassifier(
        pretrained, freeze=["features.0", "features.1"], **_fast()
    ).fit(X, y)
    after = clf.net_.module_.state_dict()
    for key in (
        "features.0.weight",
        "features.1.weight",
        "features.1.running_mean",
        "features.1.running_var",
    ):
        assert torch.equal(after[key], before[key]), key
    assert not torch.equal(after["features.5.weight"], before["features.5.weight"])


@pytest.mark.parametrize("optimizer", ["adam", "sgd", torch.optim.RMSprop])
def test_optimizers(digits, optimizer):
    X, y, _, _ = digits
    clf = TransferClassifier(
        TinyCNN, optimizer=optimizer, weight_decay=1e-4, **_fast(max_epochs=1)
    ).fit(X, y)
    opt = clf.net_.optimizer_
    assert opt.param_groups[0]["weight_decay"] == 1e-4
    if optimizer == "sgd":
        assert isinstance(opt, torch.optim.SGD)
        assert opt.param_groups[0]["momentum"] == 0.9


def test_user_objects_never_modified(digits, pretrained):
    X, y, _, _ = digits
    before = _state(pretrained)
    X_copy, y_copy = X.copy(), y.copy()
    for strategy in ("finetune", "linear_probe", "scratch"):
        TransferClassifier(pretrained, strategy=strategy, **_fast(max_epochs=1)).fit(
            X, y
        )
    after = pretrained.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in pretrained.parameters())
    assert pretrained.training
    np.testing.assert_array_equal(X, X_copy)
    np.testing.assert_array_equal(y, y_copy)


# -- scikit-learn integration ------------------------------------------------


def test_clone_and_pickle(digits, pretrained):
    X, y, Xt, _ = digits
    clf = TransferClassifier(pretrained, **_fast(max_epochs=1))
    twin = clone(clf)
    assert twin.get_params()["lr"] == clf.get_params()["lr"]
    assert twin.module is not pretrained  # deep-copied parameter
    clf.fit(X, y)
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(restored.predict_proba(Xt), clf.predict_proba(Xt))
    np.testing.assert_array_equal(restored.classes_, clf.classes_)


def test_random_state_repeatable(digits):
    X, y, Xt, _ = digits
    p1 = TransferClassifier(TinyCNN, **_fast()).fit(X, y).predict_proba(Xt)
    p2 = TransferClassifier(TinyCNN, **_fast()).fit(X, y).predict_proba(Xt)
    p3 = (
        TransferClassifier(TinyCNN, **_fast(random_state=1)).fit(X, y).predict_proba(Xt)
    )
    np.testing.assert_array_equal(p1, p2)
    assert not np.array_equal(p1, p3)
    # training leaves torch's global generator where it was
    state = torch.random.get_rng_state()
    TransferClassifier(TinyCNN, **_fast(max_epochs=1)).fit(X, y)
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_grid_search(digits, n_jobs):
    X, y, Xt, yt = digits
    grid = GridSearchCV(
        TransferClassifier(TinyCNN, **_fast(max_epochs=1)),
        {"strategy": ["finetune", "scratch"]},
        cv=2,
        n_jobs=n_jobs,
    ).fit(X[:300], y[:300])
    assert grid.best_params_["strategy"] in ("finetune", "scratch")
    assert grid.predict(Xt).shape == (len(Xt),)
    assert np.isfinite(grid.cv_results_["mean_test_score"]).all()


def test_early_stopping_restores_best():
    d = load_digits()
    X = (d.images / 16.0).astype(np.float32).reshape(-1, 64)[:600]
    y = d.target[:600].copy()
    rng = np.random.RandomState(0)
    noisy = rng.rand(len(y)) < 0.5  # noisy labels make it overfit quickly
    y[noisy] = rng.randint(0, 10, noisy.sum())
    clf = TransferClassifier(
        mlp64,
        strategy="scratch",
        lr=3e-3,
        max_epochs=30,
        batch_size=32,
        early_stopping=True,
        validation_fraction=0.2,
        n_iter_no_change=3,
        random_state=0,
        device="cpu",
    ).fit(X, y)
    history = clf.net_.history
    losses = np.array(history[:, "valid_loss"])
    assert len(history) < 30  # stopped
    assert losses.argmin() < len(losses) - 1  # the last epoch was not the best
    # the weights in place are the best epoch's: recompute its validation loss
    valid = clf.net_.train_split.valid_indices
    assert len(valid) == 120
    proba = clf.predict_proba(X[valid])
    loss = -np.mean(np.log(proba[np.arange(len(valid)), y[valid]]))
    assert loss == pytest.approx(losses.min(), rel=1e-4)
    # the split is stratified
    counts = np.bincount(y[valid], minlength=10)
    assert counts.min() >= 8


class CountingFlip:
    """A picklable train-time transform that counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        assert x.shape == (1, 8, 8) and x.dtype == torch.float32
        return torch.flip(x, dims=[-1])


def test_train_transform_train_time_only(digits):
    X, y, Xt, _ = digits
    flip = CountingFlip()
    clf = TransferClassifier(
        TinyCNN, train_transform=flip, early_stopping=True, validation_fraction=0.1, **_fast()
    ).fit(X, y)
    n_train = len(X) - len(clf.net_.train_split.valid_indices)
    assert flip.calls == 2 * n_train  # two epochs, validation part untouched
    clf.predict(Xt)
    assert flip.calls == 2 * n_train


def test_torchvision_v2_train_transform_repeatable(digits):
    from torchvision.transforms import v2

    X, y, Xt, _ = digits
    aug = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomCrop(8, padding=1)])
    a = TransferClassifier(TinyCNN, train_transform=aug, **_fast()).fit(X, y)
    b = TransferClassifier(TinyCNN, train_transform=aug, **_fast()).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(Xt), b.predict_proba(Xt))


# -- torch datasets -----------------------------------------------------------


def test_torch_dataset_input(digits):
    X, y, Xt, yt = digits
    ds = TensorDataset(torch.from_numpy(X), torch.from_numpy(y))
    clf = TransferClassifier(TinyCNN, **_fast()).fit(ds)  # labels from the dataset
    np.testing.assert_array_equal(clf.classes_, np.arange(10))
    assert clf.n_features_in_ == 1  # X.shape[1]: channels, as validate_data says
    test_ds = TensorDataset(torch.from_numpy(Xt), torch.from_numpy(yt))
    pred = clf.predict(test_ds)
    ref = TransferClassifier(TinyCNN, **_fast()).fit(X, y).predict(Xt)
    np.testing.assert_array_equal(pred, ref)
    # uint8 tensors inside a dataset are scaled too
    ds8 = TensorDataset(torch.from_numpy(np.round(X * 255).astype(np.uint8)))
    clf8 = TransferClassifier(TinyCNN, **_fast(max_epochs=1)).fit(ds8, y)
    assert clf8.predict(ds8).shape == (len(X),)


def test_slice_dataset_cross_validation(digits):
    X, y, _, _ = digits
    ds = TensorDataset(torch.from_numpy(X[:300]), torch.from_numpy(y[:300]))
    Xs, ys = SliceDataset(ds, idx=0), SliceDataset(ds, idx=1)
    clf = TransferClassifier(TinyCNN, **_fast(max_epochs=4))
    scores = cross_val_score(clf, Xs, ys, cv=2)
    reference = cross_val_score(clf, X[:300], y[:300], cv=2)
    np.testing.assert_allclose(scores, reference)  # same folds, same training


# -- selector -----------------------------------------------------------------


class DropFirst(BaseEstimator):
    """A fake selector: drops the first ``n_drop`` rows."""

    def __init__(self, estimator=None, n_drop=5):
        self.estimator = estimator
        self.n_drop = n_drop

    def fit_resample(self, X, y):
        self.estimator_seen_ = self.estimator
        self.n_seen_ = len(X)
        return X[self.n_drop :], y[self.n_drop :]


def _n_trained(clf):
    return sum(b["train_batch_size"] for b in clf.net_.history[-1, "batches"])


def test_selector_gets_estimator_and_prunes(digits, pretrained):
    X, y, _, _ = digits
    selector = DropFirst()
    clf = TransferClassifier(pretrained, selector=selector, **_fast(max_epochs=1))
    clf.fit(X, y)
    fitted = clf.selector_
    assert fitted is not selector and selector.estimator is None
    assert not hasattr(selector, "n_seen_")  # the parameter is never fitted
    injected = fitted.estimator_seen_
    assert isinstance(injected, TransferClassifier)
    assert injected.selector is None
    assert injected.module is not pretrained
    assert injected.get_params()["lr"] == clf.lr
    assert not hasattr(injected, "net_")  # unfitted: its pretrained net is analysed
    assert fitted.n_seen_ == len(X)
    assert _n_trained(clf) == len(X) - 5


def test_selector_with_own_estimator_and_grid(digits):
    X, y, _, _ = digits
    own = TransferClassifier(TinyCNN, lr=0.5)
    clf = TransferClassifier(
        TinyCNN, selector=DropFirst(estimator=own, n_drop=50), **_fast(max_epochs=1)
    ).fit(X, y)
    assert clf.selector_.estimator_seen_.lr == 0.5
    assert _n_trained(clf) == len(X) - 50
    grid = GridSearchCV(
        TransferClassifier(TinyCNN, selector=DropFirst(), **_fast(max_epochs=1)),
        {"selector__n_drop": [0, 10]},
        cv=2,
    ).fit(X[:200], y[:200])
    assert grid.best_params_["selector__n_drop"] in (0, 10)

"""Tests for skitl.models: the digits CNN and the CIFAR ResNets."""

import copy
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn

from skitl._network import find_head
from skitl.datasets import CIFAR10_CLASSES, default_data_dir, load_digits_transfer
from skitl.models import (
    CIFAR_RESNET_MEAN,
    CIFAR_RESNET_STD,
    CifarResNet,
    Normalize,
    SmallCNN,
    cifar_resnet20,
    cifar_resnet32,
    make_digits_cnn,
    pretrain_source_cnn,
    read_checkpoint,
)

DATA = default_data_dir()
WEIGHTS = None if DATA is None else DATA / "cifar10_resnet_weights"
JPEGS = None if DATA is None else DATA / "cifar10_test_jpg" / "test"


def _n_params(net):
    return sum(p.numel() for p in net.parameters())


# --------------------------------------------------------------------------
# SmallCNN
# --------------------------------------------------------------------------
@pytest.mark.parametrize("size", [8, 16, 28])
def test_small_cnn_forward_any_size(size):
    net = SmallCNN(n_classes=7).eval()
    out = net(torch.rand(5, 1, size, size))
    assert out.shape == (5, 7)


def test_small_cnn_head_and_size():
    net = make_digits_cnn(10)
    assert isinstance(net, SmallCNN)
    assert isinstance(net.fc, nn.Linear) and net.fc.out_features == 10
    assert find_head(net) == "fc"
    assert 10_000 <= _n_params(net) <= 31_000
    rgb = SmallCNN(n_classes=3, width=8, in_channels=3)
    assert rgb(torch.rand(2, 3, 8, 8)).shape == (2, 3)
    assert rgb.fc.in_features == 16


def test_small_cnn_pickles():
    net = SmallCNN().eval()
    x = torch.rand(3, 1, 8, 8)
    clone = pickle.loads(pickle.dumps(net))
    torch.testing.assert_close(clone(x), net(x))


def test_pretrain_source_cnn_deterministic_and_learns():
    d = load_digits_transfer(noise=0.0)
    X, y = d.X_source[:300], d.y_source[:300]
    state = torch.random.get_rng_state()
    threads = torch.get_num_threads()
    a = pretrain_source_cnn(X, y, epochs=20, random_state=0)
    b = pretrain_source_cnn(X, y, epochs=20, random_state=0)
    # The caller's global RNG and thread setting are left alone.
    assert torch.equal(state, torch.random.get_rng_state())
    assert torch.get_num_threads() == threads
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert not a.training
    c = pretrain_source_cnn(X, y, epochs=1, random_state=1)
    assert not torch.equal(a.fc.weight, c.fc.weight)
    with torch.no_grad():
        acc = a(torch.as_tensor(d.X_source[300:])).argmax(1).numpy() == d.y_source[300:]
    assert acc.mean() > 0.6


def test_pretrain_source_cnn_accepts_uint8_and_checks_shape():
    X = (np.random.RandomState(0).rand(20, 1, 8, 8) * 255).astype(np.uint8)
    y = np.arange(20) % 4
    net = pretrain_source_cnn(X, y, epochs=1, augment=True)
    assert net.fc.out_features == 4
    with pytest.raises(ValueError, match="N, C, H, W"):
        pretrain_source_cnn(X[:, 0], y, epochs=1)


# --------------------------------------------------------------------------
# CIFAR ResNet
# --------------------------------------------------------------------------
def _checkpoint_keys(depth):
    """The key names of the published checkpoints, written out by structure."""
    keys = ["conv1.weight"] + [
        f"bn1.{s}" for s in ("weight", "bias", "running_mean", "running_var")
    ]
    for stage in (1, 2, 3):
        for block in range((depth - 2) // 6):
            for i in (1, 2):
                p = f"layer{stage}.{block}"
                keys.append(f"{p}.conv{i}.weight")
                keys += [
                    f"{p}.bn{i}.{s}"
                    for s in ("weight", "bias", "running_mean", "running_var")
                ]
    return keys + ["linear.weight", "linear.bias"]


@pytest.mark.parametrize(
    "factory, depth, n_params",
    [(cifar_resnet20, 20, 269_722), (cifar_resnet32, 32, 464_154)],
)
def test_cifar_resnet_structure(factory, depth, n_params):
    net = factory().eval()
    assert _n_params(net) == n_params
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert find_head(net) == "linear"
    keys = [k for k in net.state_dict() if not k.endswith("num_batches_tracked")]
    assert keys == _checkpoint_keys(depth)


def test_cifar_resnet_option_a_shortcut_is_zero_padding():
    net = CifarResNet(depth=8, normalize=False)
    block = net.layer2[0]
    x = torch.rand(2, 16, 8, 8)
    out = block.shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    torch.testing.assert_close(out[:, 8:24], x[:, :, ::2, ::2])
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(depth=21)


def test_cifar_resnet_normalize_inside_and_picklable():
    torch.manual_seed(0)
    plain = CifarResNet(depth=8, normalize=False).eval()
    normed = CifarResNet(depth=8, normalize=True).eval()
    normed.load_state_dict(plain.state_dict())  # same keys: stats not persistent
    x = torch.rand(3, 3, 32, 32)
    mean = torch.tensor(CIFAR_RESNET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_RESNET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(normed(x), plain((x - mean) / std))
    for clone in (copy.deepcopy(normed), pickle.loads(pickle.dumps(normed))):
        torch.testing.assert_close(clone(x), normed(x))
    custom = CifarResNet(depth=8, normalize=((0.5,) * 3, (0.25,) * 3))
    assert isinstance(custom.normalize, Normalize)
    with pytest.raises(ValueError, match="positive"):
        Normalize((0.0,), (0.0,))


def test_read_checkpoint_formats(tmp_path):
    net = cifar_resnet20()
    state = net.state_dict()
    wrapped = {
        "state_dict": {f"module.{k}": v for k, v in state.items()},
        "best_prec1": 1.0,
    }
    torch.save(wrapped, tmp_path / "wrapped.th")
    loaded = read_checkpoint(tmp_path / "wrapped.th")
    assert list(loaded) == list(state)
    other = cifar_resnet20(pretrained_path=tmp_path / "wrapped.th")
    for k, v in state.items():
        assert torch.equal(other.state_dict()[k], v)
    # Another number of classes: backbone loaded, new head kept.
    net100 = cifar_resnet20(num_classes=100, pretrained_path=tmp_path / "wrapped.th")
    assert net100.linear.out_features == 100
    assert torch.equal(net100.conv1.weight, net.conv1.weight)
    with pytest.raises(FileNotFoundError, match="pytorch_resnet_cifar10"):
        read_checkpoint(tmp_path / "missing.th")


@pytest.mark.skipif(
    WEIGHTS is None or not (WEIGHTS / "resnet20-12fca82f.th").exists(),
    reason="../shared/data/cifar10_resnet_weights not present",
)
def test_cifar_resnet20_published_weights():
    path = WEIGHTS / "resnet20-12fca82f.th"
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"state_dict", "best_prec1"}
    names = [k.removeprefix("module.") for k in raw["state_dict"]]
    assert names == _checkpoint_keys(20)
    net = cifar_resnet20(pretrained_path=path).eval()
    torch.testing.assert_close(
        net.conv1.weight, raw["state_dict"]["module.conv1.weight"]
    )
    if JPEGS is None or not JPEGS.is_dir():
        pytest.skip("JPEG CIFAR-10 images not present")
    from PIL import Image

    # 20 images per class (the full 10,000 give 81.03 %, README of the data).
    X, y = [], []
    for label, cls in enumerate(CIFAR10_CLASSES):
        for f in sorted((JPEGS / cls).iterdir())[:20]:
            with Image.open(f) as img:
                X.append(np.asarray(img.convert("RGB")).transpose(2, 0, 1))
            y.append(label)
    X = torch.as_tensor(np.stack(X)).float() / 255.0
    with torch.inference_mode():
        acc = (net(X).argmax(1).numpy() == np.array(y)).mean()
    assert acc > 0.7

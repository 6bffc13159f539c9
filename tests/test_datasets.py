"""Tests for skitl.datasets: label noise, the digits task and the real loaders.

The real-file loaders are tested on tiny files written here (IDX, HDF5,
ImageFolder), so nothing depends on ../shared/data; where that directory
exists, a few extra checks read the real files.
"""

import gzip
import struct

import numpy as np
import pytest
from sklearn.datasets import load_digits

from skitl.datasets import (
    CIFAR10_ASYMMETRIC_PAIRS,
    CIFAR10_CLASSES,
    DIGITS_ASYMMETRIC_PAIRS,
    add_label_noise,
    default_data_dir,
    imagenet_transfer_transform,
    load_cifar10_jpeg,
    load_digits_transfer,
    load_imagenet_to_cifar,
    load_mnist_test,
    load_mnist_usps,
    load_usps_h5,
    read_idx,
)

REAL_DATA = default_data_dir()


def _has_real(*parts):
    return REAL_DATA is not None and REAL_DATA.joinpath(*parts).exists()


# --------------------------------------------------------------------------
# add_label_noise
# --------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.2, 0.37, 0.4, 1.0])
def test_symmetric_noise_exact_count_and_always_wrong(rate):
    y = np.repeat(np.arange(10), 53)
    y_noisy, bad = add_label_noise(y, rate, random_state=0)
    assert bad.sum() == round(rate * len(y))
    np.testing.assert_array_equal(bad, y_noisy != y)
    assert set(np.unique(y_noisy)) <= set(range(10))
    assert y_noisy.dtype == y.dtype
    np.testing.assert_array_equal(y_noisy[~bad], y[~bad])


def test_symmetric_noise_uniform_over_other_classes():
    y = np.zeros(9000, dtype=np.int64)
    y[::2] = 1
    y[::3] = 2
    y_noisy, bad = add_label_noise(y, 1.0, n_classes=4, random_state=1)
    assert bad.all()
    # Class 0 samples go to 1, 2, 3 with about equal frequency (3 = absent
    # from y, reachable because n_classes=4).
    counts = np.bincount(y_noisy[y == 0], minlength=4)
    assert counts[0] == 0
    assert np.all(np.abs(counts[1:] / counts[1:].sum() - 1 / 3) < 0.05)


def test_symmetric_noise_classes_default_to_present_labels():
    y = np.array([3, 7, 9] * 20)
    y_noisy, _ = add_label_noise(y, 0.5, random_state=0)
    assert set(np.unique(y_noisy)) <= {3, 7, 9}


def test_noise_deterministic_and_seed_dependent():
    y = np.repeat(np.arange(5), 40)
    a = add_label_noise(y, 0.3, random_state=3)
    b = add_label_noise(y, 0.3, random_state=3)
    c = add_label_noise(y, 0.3, random_state=4)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    # The input is never modified.
    np.testing.assert_array_equal(y, np.repeat(np.arange(5), 40))


@pytest.mark.parametrize("rate", [0.2, 0.4])
def test_asymmetric_noise_respects_pairs(rate):
    y = np.repeat(np.arange(10), 50)
    y_noisy, bad = add_label_noise(
        y, rate, kind="asymmetric", pairs=DIGITS_ASYMMETRIC_PAIRS, random_state=0
    )
    np.testing.assert_array_equal(bad, y_noisy != y)
    for c in range(10):
        flipped = bad[y == c]
        if c in DIGITS_ASYMMETRIC_PAIRS:
            assert flipped.sum() == round(rate * 50)
            assert np.all(y_noisy[(y == c) & bad] == DIGITS_ASYMMETRIC_PAIRS[c])
        else:
            assert not flipped.any()


def test_asymmetric_cifar_pairs_swap_cat_and_dog():
    assert CIFAR10_ASYMMETRIC_PAIRS == {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
    y = np.repeat(np.arange(10), 20)
    y_noisy, bad = add_label_noise(
        y, 0.5, kind="asymmetric", pairs="cifar10", random_state=0
    )
    assert np.all(y_noisy[(y == 3) & bad] == 5)
    assert np.all(y_noisy[(y == 5) & bad] == 3)
    assert bad.sum() == 5 * 10


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rate=1.5), "rate"),
        (dict(rate=-0.1), "rate"),
        (dict(rate=0.2, kind="pairwise"), "kind"),
        (dict(rate=0.2, kind="asymmetric"), "pairs"),
        (dict(rate=0.2, kind="asymmetric", pairs={1: 1}), "itself"),
        (dict(rate=0.2, kind="asymmetric", pairs="svhn"), "Unknown pairs"),
        (dict(rate=0.2, n_classes=1), "n_classes"),
        (dict(rate=0.2, n_classes=3), "outside"),
    ],
)
def test_noise_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        add_label_noise(np.arange(5), **kwargs)


def test_noise_rejects_string_labels():
    with pytest.raises(ValueError, match="integer labels"):
        add_label_noise(np.array(["a", "b"] * 5), 0.2)


# --------------------------------------------------------------------------
# load_digits_transfer
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return load_digits_transfer(random_state=0)


def test_digits_transfer_shapes_and_dtypes(digits):
    d = digits
    assert d.X_source.shape == (600, 1, 8, 8)
    assert d.X_train.shape == (700, 1, 8, 8)
    assert d.X_test.shape == (1797 - 1300, 1, 8, 8)
    for X in (d.X_source, d.X_train, d.X_test):
        assert X.dtype == np.float32
        assert X.flags["C_CONTIGUOUS"]
        assert X.min() >= 0.0 and X.max() <= 1.0
    for key in ("y_source", "y_train", "y_train_clean", "y_test"):
        assert d[key].dtype == np.int64
    assert d.is_corrupted.dtype == bool
    assert len(d.y_train) == len(d.y_train_clean) == len(d.is_corrupted) == 700
    assert list(d.target_names) == list(range(10))
    assert "rotation" in d.DESCR
    # Stratified: every class in every split.
    for key in ("y_source", "y_train_clean", "y_test"):
        assert len(np.unique(d[key])) == 10


def test_digits_transfer_splits_disjoint_and_labels_real(digits):
    d = digits
    ref = load_digits()
    sets = [set(d.source_indices), set(d.train_indices), set(d.test_indices)]
    assert sum(map(len, sets)) == 1797
    assert len(set.union(*sets)) == 1797
    np.testing.assert_array_equal(d.y_source, ref.target[d.source_indices])
    np.testing.assert_array_equal(d.y_train_clean, ref.target[d.train_indices])
    np.testing.assert_array_equal(d.y_test, ref.target[d.test_indices])
    # Source = original digits; target = shifted (not the originals).
    np.testing.assert_allclose(d.X_source[:, 0], ref.images[d.source_indices] / 16.0)
    orig_test = ref.images[d.test_indices] / 16.0
    assert np.abs(d.X_test[:, 0] - orig_test).mean() > 0.05


def test_digits_transfer_noise_consistency(digits):
    d = digits
    np.testing.assert_array_equal(d.is_corrupted, d.y_train != d.y_train_clean)
    assert d.is_corrupted.sum() == 140  # exactly 0.2 * 700


def test_digits_transfer_deterministic_and_noise_independent_of_split():
    a = load_digits_transfer(random_state=5)
    b = load_digits_transfer(random_state=5)
    for key in ("X_source", "X_train", "X_test", "y_train", "is_corrupted"):
        np.testing.assert_array_equal(a[key], b[key])
    c = load_digits_transfer(random_state=6)
    assert not np.array_equal(a.train_indices, c.train_indices)
    # Changing the noise rate keeps the images and the split.
    clean = load_digits_transfer(noise=0.0, random_state=5)
    np.testing.assert_array_equal(clean.X_train, a.X_train)
    np.testing.assert_array_equal(clean.y_train, clean.y_train_clean)
    assert not clean.is_corrupted.any()


def test_digits_transfer_asymmetric_and_sizes():
    d = load_digits_transfer(
        noise=0.4, noise_kind="asymmetric", n_source=300, n_target_train=500
    )
    assert d.X_source.shape[0] == 300 and d.X_train.shape[0] == 500
    changed = d.y_train_clean[d.is_corrupted]
    assert set(changed) <= set(DIGITS_ASYMMETRIC_PAIRS)
    for src, dst in DIGITS_ASYMMETRIC_PAIRS.items():
        assert np.all(d.y_train[d.is_corrupted & (d.y_train_clean == src)] == dst)


def test_digits_transfer_errors():
    with pytest.raises(ValueError, match="leaves fewer"):
        load_digits_transfer(n_source=1000, n_target_train=790)
    with pytest.raises(ValueError, match="noise_kind"):
        load_digits_transfer(noise_kind="bad")


# --------------------------------------------------------------------------
# IDX / MNIST
# --------------------------------------------------------------------------
def _write_idx(path, array, compress):
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    if compress:
        payload = gzip.compress(payload)
    path.write_bytes(payload)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_roundtrip(tmp_path, compress):
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, size=(7, 5, 4)).astype(np.uint8)
    _write_idx(tmp_path / "x.idx", images, compress)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.idx"), images)
    big = (np.arange(6).reshape(2, 3) * 100000).astype(">i4")
    _write_idx(tmp_path / "y.idx", big, compress)
    out = read_idx(tmp_path / "y.idx")
    assert out.dtype == np.int32 and out.dtype.isnative
    np.testing.assert_array_equal(out, big)


def test_read_idx_errors(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01abc")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    short = bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 3
    (tmp_path / "short").write_bytes(short)
    with pytest.raises(ValueError, match="declares"):
        read_idx(tmp_path / "short")


def _fake_mnist(root, n=30):
    rng = np.random.RandomState(0)
    (root / "mnist").mkdir(parents=True)
    images = rng.randint(0, 256, size=(n, 28, 28)).astype(np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    _write_idx(root / "mnist" / "t10k-images-idx3-ubyte.gz", images, True)
    _write_idx(root / "mnist" / "t10k-labels-idx1-ubyte.gz", labels, True)
    return images, labels


def test_load_mnist_test_tiny(tmp_path):
    images, labels = _fake_mnist(tmp_path)
    X, y = load_mnist_test(tmp_path)
    assert X.shape == (30, 1, 28, 28) and X.dtype == np.uint8
    assert y.dtype == np.int64
    np.testing.assert_array_equal(X[:, 0], images)
    np.testing.assert_array_equal(y, labels)


def test_load_mnist_test_missing_names_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.gz"):
        load_mnist_test(tmp_path)


@pytest.mark.skipif(not _has_real("mnist"), reason="../shared/data/mnist not present")
def test_load_mnist_test_real():
    X, y = load_mnist_test(REAL_DATA)
    assert X.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(
        np.bincount(y), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    )


# --------------------------------------------------------------------------
# USPS (h5) and MNIST -> USPS
# --------------------------------------------------------------------------
def _fake_usps(root, n_train=40, n_test=20):
    h5py = pytest.importorskip("h5py")
    rng = np.random.RandomState(1)
    (root / "usps").mkdir(parents=True, exist_ok=True)
    data = {}
    with h5py.File(root / "usps" / "usps.h5", "w") as fh:
        for split, n in (("train", n_train), ("test", n_test)):
            X = rng.rand(n, 256).astype(np.float32)
            y = (np.arange(n) % 10).astype(np.int32)
            fh.create_dataset(f"{split}/data", data=X)
            fh.create_dataset(f"{split}/target", data=y)
            data[split] = (X, y)
    return data


def test_load_usps_h5_tiny(tmp_path):
    data = _fake_usps(tmp_path)
    d = load_usps_h5(tmp_path)
    assert d.X_train.shape == (40, 1, 16, 16) and d.X_train.dtype == np.float32
    assert d.X_test.shape == (20, 1, 16, 16)
    assert d.y_train.dtype == np.int64
    # Row-major: pixel (r, c) of the image is entry 16 r + c of the row.
    np.testing.assert_array_equal(
        d.X_train[3, 0, 2, 5], data["train"][0][3, 2 * 16 + 5]
    )
    np.testing.assert_array_equal(d.y_test, data["test"][1])


def test_load_usps_h5_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="usps.h5"):
        load_usps_h5(tmp_path)


@pytest.mark.parametrize("size", [16, 28])
def test_load_mnist_usps_tiny(tmp_path, size):
    _fake_mnist(tmp_path, n=50)
    _fake_usps(tmp_path, n_train=60, n_test=20)
    d = load_mnist_usps(tmp_path, size=size, noise=0.2, random_state=0)
    assert d.X_source.shape == (50, 1, size, size)
    assert d.X_train.shape == (60, 1, size, size)
    assert d.X_test.shape == (20, 1, size, size)
    for X in (d.X_source, d.X_train, d.X_test):
        assert X.dtype == np.float32 and 0.0 <= X.min() and X.max() <= 1.0
    assert d.is_corrupted.sum() == 12
    np.testing.assert_array_equal(d.is_corrupted, d.y_train != d.y_train_clean)
    sub = load_mnist_usps(tmp_path, n_source=20, n_target_train=30, random_state=0)
    assert len(sub.y_source) == 20 and len(sub.y_train) == 30
    with pytest.raises(ValueError, match="size"):
        load_mnist_usps(tmp_path, size=32)


@pytest.mark.skipif(not _has_real("usps", "usps.h5"), reason="usps.h5 not present")
def test_load_usps_h5_real():
    pytest.importorskip("h5py")
    d = load_usps_h5(REAL_DATA)
    assert d.X_train.shape == (7291, 1, 16, 16) and d.X_test.shape == (2007, 1, 16, 16)
    np.testing.assert_array_equal(
        np.bincount(d.y_train), [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644]
    )


# --------------------------------------------------------------------------
# CIFAR-10 JPEG folder
# --------------------------------------------------------------------------
def _fake_cifar_folder(root, per_class=4, ext=".png"):
    from PIL import Image

    rng = np.random.RandomState(2)
    pixels = {}
    for label, cls in enumerate(CIFAR10_CLASSES):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.randint(0, 256, size=(32, 32, 3)).astype(np.uint8)
            arr[0, 0] = label  # marks the class in a lossless file
            Image.fromarray(arr).save(root / cls / f"{i:04d}{ext}")
            pixels[(label, i)] = arr
    return pixels


def test_load_cifar10_jpeg_tiny(tmp_path):
    root = tmp_path / "cifar10_test_jpg" / "test"
    pixels = _fake_cifar_folder(root)
    d = load_cifar10_jpeg(tmp_path, n_train=20, noise=0.5, random_state=0)
    assert d.X_train.shape == (20, 3, 32, 32) and d.X_train.dtype == np.uint8
    assert d.X_test.shape == (20, 3, 32, 32)
    assert not set(d.train_indices) & set(d.test_indices)
    # ImageFolder order: index = 4 * label + file number.
    for X, idx, y in (
        (d.X_train, d.train_indices, d.y_train_clean),
        (d.X_test, d.test_indices, d.y_test),
    ):
        np.testing.assert_array_equal(y, idx // 4)
        for row, i in zip(X, idx):
            np.testing.assert_array_equal(
                row.transpose(1, 2, 0), pixels[(i // 4, i % 4)]
            )
    assert d.is_corrupted.sum() == 10
    np.testing.assert_array_equal(d.is_corrupted, d.y_train != d.y_train_clean)
    again = load_cifar10_jpeg(root, n_train=20, noise=0.5, random_state=0)
    np.testing.assert_array_equal(again.X_train, d.X_train)
    np.testing.assert_array_equal(again.y_train, d.y_train)


def test_load_cifar10_jpeg_reads_jpeg(tmp_path):
    _fake_cifar_folder(tmp_path, per_class=2, ext=".jpg")
    d = load_cifar10_jpeg(tmp_path, n_train=10)
    assert d.X_train.shape == (10, 3, 32, 32)
    assert list(d.target_names) == list(CIFAR10_CLASSES)


def test_load_cifar10_jpeg_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar10_test_jpg"):
        load_cifar10_jpeg(tmp_path)


def test_default_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SKITL_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    _fake_mnist(tmp_path, n=10)
    X, _ = load_mnist_test()  # data_dir=None -> the environment variable
    assert X.shape == (10, 1, 28, 28)


# --------------------------------------------------------------------------
# ImageNet -> CIFAR (torchvision datasets; offline: errors and a fake class)
# --------------------------------------------------------------------------
def test_imagenet_transfer_transform():
    import torch
    from PIL import Image

    img = Image.fromarray(np.full((32, 32, 3), 255, dtype=np.uint8))
    out = imagenet_transfer_transform(64)(img)
    assert out.shape == (3, 64, 64)
    expected = (1.0 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225]
    )
    torch.testing.assert_close(out[:, 10, 10], expected)
    assert imagenet_transfer_transform(32, train=True)(img).shape == (3, 32, 32)


def test_load_imagenet_to_cifar_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_imagenet_to_cifar(tmp_path, dataset="cifar10")
    with pytest.raises(ValueError, match="dataset"):
        load_imagenet_to_cifar(tmp_path, dataset="svhn")


def test_load_imagenet_to_cifar_code_path(monkeypatch, tmp_path):
    """The whole path with torchvision's CIFAR10 replaced by a local fake."""
    import torchvision.datasets
    from PIL import Image

    calls = []

    class FakeCIFAR10:
        classes = list(CIFAR10_CLASSES)

        def __init__(self, root, train, download, transform):
            calls.append((root, train, download))
            n = 50 if train else 20
            self.targets = [i % 10 for i in range(n)]
            self.transform = transform

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            img = Image.fromarray(np.full((32, 32, 3), i, dtype=np.uint8))
            return self.transform(img), self.targets[i]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    d = load_imagenet_to_cifar(tmp_path, size=48, n_train=30, noise=0.2)
    assert calls == [(str(tmp_path), True, False), (str(tmp_path), False, False)]
    assert len(d.train) == 30 and len(d.test) == 20
    x, y = d.train[0]
    assert tuple(x.shape) == (3, 48, 48)
    assert y == d.y_train[0]
    assert d.is_corrupted.sum() == 6
    np.testing.assert_array_equal(d.y_train_clean, d.train_indices % 10)
    assert [d.train[i][1] for i in range(30)] == list(d.y_train)

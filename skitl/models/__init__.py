"""Networks for skitl's tasks.

- :class:`SmallCNN` / :func:`make_digits_cnn`: a ~30k-parameter CNN for the
  digits task (head ``fc``), and :func:`pretrain_source_cnn` to pretrain it;
- :class:`CifarResNet` / :func:`cifar_resnet20` / :func:`cifar_resnet32`: the
  CIFAR ResNets with option-A shortcuts, compatible with the published
  pytorch_resnet_cifar10 checkpoints (head ``linear``);
- :class:`Normalize`: per-channel normalisation as a module.
"""

from ._cifar_resnet import (
    CIFAR_RESNET_MEAN,
    CIFAR_RESNET_STD,
    CifarResNet,
    Normalize,
    cifar_resnet20,
    cifar_resnet32,
    read_checkpoint,
)
from ._small import SmallCNN, make_digits_cnn, pretrain_source_cnn

__all__ = [
    "CIFAR_RESNET_MEAN",
    "CIFAR_RESNET_STD",
    "CifarResNet",
    "Normalize",
    "SmallCNN",
    "cifar_resnet20",
    "cifar_resnet32",
    "make_digits_cnn",
    "pretrain_source_cnn",
    "read_checkpoint",
]

"""CIFAR ResNets (He et al., CVPR 2016, section 4.2) with option-A shortcuts.

The 6n+2-layer CIFAR variant: a 3x3 stem with 16 channels, three stages of
n basic blocks with 16, 32 and 64 channels (stride 2 at the start of stages 2
and 3), global average pooling and one linear layer. The parameter names are
those of Yerlan Idelbayev's ``pytorch_resnet_cifar10`` checkpoints
(``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``linear``), so those published
weights load strictly. The option-A shortcut (subsample, then zero-pad the
new channels) is a small named module instead of a lambda, so the network
pickles and deep-copies (skorch and ``GridSearchCV`` need both).
"""

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

#: Per-channel (RGB) mean the published CIFAR ResNet checkpoints were trained
#: with (the ImageNet statistics, which that repository's trainer also used
#: for CIFAR).
CIFAR_RESNET_MEAN = (0.485, 0.456, 0.406)
#: Per-channel (RGB) standard deviation matching :data:`CIFAR_RESNET_MEAN`.
CIFAR_RESNET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` as a module.

    The statistics are *non-persistent* buffers: they follow ``.to(device)``
    and pickling, but are not part of ``state_dict()``, so a network with a
    ``Normalize`` inside still loads checkpoints that lack them.

    Parameters
    ----------
    mean, std : sequence of float
        One value per channel.
    """

    def __init__(self, mean, std):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        if mean.shape != std.shape:
            raise ValueError("mean and std must have the same length.")
        if torch.any(std <= 0):
            raise ValueError("std must be positive.")
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x):
        """Normalise a batch channel by channel.

        Parameters
        ----------
        x : torch.Tensor of shape (N, C, H, W)
            Images with as many channels as ``mean`` has values.

        Returns
        -------
        out : torch.Tensor of shape (N, C, H, W)
            ``(x - mean) / std``, a new tensor.
        """
        return (x - self.mean) / self.std

    def extra_repr(self):
        """The statistics, shown in the module's ``repr``.

        Returns
        -------
        text : str
            ``"mean=[...], std=[...]"``.
        """
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class _ZeroPadShortcut(nn.Module):
    """Option-A shortcut: take every ``stride``-th pixel, zero-pad channels.

    Parameter-free, which is why the checkpoints have no shortcut keys.
    """

    def __init__(self, in_planes, out_planes, stride):
        super().__init__()
        self.stride = stride
        # The published blocks add (out - in) / 2 zero channels on each side.
        self.pad_front = (out_planes - in_planes) // 2
        self.pad_back = out_planes - in_planes - self.pad_front

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_planes, planes, 3, stride=stride, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut = _ZeroPadShortcut(in_planes, planes, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet-(6n+2) with option-A (zero-padding) shortcuts.

    Parameters
    ----------
    depth : int, default=20
        20, 32, 44, 56, 110, ... (``(depth - 2) % 6 == 0``).
    num_classes : int, default=10
        Outputs of the final layer ``linear``.
    normalize : bool or (mean, std), default=True
        ``True`` puts a :class:`Normalize` with :data:`CIFAR_RESNET_MEAN` /
        :data:`CIFAR_RESNET_STD` in front, so the network takes images in
        [0, 1] directly (what ``TransferClassifier`` feeds it); a pair sets
        other statistics; ``False`` expects inputs already normalised. The
        statistics are not in ``state_dict()``, so the keys are exactly the
        published checkpoint's either way.

    Attributes
    ----------
    linear : torch.nn.Linear
        The classification layer (64 features in).
    """

    def __init__(self, depth=20, num_classes=10, normalize=True):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 with n >= 1, got {depth}.")
        n = (depth - 2) // 6
        self.depth = depth
        if normalize is True:
            self.normalize = Normalize(CIFAR_RESNET_MEAN, CIFAR_RESNET_STD)
        elif normalize is False or normalize is None:
            self.normalize = nn.Identity()
        else:
            mean, std = normalize
            self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, stride=1)
        self.layer2 = self._stage(16, 32, n, stride=2)
        self.layer3 = self._stage(32, 64, n, stride=2)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            # He initialisation, as in the paper and the published trainer.
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    def _stage(in_planes, planes, n_blocks, stride):
        blocks = [_BasicBlock(in_planes, planes, stride)]
        blocks += [_BasicBlock(planes, planes, 1) for _ in range(n_blocks - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x):
        """Class scores (logits) of a batch of images.

        Parameters
        ----------
        x : torch.Tensor of shape (N, 3, H, W)
            Images in [0, 1] with the default ``normalize=True`` (32x32 for
            CIFAR; any size works thanks to the global average pooling).

        Returns
        -------
        logits : torch.Tensor of shape (N, num_classes)
            Unnormalised class scores.
        """
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.linear(out)


def read_checkpoint(path):
    """Read a checkpoint file into a plain state dict on the CPU.

    Handles a dict with a ``state_dict`` key and the ``module.`` prefix that
    ``nn.DataParallel`` adds (both present in the published CIFAR ResNet
    files, which also hold CUDA tensors, hence ``map_location="cpu"``).

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Returns
    -------
    state_dict : dict of str to torch.Tensor
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Checkpoint {path!r} not found. The CIFAR-10 ResNet weights "
            "(resnet20-12fca82f.th, resnet32-d509ac18.th) come from "
            "https://github.com/akamaster/pytorch_resnet_cifar10 (pretrained_models/); "
            "offline copies live in ../shared/data/cifar10_resnet_weights/."
        )
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path!r} does not hold a state dict.")
    prefix = "module."
    if obj and all(k.startswith(prefix) for k in obj):
        obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return dict(obj)


def _build(depth, num_classes, pretrained_path, normalize):
    net = CifarResNet(depth=depth, num_classes=num_classes, normalize=normalize)
    if pretrained_path is not None:
        state = read_checkpoint(pretrained_path)
        head_shape = state.get("linear.weight", torch.empty(0)).shape
        if head_shape != net.linear.weight.shape:
            # Transfer to another number of classes: load the backbone
            # strictly, keep the freshly initialised head.
            state = {k: v for k, v in state.items() if not k.startswith("linear.")}
            missing, unexpected = net.load_state_dict(state, strict=False)
            bad = [k for k in missing if not k.startswith("linear.")] + list(unexpected)
            if bad:
                raise RuntimeError(
                    f"Checkpoint {pretrained_path!r} does not match ResNet-{depth}: {bad[:5]}"
                )
        else:
            net.load_state_dict(state, strict=True)
    return net


def cifar_resnet20(num_classes=10, *, pretrained_path=None, normalize=True):
    """CIFAR ResNet-20 (0.27M parameters), optionally with published weights.

    Parameters
    ----------
    num_classes : int, default=10
        Outputs of ``linear``.
    pretrained_path : str or os.PathLike, default=None
        A checkpoint such as ``resnet20-12fca82f.th`` (``state_dict`` key and
        ``module.`` prefix handled), loaded strictly. With ``num_classes``
        other than the checkpoint's, everything but ``linear`` is loaded.
    normalize : bool or (mean, std), default=True
        See :class:`CifarResNet`; ``True`` means the network takes [0, 1]
        images and applies the checkpoints' normalisation itself.

    Returns
    -------
    net : CifarResNet

    Examples
    --------
    >>> import torch
    >>> from skitl.models import cifar_resnet20
    >>> net = cifar_resnet20().eval()
    >>> net(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """
    return _build(20, num_classes, pretrained_path, normalize)


def cifar_resnet32(num_classes=10, *, pretrained_path=None, normalize=True):
    """CIFAR ResNet-32 (0.46M parameters); see :func:`cifar_resnet20`.

    Parameters
    ----------
    num_classes : int, default=10
        Outputs of ``linear``.
    pretrained_path : str or os.PathLike, default=None
        A checkpoint such as ``resnet32-d509ac18.th``.
    normalize : bool or (mean, std), default=True
        See :class:`CifarResNet`.

    Returns
    -------
    net : CifarResNet
    """
    return _build(32, num_classes, pretrained_path, normalize)

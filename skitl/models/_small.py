"""A small CNN for the embedded digits task, and its source pretraining.

The network is deliberately tiny (about 30k parameters, no BatchNorm) so that
the demo, the tests and the CPU benchmarks pretrain and fine-tune it in
seconds, and so that head influence is exact and cheap (64 head features).
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.utils import check_random_state


class SmallCNN(nn.Module):
    """Three-layer CNN for small grey-scale images (8x8 digits and up).

    ``conv(3x3) -> ReLU -> conv(3x3) -> ReLU -> maxpool(2) -> conv(3x3) -> ReLU
    -> global average pool -> fc``. Global pooling makes it work for any input
    size >= 2 pixels (8x8 digits, 16x16 USPS, 28x28 MNIST). No BatchNorm, so
    train / eval mode only switches dropout and small fine-tuning batches
    behave.

    Parameters
    ----------
    n_classes : int, default=10
        Number of outputs of the classification layer ``fc``.
    width : int, default=32
        Channels of the first two convolutions; the third has ``2 * width``,
        which is also the number of head features.
    in_channels : int, default=1
        Input channels.
    dropout : float, default=0.0
        Dropout before ``fc``.

    Attributes
    ----------
    features : torch.nn.Sequential
        The backbone; its output (N, 2 * width) is what the head sees.
    fc : torch.nn.Linear
        The classification layer (skitl finds it by this name).
    """

    def __init__(self, n_classes=10, width=32, in_channels=1, dropout=0.0):
        super().__init__()
        self.n_classes = n_classes
        self.width = width
        self.in_channels = in_channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * width, n_classes)

    def forward(self, x):
        """Class scores (logits) of a batch of images.

        Parameters
        ----------
        x : torch.Tensor of shape (N, in_channels, H, W)
            Images, float; ``H`` and ``W`` at least 2.

        Returns
        -------
        logits : torch.Tensor of shape (N, n_classes)
            Unnormalised class scores (apply a softmax for probabilities).
        """
        return self.fc(self.dropout(self.features(x)))


def make_digits_cnn(n_classes=10, *, width=32, in_channels=1):
    """Factory for :class:`SmallCNN`, usable as ``TransferClassifier(module=...)``.

    Parameters
    ----------
    n_classes : int, default=10
        Number of classes.
    width : int, default=32
        Channel width, see :class:`SmallCNN`.
    in_channels : int, default=1
        Input channels.

    Returns
    -------
    net : SmallCNN
        A freshly initialised network (torch's global RNG decides the weights;
        seed it for repeatability).
    """
    return SmallCNN(n_classes=n_classes, width=width, in_channels=in_channels)


def pretrain_source_cnn(
    X_source,
    y_source,
    *,
    n_classes=None,
    epochs=60,
    batch_size=32,
    lr=3e-3,
    weight_decay=1e-4,
    width=32,
    augment=False,
    random_state=0,
    num_threads=1,
    verbose=0,
):
    """Pretrain a :class:`SmallCNN` on the source domain.

    A plain torch loop (Adam, cosine learning-rate decay, cross-entropy) that
    runs on the CPU in a few seconds for the 600 source digits and is
    deterministic for a fixed ``random_state``: the initial weights, the batch
    order and the augmentation all come from one seeded generator.

    Parameters
    ----------
    X_source : array-like of shape (n_samples, C, H, W)
        Source images, float in [0, 1] (uint8 is scaled by 1/255).
    y_source : array-like of int, shape (n_samples,)
        Labels ``0 .. n_classes - 1``.
    n_classes : int, default=None
        Number of classes; ``None`` uses ``max(y_source) + 1``.
    epochs : int, default=60
        Passes over the source data (about 3 s on 2 CPU cores for 600 digits).
    batch_size : int, default=32
        Mini-batch size.
    lr : float, default=3e-3
        Adam learning rate at the start of the cosine schedule.
    weight_decay : float, default=1e-4
        Adam (L2) weight decay.
    width : int, default=32
        Width of the network, see :class:`SmallCNN`.
    augment : bool, default=False
        Random shifts of up to one pixel (zero padded). Off by default: on 8x8
        digits a one-pixel shift is large and made the pretraining
        seed-dependent (held-out accuracy 0.96 and 0.88 for two seeds with
        it, 0.98 and 0.96 without).
    random_state : int, RandomState instance or None, default=0
        Seed of the initial weights, batch order and augmentation.
    num_threads : int or None, default=1
        torch intra-op threads while training (restored afterwards). One
        thread, because convolutions on 8x8 images are too small to gain from
        more, and on a loaded 2-core machine two threads were measured 12x
        slower than one (oversubscription). ``None`` leaves torch's setting.
    verbose : int, default=0
        Print the training loss every 10 epochs when > 0.

    Returns
    -------
    net : SmallCNN
        The pretrained network, in eval mode, on the CPU.
    """
    X = np.asarray(X_source)
    if X.dtype == np.uint8:
        X = X.astype(np.float32) / 255.0
    X = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32))
    if X.ndim != 4:
        raise ValueError(f"X_source must be (N, C, H, W), got shape {tuple(X.shape)}.")
    y = torch.as_tensor(np.asarray(y_source, dtype=np.int64))
    if y.shape[0] != X.shape[0]:
        raise ValueError("X_source and y_source have different lengths.")
    if n_classes is None:
        n_classes = int(y.max()) + 1

    seed = int(check_random_state(random_state).randint(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    # Initialise under a fork of the global RNG so the weights depend on
    # random_state only, and the caller's global torch RNG is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SmallCNN(n_classes=n_classes, width=width, in_channels=X.shape[1])

    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        _train(net, X, y, gen, epochs, batch_size, lr, weight_decay, augment, verbose)
    finally:
        torch.set_num_threads(previous_threads)
    net.eval()
    return net


def _train(net, X, y, gen, epochs, batch_size, lr, weight_decay, augment, verbose):
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    n = X.shape[0]
    steps = epochs * ((n + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    net.train()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            xb, yb = X[idx], y[idx]
            if augment:
                xb = _random_shift(xb, gen)
            loss = F.cross_entropy(net(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if verbose and (epoch + 1) % 10 == 0:
            print(f"[pretrain] epoch {epoch + 1}/{epochs} loss {total / n:.4f}")


def _random_shift(xb, gen, max_shift=1):
    """Shift each image by up to ``max_shift`` pixels (zero padded)."""
    n, _, h, w = xb.shape
    pad = F.pad(xb, (max_shift,) * 4)
    shifts = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)
    out = torch.empty_like(xb)
    for i in range(n):
        dy, dx = int(shifts[i, 0]), int(shifts[i, 1])
        out[i] = pad[i, :, dy : dy + h, dx : dx + w]
    return out

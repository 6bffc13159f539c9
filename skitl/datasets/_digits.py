"""The embedded transfer task: scikit-learn's digits with a real domain shift.

scikit-learn ships the 1,797 UCI 8x8 digits, so this task needs no download
and runs everywhere (tests, CI, ``skitl demo``). The source domain is the
original digits; the target domain is *different images* of the same classes,
rotated by a fixed angle (plus a per-image jitter) and drawn with thicker,
softer strokes (a Gaussian blur, then each image rescaled to peak 1). This
is the kind of shift between two scanners or writers: a CNN pretrained on the
source loses about a quarter of its accuracy on the target but still
transfers well (see ``DESCR``).
"""

import numpy as np
from scipy import ndimage
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.utils import Bunch, check_random_state

from ._noise import DIGITS_ASYMMETRIC_PAIRS, add_label_noise

_DESCR = """\
Digits transfer task (skitl)
============================

Built from scikit-learn's ``load_digits`` (UCI optical recognition of
handwritten digits, 1,797 images of 8x8 pixels, 10 classes). The images are
split, stratified by class, into three disjoint sets:

- source ({n_source} images): the original digits, scaled to [0, 1];
- target train ({n_train} images): shifted digits with {noise_text};
- target test ({n_test} images): shifted digits, clean labels.

Domain shift applied to every target image: rotation by {rotation:g} degrees
plus a uniform jitter of +-{rotation_jitter:g} degrees (bilinear, zero
padded), Gaussian blur with sigma={blur:g} pixels (thicker, softer strokes),
then rescaling so that the brightest pixel is 1.

Measured with the default shift (``skitl.models.pretrain_source_cnn`` with
its defaults on the 600 source digits; random_state 0-4 for both the split
and the pretraining): accuracy on the *unshifted* versions of the target test
digits 0.95-0.98 (mean 0.96); on the shifted target test digits 0.63-0.78
(mean 0.72) before any adaptation; a logistic-regression head refitted on
the frozen features of the clean target training set recovers 0.92-0.96.

Images are float32 arrays of shape (N, 1, 8, 8) in [0, 1]; labels are int64.
``is_corrupted`` marks the target training samples whose label was changed
(exactly ``y_train != y_train_clean``).
"""


def _shift_domain(images, *, rotation, rotation_jitter, blur, rng):
    """Rotate, blur and re-normalise 8x8 images (float in [0, 1])."""
    angles = rotation + rng.uniform(-rotation_jitter, rotation_jitter, len(images))
    out = np.empty_like(images)
    for i, (img, angle) in enumerate(zip(images, angles)):
        if angle:
            img = ndimage.rotate(img, angle, reshape=False, order=1, mode="constant")
        if blur:
            img = ndimage.gaussian_filter(img, blur)
        img = np.clip(img, 0.0, None)
        peak = img.max()
        out[i] = img / peak if peak > 0 else img
    return out


def load_digits_transfer(
    *,
    noise=0.2,
    noise_kind="symmetric",
    noise_pairs=None,
    n_source=600,
    n_target_train=700,
    rotation=10.0,
    rotation_jitter=5.0,
    blur=0.4,
    random_state=0,
):
    """Load the embedded digits transfer task (source, noisy target, test).

    Parameters
    ----------
    noise : float in [0, 1], default=0.2
        Label-noise rate injected into the target *training* labels only; see
        :func:`add_label_noise`. The source and the test labels stay clean.
    noise_kind : {"symmetric", "asymmetric"}, default="symmetric"
        ``"symmetric"``: exactly ``round(noise * n_target_train)`` labels are
        replaced by a *different* class drawn uniformly. ``"asymmetric"``:
        class-pair flips, ``noise`` of each source class of ``noise_pairs``.
    noise_pairs : dict, default=None
        Flips for ``noise_kind="asymmetric"``; ``None`` means
        :data:`DIGITS_ASYMMETRIC_PAIRS` (2->7, 3->8, 5->6, 6->5, 7->1).
    n_source : int, default=600
        Number of source-domain images.
    n_target_train : int, default=700
        Number of target training images; the remaining
        ``1797 - n_source - n_target_train`` images (497 by default) are the
        target test set.
    rotation : float, default=10.0
        Rotation of the target images, in degrees (counter-clockwise).
    rotation_jitter : float, default=5.0
        Half-width of the uniform per-image jitter added to ``rotation``.
    blur : float, default=0.4
        Standard deviation in pixels of the Gaussian blur that thickens the
        target strokes; 0 disables it.
    random_state : int, RandomState instance or None, default=0
        Controls the split, the per-image jitter and the label noise.

    Returns
    -------
    data : sklearn.utils.Bunch
        With keys

        - ``X_source`` float32 (n_source, 1, 8, 8), ``y_source`` int64;
        - ``X_train`` float32 (n_target_train, 1, 8, 8), ``y_train`` int64
          (noisy), ``y_train_clean`` int64, ``is_corrupted`` bool;
        - ``X_test`` float32, ``y_test`` int64 (clean);
        - ``source_indices``, ``train_indices``, ``test_indices``: rows of
          ``sklearn.datasets.load_digits()`` each set came from (disjoint);
        - ``target_names`` (the digits 0-9), ``DESCR``.

    Examples
    --------
    >>> from skitl.datasets import load_digits_transfer
    >>> data = load_digits_transfer(noise=0.2, random_state=0)
    >>> data.X_train.shape, int(data.is_corrupted.sum())
    ((700, 1, 8, 8), 140)
    """
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    n = len(y)
    for name, value in (("n_source", n_source), ("n_target_train", n_target_train)):
        if not isinstance(value, (int, np.integer)) or value < 10:
            raise ValueError(f"{name} must be an int >= 10, got {value!r}.")
    if n_source + n_target_train > n - 10:
        raise ValueError(
            f"n_source + n_target_train = {n_source + n_target_train} leaves fewer "
            f"than 10 of the {n} digits for the target test set."
        )
    if noise_kind not in ("symmetric", "asymmetric"):
        raise ValueError(
            f"noise_kind must be 'symmetric' or 'asymmetric', got {noise_kind!r}."
        )

    rng = check_random_state(random_state)
    # Independent seeds for each random step, so that changing e.g. the noise
    # rate does not change which images land in which split.
    split_seed, shift_seed, noise_seed = rng.randint(0, 2**31 - 1, size=3)
    idx = np.arange(n)
    src_idx, rest = train_test_split(
        idx, train_size=n_source, stratify=y, random_state=split_seed
    )
    train_idx, test_idx = train_test_split(
        rest, train_size=n_target_train, stratify=y[rest], random_state=split_seed
    )
    src_idx, train_idx, test_idx = (
        np.sort(src_idx),
        np.sort(train_idx),
        np.sort(test_idx),
    )

    shift_rng = np.random.RandomState(shift_seed)
    target_idx = np.concatenate([train_idx, test_idx])
    shifted = _shift_domain(
        images[target_idx],
        rotation=rotation,
        rotation_jitter=rotation_jitter,
        blur=blur,
        rng=shift_rng,
    )
    X_train, X_test = shifted[: len(train_idx)], shifted[len(train_idx) :]

    y_train_clean = y[train_idx]
    pairs = DIGITS_ASYMMETRIC_PAIRS if noise_pairs is None else noise_pairs
    y_train, is_corrupted = add_label_noise(
        y_train_clean,
        noise,
        kind=noise_kind,
        pairs=pairs,
        n_classes=10,
        random_state=noise_seed,
    )

    if noise == 0:
        noise_text = "clean labels"
    elif noise_kind == "symmetric":
        noise_text = f"{noise:g} symmetric label noise (always a wrong class)"
    else:
        noise_text = f"{noise:g} asymmetric label noise (flips {pairs})"
    descr = _DESCR.format(
        n_source=len(src_idx),
        n_train=len(train_idx),
        n_test=len(test_idx),
        noise_text=noise_text,
        rotation=rotation,
        rotation_jitter=rotation_jitter,
        blur=blur,
    )
    return Bunch(
        X_source=np.ascontiguousarray(images[src_idx][:, None]),
        y_source=y[src_idx],
        X_train=np.ascontiguousarray(X_train[:, None]),
        y_train=y_train,
        y_train_clean=y_train_clean,
        is_corrupted=is_corrupted,
        X_test=np.ascontiguousarray(X_test[:, None]),
        y_test=y[test_idx],
        source_indices=src_idx,
        train_indices=train_idx,
        test_indices=test_idx,
        target_names=np.arange(10),
        DESCR=descr,
    )

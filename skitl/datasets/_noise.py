"""Label-noise injection for benchmarks on noisy target labels.

Two kinds of noise, both exact rather than Bernoulli so that a benchmark at
``rate=0.2`` really has 20 % corrupted labels in every seed:

- ``"symmetric"``: exactly ``round(rate * n)`` samples, chosen at random, get a
  label drawn uniformly from the *other* classes (never the true one, so every
  selected sample is really corrupted);
- ``"asymmetric"``: class-pair flips (``src -> dst``), the realistic confusion
  of similar classes; within each source class exactly ``round(rate * n_c)``
  samples are flipped to the destination class.
"""

import numbers

import numpy as np
from sklearn.utils import check_random_state

#: Asymmetric label noise for digits, ``{true class: noisy class}``: the
#: confusions that look plausible for handwriting (2->7, 3->8, 5<->6, 7->1).
DIGITS_ASYMMETRIC_PAIRS = {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}

#: Asymmetric label noise for CIFAR-10, ``{true class: noisy class}``: the pairs
#: of Patrini et al. (CVPR 2017) used by most noisy-label papers,
#: truck->automobile, bird->airplane, deer->horse, cat<->dog.
CIFAR10_ASYMMETRIC_PAIRS = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}

_NAMED_PAIRS = {
    "digits": DIGITS_ASYMMETRIC_PAIRS,
    "mnist": DIGITS_ASYMMETRIC_PAIRS,
    "usps": DIGITS_ASYMMETRIC_PAIRS,
    "cifar10": CIFAR10_ASYMMETRIC_PAIRS,
}


def _check_rate(rate):
    if (
        not isinstance(rate, numbers.Real)
        or isinstance(rate, bool)
        or not np.isfinite(rate)
        or not 0.0 <= rate <= 1.0
    ):
        raise ValueError(f"rate must be a number in [0, 1], got {rate!r}.")
    return float(rate)


def _check_pairs(pairs):
    if pairs is None:
        raise ValueError(
            "kind='asymmetric' needs pairs: a dict {source_class: target_class}, "
            "or one of " + ", ".join(repr(k) for k in _NAMED_PAIRS) + "."
        )
    if isinstance(pairs, str):
        try:
            pairs = _NAMED_PAIRS[pairs.lower()]
        except KeyError:
            raise ValueError(
                f"Unknown pairs={pairs!r}; use a dict or one of "
                + ", ".join(repr(k) for k in _NAMED_PAIRS)
                + "."
            ) from None
    if not isinstance(pairs, dict) or not pairs:
        raise ValueError(f"pairs must be a non-empty dict src -> dst, got {pairs!r}.")
    for src, dst in pairs.items():
        if src == dst:
            raise ValueError(f"pairs maps class {src!r} to itself; that is no noise.")
    return pairs


def add_label_noise(
    y, rate, *, kind="symmetric", pairs=None, n_classes=None, random_state=None
):
    """Corrupt a fraction of integer labels.

    Parameters
    ----------
    y : array-like of int, shape (n_samples,)
        Clean labels.
    rate : float in [0, 1]
        ``"symmetric"``: fraction of all samples whose label is replaced
        (exactly ``round(rate * n_samples)`` of them). ``"asymmetric"``:
        fraction of the samples of each source class in ``pairs`` that are
        flipped (exactly ``round(rate * n_c)`` per source class); samples of
        other classes are never touched.
    kind : {"symmetric", "asymmetric"}, default="symmetric"
        Noise model: a uniformly drawn wrong class, or class-pair flips
        (see ``rate`` and ``pairs``).
    pairs : dict or {"digits", "mnist", "usps", "cifar10"}, default=None
        For ``kind="asymmetric"``: class flips ``{source: destination}``,
        applied to the *clean* label (so ``{3: 5, 5: 3}`` swaps cat and dog
        samples in both directions). A string picks
        :data:`DIGITS_ASYMMETRIC_PAIRS` or :data:`CIFAR10_ASYMMETRIC_PAIRS`.
        Ignored for symmetric noise.
    n_classes : int, default=None
        For ``kind="symmetric"``: the replacement label is drawn from
        ``range(n_classes)`` minus the true class. ``None`` uses the classes
        present in ``y`` (``np.unique(y)``); pass ``n_classes`` when a
        subset may lack a class.
    random_state : int, RandomState instance or None, default=None
        Makes the corruption repeatable.

    Returns
    -------
    y_noisy : ndarray, shape (n_samples,)
        Noisy labels, same dtype as ``y``.
    is_corrupted : ndarray of bool, shape (n_samples,)
        Exactly ``y_noisy != y``.

    Examples
    --------
    >>> import numpy as np
    >>> from skitl.datasets import add_label_noise
    >>> y = np.repeat(np.arange(10), 10)
    >>> y_noisy, bad = add_label_noise(y, 0.2, random_state=0)
    >>> int(bad.sum()), bool(np.all(y_noisy[bad] != y[bad]))
    (20, True)
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D, got shape {y.shape}.")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        # Float labels that are whole numbers (e.g. from a CSV) are accepted;
        # anything else would be silently mangled by the class arithmetic.
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            pass
        else:
            raise ValueError(
                f"add_label_noise needs integer labels, got dtype {y.dtype}; "
                "encode them first (sklearn.preprocessing.LabelEncoder)."
            )
    rate = _check_rate(rate)
    rng = check_random_state(random_state)
    y_noisy = y.copy()
    n = y.shape[0]

    if kind == "symmetric":
        if n_classes is None:
            classes = np.unique(y)
        else:
            if not isinstance(n_classes, numbers.Integral) or n_classes < 2:
                raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}.")
            classes = np.arange(n_classes)
            if n and (y.min() < 0 or y.max() >= n_classes):
                raise ValueError(f"y has labels outside range({n_classes}).")
        n_flip = int(round(rate * n))
        if n_flip == 0:
            return y_noisy, np.zeros(n, dtype=bool)
        if classes.size < 2:
            raise ValueError("Symmetric noise needs at least 2 classes.")
        idx = rng.choice(n, size=n_flip, replace=False)
        # Draw an offset in 1..k-1 and add it modulo k to the class position:
        # uniform over the other k-1 classes, never the true one.
        pos = np.searchsorted(classes, y[idx])
        offset = rng.randint(1, classes.size, size=n_flip)
        y_noisy[idx] = classes[(pos + offset) % classes.size]
    elif kind == "asymmetric":
        pairs = _check_pairs(pairs)
        for src in sorted(pairs):
            members = np.flatnonzero(y == src)
            n_flip = int(round(rate * members.size))
            if n_flip == 0:
                continue
            chosen = rng.choice(members, size=n_flip, replace=False)
            y_noisy[chosen] = pairs[src]
    else:
        raise ValueError(f"kind must be 'symmetric' or 'asymmetric', got {kind!r}.")

    return y_noisy, y_noisy != y

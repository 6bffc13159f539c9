"""Device and seeding helpers shared by every floor of skitl.

The one place where a scikit-learn ``random_state`` becomes torch randomness.
"""

import contextlib

import numpy as np
import torch
from sklearn.utils import check_random_state


def resolve_device(device="auto"):
    """Return a concrete torch device string.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda", "cuda:N", "mps"} or torch.device, default="auto"
        ``"auto"`` picks CUDA when it is available and the CPU otherwise.

    Returns
    -------
    device : str
        A device string torch accepts.
    """
    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(f"device must be a string or torch.device, got {device!r}.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available.")
    return device


def torch_seed(random_state):
    """Derive an integer torch seed from a scikit-learn ``random_state``.

    Parameters
    ----------
    random_state : int, RandomState instance or None
        ``None`` gives a fresh, unrepeatable seed; an int always gives the same
        seed.

    Returns
    -------
    seed : int
        A seed in ``[0, 2**31 - 1)``.
    """
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        return int(random_state) % (2**31 - 1)
    rng = check_random_state(random_state)
    return int(rng.randint(0, 2**31 - 1))


def torch_generator(random_state):
    """A CPU ``torch.Generator`` seeded from ``random_state``.

    Parameters
    ----------
    random_state : int, RandomState instance or None
        Turned into a seed with :func:`torch_seed`.

    Returns
    -------
    generator : torch.Generator
        A new generator; the global one is untouched.
    """
    gen = torch.Generator()
    gen.manual_seed(torch_seed(random_state))
    return gen


@contextlib.contextmanager
def seeded(random_state, device="cpu"):
    """Seed torch's global generators for a block, then restore them.

    Parameters
    ----------
    random_state : int, RandomState instance or None
        Turned into a torch seed with :func:`torch_seed`.
    device : str or torch.device, default="cpu"
        A CUDA device's generator is seeded (and restored) too.

    Yields
    ------
    seed : int
        The torch seed used.
    """
    seed = torch_seed(random_state)
    devices = []
    if str(device).startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index
        devices = [torch.cuda.current_device() if index is None else index]
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        for d in devices:
            with torch.cuda.device(d):
                torch.cuda.manual_seed(seed)
        yield seed

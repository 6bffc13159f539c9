"""Process-wide numeric settings that skitl switches for its own work only.

Both context managers restore the previous state on exit, also when the
block raises, so a caller's own thread or denormal settings survive a call
into skitl.
"""

import contextlib

import torch


def _flush_denormal_is_on():
    # torch has no getter: a float32 subnormal survives x * 1 only when
    # flush-to-zero is off.
    tiny = torch.tensor([1e-40], dtype=torch.float32)
    return bool((tiny * 1.0)[0] == 0)


@contextlib.contextmanager
def flush_denormal():
    """Flush subnormal floats to zero on the CPU for a block, then restore.

    Small pretrained CNNs produce subnormal activations and gradients that
    x86 CPUs process up to ~20x slower; flushing them changes no result
    beyond 1e-38. The previous setting is restored, also on exceptions.

    Yields
    ------
    supported : bool
        Whether this CPU supports flushing (``torch.set_flush_denormal``).

    Examples
    --------
    >>> import torch
    >>> from skitl.utils import flush_denormal
    >>> with flush_denormal():
    ...     x = torch.tensor([1e-40]) * 1.0
    """
    before = _flush_denormal_is_on()
    supported = torch.set_flush_denormal(True)
    try:
        yield supported
    finally:
        if supported:
            torch.set_flush_denormal(before)


@contextlib.contextmanager
def limit_threads(n_threads=1):
    """Cap the threads of torch and of the BLAS / OpenMP pools for a block.

    Sets ``torch.set_num_threads`` and, through ``threadpoolctl``, the
    BLAS (MKL, OpenBLAS, BLIS) and OpenMP pools of every loaded library to
    at most ``n_threads``, and restores both afterwards, also on exceptions.
    The cap never raises a count that is already lower.

    skitl wraps its small float64 head algebra in it: its matrix products
    have a few thousand to a few million entries, where forking a parallel
    region costs more than it saves, and two threads on a 2-core machine
    that is also running other work made the head influence twice as slow
    as one.

    Parameters
    ----------
    n_threads : int or None, default=1
        Largest number of threads; ``None`` leaves everything unchanged.

    Yields
    ------
    n_threads : int
        The torch intra-op thread count inside the block.

    Examples
    --------
    >>> import torch
    >>> from skitl.utils import limit_threads
    >>> with limit_threads(1):
    ...     torch.get_num_threads()
    1
    """
    if n_threads is not None and (isinstance(n_threads, bool) or int(n_threads) < 1):
        raise ValueError(f"n_threads must be an int >= 1 or None, got {n_threads!r}.")
    before = torch.get_num_threads()
    if n_threads is None or before <= n_threads:
        yield before
        return
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(int(n_threads))
    try:
        with threadpool_limits(limits=int(n_threads)):
            yield int(n_threads)
    finally:
        torch.set_num_threads(before)

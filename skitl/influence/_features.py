"""One streamed forward pass that returns the input of a chosen layer."""

import contextlib
import os
import tempfile

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..utils import check_X

_AMP_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
               "fp16": torch.float16, "float16": torch.float16}


def _first(batch):
    # Datasets yield (x, y), [x, y] or x alone.
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def iter_batches(X, batch_size, *, with_index=False):
    """Yield input batches from an array or a torch Dataset.

    Parameters
    ----------
    X : ndarray or torch Dataset
    batch_size : int
    with_index : bool, default=False
        Also yield the slice of sample indices.

    Yields
    ------
    x : torch.Tensor
        A CPU batch (arrays are wrapped without copying).
    """
    if isinstance(X, np.ndarray):
        for s in range(0, len(X), batch_size):
            xb = torch.from_numpy(X[s:s + batch_size])
            yield (xb, slice(s, s + len(xb))) if with_index else xb
        return
    loader = DataLoader(X, batch_size=batch_size, shuffle=False)
    s = 0
    for batch in loader:
        xb = _first(batch)
        if not isinstance(xb, torch.Tensor):
            xb = torch.as_tensor(np.asarray(xb))
        yield (xb, slice(s, s + len(xb))) if with_index else xb
        s += len(xb)


@contextlib.contextmanager
def eval_mode(net):
    """Put ``net`` in eval mode and restore each submodule's previous mode."""
    modes = {m: m.training for m in net.modules()}
    net.eval()
    try:
        yield net
    finally:
        for m, mode in modes.items():
            m.training = mode


def _autocast(amp, device):
    if amp is None:
        return contextlib.nullcontext()
    if amp not in _AMP_DTYPES:
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}.")
    dev_type = torch.device(device).type
    if dev_type == "cpu" and _AMP_DTYPES[amp] == torch.float16:
        raise ValueError("amp='fp16' needs a CUDA device; use amp='bf16' on the CPU.")
    return torch.autocast(dev_type, dtype=_AMP_DTYPES[amp])


def _model_device(net):
    for p in net.parameters():
        return p.device
    for b in net.buffers():
        return b.device
    return None


def _open_output(out, n, d):
    """Create the ``.npy`` file for ``out``; returns ``(path, data_offset)``."""
    path = os.fspath(out)
    if os.path.isdir(path):
        fd, path = tempfile.mkstemp(prefix="features-", suffix=".npy", dir=path)
        os.close(fd)
    elif not path.endswith(".npy"):
        raise ValueError(f"out must be a directory or a path ending in '.npy', got {path!r}.")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"out={path!r}: the directory {parent!r} does not exist.")
    # open_memmap writes the .npy header and sizes the file (sparse on most
    # file systems); the rows are then written through a plain file handle so
    # that they never count in this process's resident memory.
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    offset = mm.offset
    del mm
    return path, offset


def extract_features(net, X, *, layer=None, batch_size=256, device="cpu", amp=None,
                     verbose=0, out=None):
    """Stream ``X`` through ``net`` once and return a layer's input as features.

    The network runs in eval mode under ``torch.inference_mode`` (BatchNorm
    uses its running statistics, dropout is off); the previous train/eval
    state of every submodule is restored afterwards and no weight changes.
    If ``net`` lives on another device it is moved to ``device`` for the
    pass and moved back afterwards.

    Parameters
    ----------
    net : torch.nn.Module
        The network (never modified).
    X : ndarray or torch Dataset
        Inputs (validated with :func:`skitl.utils.check_X`); a Dataset yields
        ``(x, y)`` or ``x``.
    layer : str, optional
        Dotted name of a submodule; its flattened *input* is returned (a
        forward pre-hook), so ``layer=head_name`` gives the head's features.
        ``None`` returns the flattened network output.
    batch_size : int, default=256
        Samples per forward batch.
    device : str, default="cpu"
        Device of the forward pass.
    amp : {None, "bf16", "fp16"}, default=None
        Autocast dtype for the forward pass (fp16 only on CUDA). Features
        are returned in float32 either way.
    verbose : int, default=0
        Show a progress bar when > 0.
    out : str or path-like, optional
        Write the features to disk instead of memory: a path ending in
        ``.npy`` (created or overwritten) or an existing directory, in which
        a new uniquely named ``features-*.npy`` file is created. Batches are
        written as they are computed, so memory does not grow with the
        number of samples; the result is a read-only ``numpy.memmap`` of that
        file, which every function of :mod:`skitl.influence` reads by chunks
        (``numpy.load(path, mmap_mode="r")`` reopens it). The caller owns the
        file: delete it (or the directory) when done, after dropping the
        returned memmap. On error a file created here is removed.

    Returns
    -------
    features : ndarray or numpy.memmap of float32 of shape (n_samples, n_features)
        In memory, or a read-only memmap of the ``.npy`` file when ``out`` is
        given (its path is ``features.filename``).

    Raises
    ------
    ValueError
        If ``layer`` is not a submodule, the network produces NaN/inf, or
        ``out`` is neither a directory nor a ``.npy`` path.
    """
    X = check_X(X)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    n = len(X)
    captured = {}
    handle = None
    if layer is not None:
        try:
            sub = net.get_submodule(layer)
        except AttributeError as exc:
            raise ValueError(f"layer={layer!r} is not a submodule of "
                             f"{type(net).__name__}.") from exc

        def hook(module, args):
            captured["x"] = args[0]

        handle = sub.register_forward_pre_hook(hook)
    orig_device = _model_device(net)
    moved = orig_device is not None and orig_device != torch.device(device)
    result = path = sink = None
    n_bad = 0
    try:
        if moved:
            net.to(device)
        non_blocking = torch.device(device).type == "cuda"
        with eval_mode(net), torch.inference_mode(), _autocast(amp, device):
            bar = tqdm(total=n, desc="features", disable=verbose <= 0, leave=False)
            for xb, sl in iter_batches(X, batch_size, with_index=True):
                xb = xb.to(device, non_blocking=non_blocking)
                if xb.dtype == torch.uint8:
                    xb = xb.float() / 255.0
                y = net(xb)
                f = captured.pop("x") if layer is not None else y
                f = f.reshape(len(xb), -1).float()
                n_bad += int((~torch.isfinite(f)).sum())
                f = f.cpu().numpy()
                if sink is None and result is None:
                    if out is None:
                        result = np.empty((n, f.shape[1]), dtype=np.float32)
                    else:
                        path, offset = _open_output(out, n, f.shape[1])
                        sink = open(path, "r+b")
                        sink.seek(offset)
                if sink is not None:
                    sink.write(np.ascontiguousarray(f).tobytes())
                else:
                    result[sl] = f
                bar.update(len(xb))
            bar.close()
        if sink is not None:
            sink.close()
            sink = None
        if n_bad:
            raise ValueError(
                "The network produced NaN or infinite features "
                f"({n_bad} entries); check the weights, the input scale, or "
                "disable amp.")
        if path is not None:
            result = np.load(path, mmap_mode="r")
            path = None  # handed over to the caller
    finally:
        if handle is not None:
            handle.remove()
        if moved:
            net.to(orig_device)
        if sink is not None:
            sink.close()
        if path is not None and os.path.exists(path):
            os.remove(path)
    return result

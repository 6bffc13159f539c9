"""Frozen-prefix caching: run the part of a network before the analysed parameters once.

When every analysed parameter lives after some point of the forward pass
through which *all* information flows (a "cut": the last block and the head
of a ResNet, the tail of an ``nn.Sequential``), the activations at that point
do not depend on the analysed parameters. They are computed once, in
inference mode, and every gradient, Hessian-vector product and score then
runs through the suffix alone.

The cut is found on the ``torch.fx`` graph of the network: walking the nodes in
execution order, a position is a valid cut when exactly one tensor computed at
or before it is still used after it (no skip connection jumps over it) and no
analysed parameter has been used yet. The latest such position before the
first use of an analysed parameter is taken. Networks that ``torch.fx`` cannot
trace, or without a useful cut, keep the uncached path.
"""

import os
import shutil
import tempfile
import weakref

import numpy as np
import torch
import torch.fx as fx
from tqdm.auto import tqdm

from ..utils import check_X
from ._features import eval_mode, iter_batches
from ._params import select_parameters

#: Caches larger than this many bytes are memory-mapped to a temporary file.
MEMMAP_BYTES = 1 << 30


class _Cut:
    """A network split into ``prefix`` (input -> activation) and ``suffix``."""

    def __init__(self, prefix, suffix, node_name, prefix_tensors):
        self.prefix = prefix
        self.suffix = suffix
        self.node_name = node_name
        self._prefix_tensors = prefix_tensors

    def fingerprint(self):
        # In-place changes (optimizer steps, load_state_dict, copy_) bump a
        # tensor's version counter; replacing a tensor changes its identity.
        return tuple((id(t), t._version) for t in self._prefix_tensors)


def _owner_modules(names):
    owners = set()
    for name in names:
        parts = name.split(".")
        for i in range(len(parts)):
            owners.add(".".join(parts[:i]))
    return owners


def _uses_analysed(node, names, owners):
    if node.op == "call_module":
        target = node.target
        return any(n.startswith(target + ".") for n in names)
    if node.op == "get_attr":
        target = node.target
        return target in names or target in owners
    return False


def find_cut(net, names):
    """Split ``net`` at the latest point before the analysed parameters.

    Parameters
    ----------
    net : torch.nn.Module
        A network taking one tensor and returning one tensor of logits.
    names : list of str
        Names of the analysed parameters (``net.named_parameters()`` names).

    Returns
    -------
    cut : _Cut or None
        ``None`` when the network cannot be traced by ``torch.fx``, returns
        something other than a tensor, or has no cut after its input that
        precedes every analysed parameter.
    """
    names = list(names)
    try:
        gm = fx.symbolic_trace(net)
    except Exception:  # control flow, len() of a proxy, ...: keep the plain path
        return None
    nodes = list(gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        return None
    owners = _owner_modules(names)
    first = next((i for i, n in enumerate(nodes) if _uses_analysed(n, names, owners)), None)
    if first is None:
        return None
    index = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max((index[u] for u in n.users), default=-1) for n in nodes}
    # Sweep: after position i, the live tensors are those computed at or
    # before i and used after i; constants (get_attr) do not count.
    live = set()
    cut = None
    for i, node in enumerate(nodes[:first]):
        live = {m for m in live if last_use[m] > i}
        if node.op != "get_attr" and last_use[node] > i:
            live.add(node)
        if i > 0 and live == {node} and node.op != "placeholder":
            cut = i
    if cut is None:
        return None
    a = nodes[cut]
    prefix_graph = fx.Graph()
    env = {}
    for node in nodes[:cut + 1]:
        env[node] = prefix_graph.node_copy(node, lambda n: env[n])
    prefix_graph.output(env[a])
    suffix_graph = fx.Graph()
    senv = {a: suffix_graph.placeholder("activation")}
    for node in nodes[:cut]:
        if node.op == "get_attr" and last_use[node] > cut:
            senv[node] = suffix_graph.node_copy(node, lambda n: senv[n])
    for node in nodes[cut + 1:]:
        senv[node] = suffix_graph.node_copy(node, lambda n: senv[n])
    try:
        prefix = fx.GraphModule(net, prefix_graph)
        suffix = fx.GraphModule(net, suffix_graph)
    except Exception:
        return None
    suffix_params = dict(suffix.named_parameters())
    if any(n not in suffix_params for n in names):
        return None
    in_suffix = {id(t) for t in suffix_params.values()}
    prefix_tensors = [t for t in list(prefix.parameters()) + list(prefix.buffers())
                      if id(t) not in in_suffix]
    return _Cut(prefix, suffix, a.name, prefix_tensors)


class PrefixCache:
    """Activations of a network at its cut point, for reuse across influence calls.

    Built by :func:`prefix_cache`; pass it (or ``cache.rows(idx)``) to
    :func:`deep_influence` in place of ``X_train`` / ``X_val``. The cross-fitted
    selector scores several folds of the same ``X``: one cache for all rows
    runs the frozen part of the network once instead of once per fold.

    Parameters
    ----------
    activations : ndarray or numpy.memmap of shape (n_all, ...)
        Activations of every row the cache was built on (float32, or
        float64 for a float64 network); a ``numpy.memmap`` in a temporary
        directory (removed with the cache) when larger than ``memmap_bytes``.
    cut : str
        Name of the ``torch.fx`` node whose output is cached.
    fingerprint : tuple
        Identity and version of every prefix parameter and buffer when the
        cache was built (a later in-place change makes the cache stale).
    indices : array-like of int, optional
        Rows of ``activations`` this view covers (``None``: all, in order).
    tmpdir : str, optional
        Directory of the memory map, if any.

    Attributes
    ----------
    activations : ndarray or numpy.memmap of shape (n_all, ...)
        The cached activations (shared by every view).
    indices : ndarray of int or None
        Rows of ``activations`` this view covers.
    cut : str
        Name of the cached ``torch.fx`` node.
    """

    def __init__(self, activations, cut, fingerprint, indices=None, tmpdir=None):
        self.activations = activations
        self.cut = cut
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        self._fingerprint = fingerprint
        self._tmpdir = tmpdir

    def __len__(self):
        return len(self.activations) if self.indices is None else len(self.indices)

    def rows(self, indices):
        """A view of some rows, sharing the cached activations.

        Parameters
        ----------
        indices : array-like of int
            Row positions within this view.

        Returns
        -------
        cache : PrefixCache
        """
        indices = np.asarray(indices)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        base = np.arange(len(self)) if self.indices is None else self.indices
        view = PrefixCache(self.activations, self.cut, self._fingerprint, base[indices],
                           self._tmpdir)
        return view

    def iter_batches(self, batch_size):
        """Yield batches of activations as fresh tensors.

        Fresh copies: the suffix may modify its input in place (``ReLU(inplace=True)``).

        Parameters
        ----------
        batch_size : int
            Rows per batch.

        Yields
        ------
        x : torch.Tensor
            A batch of activations.
        rows : slice
            Its positions within this view.
        """
        for s in range(0, len(self), batch_size):
            sl = slice(s, min(s + batch_size, len(self)))
            rows = sl if self.indices is None else self.indices[sl]
            yield torch.from_numpy(np.array(self.activations[rows])), sl

    def check(self, cut):
        """Raise unless this cache was computed for ``cut`` with the same prefix weights.

        Parameters
        ----------
        cut : _Cut or None
            The network's cut point for the analysed parameters.

        Raises
        ------
        ValueError
            Another cut point, or prefix weights changed since the cache was built.
        """
        if cut is None or cut.node_name != self.cut:
            where = "none" if cut is None else repr(cut.node_name)
            raise ValueError(
                f"This PrefixCache holds the activations at {self.cut!r}, but for these "
                f"params the network's cut point is {where}: build the cache with the "
                "same params, or pass the raw inputs.")
        if cut.fingerprint() != self._fingerprint:
            raise ValueError(
                "The network's parameters before the cut point changed since this "
                "PrefixCache was built; build a new cache.")


def _remove_dir(path):
    shutil.rmtree(path, ignore_errors=True)


def prefix_cache(net, X, *, params, cut=None, batch_size=256, device="cpu",
                 memmap_bytes=MEMMAP_BYTES, verbose=0):
    """Run the frozen prefix of ``net`` over ``X`` once and keep its output.

    Parameters
    ----------
    net : torch.nn.Module
        The network; never modified. Run in eval mode under
        ``torch.inference_mode``.
    X : ndarray or torch Dataset
        Inputs (uint8 images are scaled to [0, 1]).
    params : "all", str or list of str
        The analysed parameters, as for :func:`deep_influence`; they decide
        the cut point.
    cut : _Cut, optional
        A precomputed cut (internal use).
    batch_size : int, default=256
        Rows per forward batch.
    device : str, default="cpu"
        Where the prefix runs (the network is moved there and back).
    memmap_bytes : int, default=2**30
        Above this size the activations go to a ``numpy.memmap`` in a
        temporary directory, removed when the cache is garbage collected.
    verbose : int, default=0
        Show a progress bar when > 0.

    Returns
    -------
    cache : PrefixCache

    Raises
    ------
    ValueError
        When the analysed parameters are not a suffix of the network (or it
        cannot be traced by ``torch.fx``): then there is nothing to cache.
    """
    if cut is None:
        cut = find_cut(net, select_parameters(net, params))
    if cut is None:
        raise ValueError(
            f"params={params!r} do not form a suffix of {type(net).__name__} that "
            "torch.fx can split off (a skip connection jumps over every candidate "
            "cut, or the network cannot be traced); nothing to cache.")
    X = check_X(X, name="X")
    n = len(X)
    acts, tmpdir = None, None
    first = next(iter(net.parameters()))
    orig, dtype_in = first.device, first.dtype
    try:
        net.to(device)
        with eval_mode(net), torch.inference_mode():
            bar = tqdm(total=n, desc="prefix", disable=verbose <= 0, leave=False)
            for xb, sl in iter_batches(X, batch_size, with_index=True):
                if xb.dtype == torch.uint8:
                    xb = xb.float() / 255.0
                a = cut.prefix(xb.to(device=device, dtype=dtype_in))
                if acts is None:
                    # float32 unless the network computes in float64.
                    dtype = np.float64 if a.dtype == torch.float64 else np.float32
                    shape = (n, *a.shape[1:])
                    nbytes = np.dtype(dtype).itemsize * int(np.prod(shape))
                    if nbytes > memmap_bytes:
                        tmpdir = tempfile.mkdtemp(prefix="skitl-prefix-")
                        acts = np.memmap(os.path.join(tmpdir, "activations.bin"),
                                         dtype=dtype, mode="w+", shape=shape)
                    else:
                        acts = np.empty(shape, dtype=dtype)
                acts[sl] = a.cpu().numpy()
                bar.update(len(xb))
            bar.close()
    finally:
        net.to(orig)
    if not np.isfinite(acts).all():
        raise ValueError("The network produced NaN or infinite activations before the "
                         "analysed parameters; check the weights and the input scale.")
    cache = PrefixCache(acts, cut.node_name, cut.fingerprint(), tmpdir=tmpdir)
    if tmpdir is not None:
        weakref.finalize(cache, _remove_dir, tmpdir)
    return cache

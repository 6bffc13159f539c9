"""The training-loss curvature as one matrix-free operator over the analysed parameters.

The deep solvers (CG, LiSSA, Arnoldi, EK-FAC, identity) all take a
:class:`CurvatureOperator`; it owns the network-as-a-function, the training
data (raw inputs or cached prefix activations) and the definition of the
objective ``(1/n) Σ L_i + (alpha/2) ‖θ‖²`` (biases not penalised).
"""

import numpy as np
import torch
import torch.nn.functional as nnf
from torch.func import functional_call, grad, jvp, vjp
from tqdm.auto import tqdm

from ._features import iter_batches
from ._prefix import PrefixCache

_PROBE_ROWS = 256


class _Flat:
    """Map between a dict of parameter tensors and one flat vector."""

    def __init__(self, tensors):
        self.names = list(tensors)
        self.shapes = [tensors[n].shape for n in self.names]
        self.sizes = [tensors[n].numel() for n in self.names]

    def flatten(self, d):
        return torch.cat([d[n].reshape(-1) for n in self.names])

    def unflatten(self, v):
        out, s = {}, 0
        for n, shape, size in zip(self.names, self.shapes, self.sizes):
            out[n] = v[s:s + size].view(shape)
            s += size
        return out


class _Model:
    """A network (or its suffix after a cut) as a function of the analysed parameters."""

    def __init__(self, net, names, device):
        self.net = net
        named = dict(net.named_parameters())
        self.theta = {n: named[n].detach().to(device) for n in names}
        self.consts = {n: p.detach().to(device) for n, p in named.items()
                       if n not in self.theta}
        self.consts.update({n: b.to(device) for n, b in net.named_buffers()})
        self.flat = _Flat(self.theta)
        self.dtype = next(iter(self.theta.values())).dtype
        self.device = device
        # L2 mask: weights are penalised, biases are not (as for the head).
        self.decay = self.flat.flatten({
            n: torch.full_like(t, 0.0 if n.rsplit(".", 1)[-1] == "bias" else 1.0)
            for n, t in self.theta.items()})

    def blocks(self):
        """Flat-vector indices of the analysed parameters of each owning module."""
        out, start = {}, 0
        for name, size in zip(self.flat.names, self.flat.sizes):
            out.setdefault(name.rpartition(".")[0], []).append(
                torch.arange(start, start + size, device=self.device))
            start += size
        return {k: torch.cat(v) for k, v in out.items()}

    def per_block(self, values):
        """A flat vector holding ``values[module]`` on that module's parameters."""
        vec = torch.empty(self.flat.flatten(self.theta).shape, dtype=self.dtype,
                          device=self.device)
        for name, idx in self.blocks().items():
            vec[idx] = values[name]
        return vec

    def logits(self, theta, x):
        out = functional_call(self.net, {**self.consts, **theta}, (x,))
        return out.reshape(len(x), -1)

    def losses(self, theta, x, y):
        return nnf.cross_entropy(self.logits(theta, x), y, reduction="none")


class _Data:
    """Rows of training or validation data: raw inputs or a prefix cache view."""

    def __init__(self, X, y, device, dtype):
        self.X = X
        self.y = np.asarray(y, dtype=np.int64)
        self.device = device
        self.dtype = dtype

    def __len__(self):
        return len(self.y)

    def batches(self, batch_size):
        """Yield ``(x, y, slice)`` on the device; ``x`` is always a fresh tensor."""
        it = (self.X.iter_batches(batch_size) if isinstance(self.X, PrefixCache)
              else iter_batches(self.X, batch_size, with_index=True))
        for xb, sl in it:
            if xb.dtype == torch.uint8:
                xb = xb.float() / 255.0
            xb = xb.to(device=self.device, dtype=self.dtype, copy=True)
            yield xb, torch.as_tensor(self.y[sl], device=self.device), sl

    def cycle(self, batch_size):
        while True:
            yield from self.batches(batch_size)


def _ce_hessian_product(z, u):
    # (diag p − p pᵀ) u per sample in float64: softmax rounding in float32
    # was measured to make the cross-entropy Hessian indefinite.
    p = torch.softmax(z.double(), 1)
    u = u.double()
    return (p * u - p * (p * u).sum(1, keepdim=True)).to(z.dtype)


class CurvatureOperator:
    """Hessian of the mean training loss over the analysed parameters, matrix-free.

    ``H v = (1/n) Σ_i H_i v + alpha · P v`` where ``H_i`` is the Gauss–Newton
    matrix ``J_iᵀ (diag p_i − p_i p_iᵀ) J_i`` (``hessian="ggn"``, positive
    semi-definite) or the exact Hessian (``"exact"``) of the cross-entropy of
    sample ``i``, and ``P`` masks out biases. Damping is not included: each
    solver adds its own.

    Parameters
    ----------
    model : _Model
    data : _Data
        The training rows.
    hessian : {"ggn", "exact"}
    alpha : float
        L2 strength of the objective.
    batch_size : int
        Samples per batch in every pass.
    verbose : int, default=0

    Attributes
    ----------
    n : int
        Number of training samples.
    dim : int
        Number of analysed parameters.
    n_passes : int
        Hessian-vector products over the training data so far (the cost unit
        of a solve; :meth:`matmat` of ``c`` columns counts ``c``).
    """

    def __init__(self, model, data, *, hessian, alpha, batch_size, verbose=0):
        if hessian not in ("ggn", "exact"):
            raise ValueError(f"hessian must be 'ggn' or 'exact', got {hessian!r}.")
        self.model = model
        self.data = data
        self.hessian = hessian
        self.alpha = float(alpha)
        self.batch_size = int(batch_size)
        self.verbose = verbose
        self.n = len(data)
        self.dim = int(model.decay.numel())
        self.n_passes = 0

    # -- per-batch products -------------------------------------------------
    def batch_matmat(self, xb, yb, V):
        """Sum over the batch of the per-sample curvature times each column of ``V``.

        ``V`` is flat, ``dim × c``. On the GGN the batch's forward pass and its
        linearisation for the backward product are shared by the columns
        (measured 1.35x faster than ``c`` separate products on ResNet-18's
        last block).
        """
        model, theta = self.model, self.model.theta
        out = torch.empty_like(V)
        if self.hessian == "exact":
            g = grad(lambda th: model.losses(th, xb, yb).sum())
            for j in range(V.shape[1]):
                vd = model.flat.unflatten(V[:, j])
                out[:, j] = model.flat.flatten(jvp(g, (theta,), (vd,))[1])
        else:
            f = lambda th: model.logits(th, xb)  # noqa: E731
            z, vjp_fn = vjp(f, theta)
            for j in range(V.shape[1]):
                jv = jvp(f, (theta,), (model.flat.unflatten(V[:, j]),))[1]
                out[:, j] = model.flat.flatten(vjp_fn(_ce_hessian_product(z, jv))[0])
        return out

    def batch_matvec(self, xb, yb, v):
        """Sum over the batch of the per-sample curvature times ``v`` (flat)."""
        return self.batch_matmat(xb, yb, v[:, None])[:, 0]

    def matvec(self, v):
        """``H v`` over all training data, alpha term included, damping not."""
        return self.matmat(v[:, None])[:, 0]

    def matmat(self, V):
        """``H V`` for the columns of ``V`` (dim × c) in one pass over the training data.

        Counted as ``c`` products in ``n_passes``.
        """
        acc = torch.zeros_like(V)
        bar = tqdm(total=self.n, desc="Hv", disable=self.verbose <= 1, leave=False)
        for xb, yb, _ in self.data.batches(self.batch_size):
            acc += self.batch_matmat(xb, yb, V)
            bar.update(len(xb))
        bar.close()
        self.n_passes += V.shape[1]
        return acc / self.n + self.alpha * self.model.decay[:, None] * V

    def damped(self, damping):
        """The callable ``v -> (H + damping I) v``."""
        return lambda v: self.matvec(v) + damping * v

    def minibatch_matvecs(self, batch_size):
        """An endless stream of mini-batch estimates of ``H`` (for LiSSA)."""
        stream = self.data.cycle(batch_size)

        def op(v):
            xb, yb, _ = next(stream)
            return self.batch_matvec(xb, yb, v) / len(xb) + self.alpha * self.model.decay * v

        return op

    def relative_residual(self, s, g, damping):
        """``‖(H + damping I) s − g‖ / ‖g‖``: one pass over the training data."""
        r = self.damped(damping)(s) - g
        return float(torch.linalg.norm(r) / torch.linalg.norm(g))

    def block_mean_eigenvalues(self, generator, n_probes=16):
        """Mean eigenvalue ``tr(H_B)/p_B`` of each module's diagonal block (no alpha).

        Hutchinson's diagonal estimator ``E[v ⊙ H v]`` (Rademacher ``v``) on one
        training batch gives every block's trace from the same products: cheap
        and within a small factor, which is all a relative damping needs.
        """
        xb, yb, _ = next(self.data.batches(self.batch_size))
        xb, yb = xb[:_PROBE_ROWS], yb[:_PROBE_ROWS]  # batches grow with a cached prefix
        diag = torch.zeros(self.dim, dtype=torch.float64, device=self.model.device)
        for _ in range(n_probes):
            v = (torch.randint(0, 2, (self.dim,), generator=generator) * 2 - 1).to(
                device=self.model.device, dtype=self.model.dtype)
            diag += (v * self.batch_matvec(xb, yb, v)).double() / len(xb)
        diag /= n_probes
        return {name: abs(float(diag[idx].mean())) for name, idx in self.model.blocks().items()}

    # -- gradients and scores -------------------------------------------------
    def mean_gradient(self, data, weights):
        """``Σ_v w_v ∇L_v`` (weights summing to one) as a flat vector."""
        model = self.model
        out = None
        for xb, yb, sl in data.batches(self.batch_size):
            wb = torch.as_tensor(weights[sl], device=model.device, dtype=model.dtype)
            gb = grad(lambda th, xb=xb, yb=yb, wb=wb:
                      (model.losses(th, xb, yb) * wb).sum())(model.theta)
            gb = model.flat.flatten(gb)
            out = gb if out is None else out + gb
        return out

    def directional_derivatives(self, data, s, batch_size):
        """``∇L_iᵀ s`` of every row of ``data``: one forward-mode pass.

        No per-sample gradient is formed; memory is O(batch × activations).
        """
        model = self.model
        sd = model.flat.unflatten(s.detach())
        out = np.empty(len(data))
        bar = tqdm(total=len(data), desc="scores", disable=self.verbose <= 0, leave=False)
        for xb, yb, sl in data.batches(batch_size):
            _, d = jvp(lambda th, xb=xb, yb=yb: model.losses(th, xb, yb),
                       (model.theta,), (sd,))
            out[sl] = d.double().cpu().numpy()
            bar.update(len(xb))
        bar.close()
        return out

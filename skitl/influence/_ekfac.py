"""EK-FAC: eigenvalue-corrected Kronecker-factored GGN (George et al. 2018).

For each analysed ``nn.Linear`` / ``nn.Conv2d`` layer the GGN block is
approximated as ``(Q_S ⊗ Q_A) diag(Λ) (Q_S ⊗ Q_A)ᵀ`` where ``Q_A``, ``Q_S`` are
the eigenbases of the input covariance ``E[a aᵀ]`` and of the pseudo-gradient
covariance ``E[g gᵀ]`` (labels sampled from the model, so that ``E[g gᵀ]`` is
the GGN / true-Fisher factor for the cross-entropy), and ``Λ`` the exact second
moments of the per-sample gradients in that basis (the eigenvalue
correction). The parameters of any other module (BatchNorm, LayerNorm, ...)
get their full block, the second-moment matrix of their per-sample
pseudo-gradients, when they have at most ``DENSE_MAX`` parameters, and its
diagonal otherwise. Blocks are treated as independent. Own code, following kronfluence's conventions
(damping 0.1 × mean eigenvalue).

Input coordinates that are exactly zero for every sample (the padded taps of a
3x3 convolution on a 1x1 feature map, for instance) are split off before the
eigendecomposition: they decouple exactly, and dropping them turned a
4608 x 4608 eigendecomposition into a 512 x 512 one on ResNet-18 at 32 px.
"""

import torch
import torch.nn as nn
import torch.nn.functional as nnf
from torch.func import functional_call, vjp, vmap
from tqdm.auto import tqdm

_KRONECKER = (nn.Linear, nn.Conv2d)
#: Per-batch statistics of the first pass are kept for the second one up to this size.
STATS_BYTES = 256 << 20
#: Elements of the per-sample rotated-gradient buffer (memory of the eigenvalue pass).
_BUFFER = 1 << 24
#: Parameters of a non-Linear/Conv2d module up to which its GGN block is kept dense.
DENSE_MAX = 4096


class _Kronecker:
    """A Linear / Conv2d layer: Kronecker factors and the corrected eigenvalues."""

    def __init__(self, name, module, has_bias):
        self.name = name
        self.module = module
        self.has_bias = has_bias
        if isinstance(module, nn.Conv2d):
            if isinstance(module.padding, str):
                raise ValueError(
                    f"EK-FAC does not support padding={module.padding!r} in {name}.")
            if module.groups != 1:
                raise ValueError(f"EK-FAC does not support grouped convolutions ({name}).")
        self.A = self.S = None

    def stats(self, x, gout):
        """Per-sample inputs ``(N, T, in)`` and output gradients ``(N, T, out)``."""
        m = self.module
        if isinstance(m, nn.Conv2d):
            a = nnf.unfold(x, m.kernel_size, dilation=m.dilation, padding=m.padding,
                           stride=m.stride).transpose(1, 2)
            g = gout.flatten(2).transpose(1, 2)
        else:
            a = x.reshape(len(x), -1, x.shape[-1])
            g = gout.reshape(len(gout), -1, gout.shape[-1])
        if self.has_bias:
            a = torch.cat([a, torch.ones_like(a[..., :1])], -1)
        return a, g

    def accumulate(self, a, g):
        self.A = _add_gram(self.A, a.reshape(-1, a.shape[-1]))
        self.S = _add_gram(self.S, g.reshape(-1, g.shape[-1]))

    def eigenbases(self, n_a, n_g):
        self.liveA, self.QA = _live_eigh(self.A / n_a)
        self.liveS, self.QS = _live_eigh(self.S / n_g)
        self.A = self.S = None
        self.lam = torch.zeros(len(self.liveS), len(self.liveA), dtype=torch.float64,
                               device=self.QA.device)
        self.shape = (self.module.weight.shape[0], self.lam_in())

    def lam_in(self):
        return self.module.weight[0].numel() + int(self.has_bias)

    def correct(self, a, g):
        ar = a[..., self.liveA].to(self.QA.dtype) @ self.QA   # (N, T, ra)
        gr = g[..., self.liveS].to(self.QS.dtype) @ self.QS   # (N, T, rs)
        if ar.shape[1] == 1:  # one token: squared outer products are a matmul
            self.lam += (gr[:, 0] ** 2).T @ (ar[:, 0] ** 2)
            return
        step = max(1, _BUFFER // (ar.shape[-1] * gr.shape[-1]))
        for s in range(0, len(ar), step):
            G = torch.einsum("nto,nti->noi", gr[s:s + step], ar[s:s + step])
            self.lam += (G ** 2).sum(0)

    def finish(self, m):
        self.lam /= m

    def n_coords(self):
        return self.shape[0] * self.shape[1]

    def lam_sum(self):
        return float(self.lam.sum())

    def param_names(self):
        names = [f"{self.name}.weight"]
        return names + ([f"{self.name}.bias"] if self.has_bias else [])

    def inverse(self, vd, damping):
        W = vd[f"{self.name}.weight"]
        V = W.reshape(W.shape[0], -1).double()
        if self.has_bias:
            V = torch.cat([V, vd[f"{self.name}.bias"].double()[:, None]], 1)
        X = V / damping  # decoupled (structurally zero) coordinates
        sub = V[self.liveS][:, self.liveA]
        R = self.QS.T @ sub @ self.QA
        live = self.QS @ (R / (self.lam + damping)) @ self.QA.T
        X[self.liveS.unsqueeze(1), self.liveA.unsqueeze(0)] = live
        out = {}
        if self.has_bias:
            out[f"{self.name}.bias"] = X[:, -1].to(W.dtype)
            X = X[:, :-1]
        out[f"{self.name}.weight"] = X.reshape(W.shape).to(W.dtype)
        return out


class _Dense:
    """Any other module (BatchNorm, LayerNorm, ...): its full GGN block.

    These modules are small (two vectors per channel), and their
    coordinates are correlated: scaling every channel of a BatchNorm at
    once moves the logits coherently, which a diagonal block misses. The
    block is the second-moment matrix of the per-sample
    pseudo-gradients (the sampled-label GGN, as EK-FAC's factors), inverted
    through its eigendecomposition; modules with more than ``DENSE_MAX``
    parameters keep its diagonal. On ResNet-18's ``layer4.1`` + ``fc`` the
    full blocks lowered the residual of EK-FAC as a solver of the damped GGN
    from 161 to 100.
    """

    def __init__(self, name, module, attrs):
        self.name = name
        self.module = module
        self.attrs = list(attrs)
        self.sizes = [getattr(module, a).numel() for a in self.attrs]
        self.dense = sum(self.sizes) <= DENSE_MAX
        self.lam = self.Q = None

    def stats(self, x, gout):
        return x, gout

    def _per_sample(self, x, g):
        params = {a: getattr(self.module, a).detach() for a in self.attrs}
        mod = self.module

        def one(xi, gi):
            _, fn = vjp(lambda p: functional_call(mod, p, (xi[None],), strict=False),
                        params)
            return fn(gi[None])[0]

        grads = vmap(one)(x, g)
        return torch.cat([grads[a].reshape(len(x), -1) for a in self.attrs], 1).double()

    def accumulate(self, a, g):
        pass

    def eigenbases(self, n_a, n_g):
        pass

    def correct(self, x, g):
        G = self._per_sample(x, g)
        M = G.T @ G if self.dense else (G ** 2).sum(0)
        self.lam = M if self.lam is None else self.lam + M

    def finish(self, m):
        self.lam = self.lam / m
        if self.dense:
            self.lam, self.Q = torch.linalg.eigh(self.lam)
            self.lam.clamp_(min=0.0)  # rounding below zero of a PSD matrix

    def n_coords(self):
        return sum(self.sizes)

    def lam_sum(self):
        return float(self.lam.sum())

    def param_names(self):
        return [f"{self.name}.{a}" if self.name else a for a in self.attrs]

    def inverse(self, vd, damping):
        keys = self.param_names()
        v = torch.cat([vd[k].reshape(-1).double() for k in keys])
        x = (self.Q @ ((self.Q.T @ v) / (self.lam + damping)) if self.dense
             else v / (self.lam + damping))
        out = {}
        for k, part in zip(keys, torch.split(x, self.sizes)):
            out[k] = part.view(vd[k].shape).to(vd[k].dtype)
        return out


def _add_gram(M, Z):
    """``M + Zᵀ Z`` in float64, skipping the columns of ``Z`` that are all zero.

    A convolution's unfolded input holds whole columns of zeros where its
    kernel reads the padding: on ResNet-18's last block at 32 px (a 1x1 map)
    8 of the 9 taps of each 3x3 kernel, so the product over the rest costs
    1/81 of the full one and gives the same factor.
    """
    d = Z.shape[1]
    if M is None:
        M = torch.zeros(d, d, dtype=torch.float64, device=Z.device)
    used = torch.nonzero(Z.abs().amax(0) > 0).flatten()
    if len(used) == d:
        Z = Z.double()
        M += Z.T @ Z
    elif len(used):
        Z = Z[:, used].double()
        M[used[:, None], used[None, :]] += Z.T @ Z
    return M


def _live_eigh(M):
    """Eigenbasis of the rows/columns of a PSD matrix that are not exactly zero."""
    live = torch.nonzero(torch.diagonal(M) > 0).flatten()
    _, Q = torch.linalg.eigh(M[live][:, live])
    return live, Q


class EKFAC:
    """EK-FAC approximation of the GGN of the analysed parameters.

    Parameters
    ----------
    operator : CurvatureOperator
        The network as a function of the analysed parameters, and the
        training data the statistics are taken over.
    n_label_samples : int, default=1
        Labels sampled from the model per input for the pseudo-gradients.
    generator : torch.Generator, optional
        Source of the sampled labels.
    batch_size : int, optional
        Samples per batch (the operator's by default).

    Attributes
    ----------
    blocks : list
        One per module owning analysed parameters.

    Raises
    ------
    ValueError
        Grouped or string-padded convolutions, or a Linear/Conv2d whose bias is
        analysed without its weight.
    """

    def __init__(self, operator, *, n_label_samples=1, generator=None, batch_size=None):
        self.operator = operator
        self.model = operator.model
        self.n_label_samples = int(n_label_samples)
        if self.n_label_samples < 1:
            raise ValueError(f"n_label_samples must be >= 1, got {n_label_samples}.")
        self.generator = generator
        self.batch_size = int(batch_size or operator.batch_size)
        modules = dict(self.model.net.named_modules())
        by_module = {}
        for pname in self.model.flat.names:
            mname, _, attr = pname.rpartition(".")
            by_module.setdefault(mname, []).append(attr)
        self.blocks = []
        for mname, attrs in by_module.items():
            mod = modules.get(mname)
            if mod is None:
                raise ValueError(f"EK-FAC cannot find the module owning {mname}.{attrs[0]}.")
            if isinstance(mod, _KRONECKER) and "weight" in attrs:
                self.blocks.append(_Kronecker(mname, mod, "bias" in attrs
                                              and mod.bias is not None))
            elif isinstance(mod, _KRONECKER):
                raise ValueError(f"EK-FAC needs {mname}.weight analysed together with "
                                 "its bias.")
            else:
                self.blocks.append(_Dense(mname, mod, attrs))

    def _run(self, xb):
        """Forward with hooks; per-block (inputs, [output grads per label sample])."""
        inputs, outputs, handles = {}, {}, []
        for blk in self.blocks:
            def fhook(mod, args, out, blk=blk):
                if blk.name in inputs:
                    raise ValueError(
                        f"EK-FAC needs each analysed module to run once per forward pass; "
                        f"{blk.name!r} runs more than once (shared weights).")
                # Copies: a later in-place op (ReLU(inplace=True), ``out +=
                # identity`` in ResNet blocks) would otherwise change the
                # captured input, or make the gradient taken below the one
                # of the modified tensor rather than of this module's output.
                inputs[blk.name] = args[0].detach().clone()
                outputs[blk.name] = out
                return out.clone()
            handles.append(blk.module.register_forward_hook(fhook))
        try:
            theta = {k: v.detach().requires_grad_(True) for k, v in self.model.theta.items()}
            z = self.model.logits(theta, xb)
        finally:
            for h in handles:
                h.remove()
        missing = [b.name for b in self.blocks if b.name not in inputs]
        if missing:
            raise ValueError(
                f"EK-FAC could not observe the modules {missing} (their forward is "
                "not called as a module); use hessian='ggn'.")
        with torch.no_grad():
            p = torch.softmax(z.double(), 1)
            ys = torch.multinomial(p.cpu(), self.n_label_samples, replacement=True,
                                   generator=self.generator).to(z.device)
        outs = [outputs[b.name] for b in self.blocks]
        grads = []
        for j in range(self.n_label_samples):
            loss = nnf.cross_entropy(z, ys[:, j], reduction="sum")
            gz = torch.autograd.grad(loss, outs, retain_graph=j < self.n_label_samples - 1)
            grads.append([g.detach() for g in gz])
        stats = []
        for i, blk in enumerate(self.blocks):
            per_label = [blk.stats(inputs[blk.name], g[i]) for g in grads]
            stats.append(per_label)
        return stats

    def fit(self, verbose=0):
        """Estimate the factors, their eigenbases and the corrected eigenvalues.

        Two passes over the training data (factors, then the per-sample second
        moments in the eigenbasis, chunked); the second reuses the first's
        statistics instead of running the network again when they fit in
        ``STATS_BYTES``.

        Parameters
        ----------
        verbose : int, default=0
            Show progress bars when > 0.

        Returns
        -------
        self
        """
        data = self.operator.data
        kept, kept_bytes = [], 0
        n = 0
        with torch.enable_grad():
            for xb, _, _ in tqdm(data.batches(self.batch_size), desc="EK-FAC factors",
                                 disable=verbose <= 0, leave=False):
                stats = self._run(xb)
                n += len(xb)
                for blk, per_label in zip(self.blocks, stats):
                    for a, g in per_label:
                        blk.accumulate(a, g)
                if kept is not None:
                    kept_bytes += sum(t.numel() * t.element_size()
                                      for per_label in stats for ag in per_label for t in ag)
                    kept = kept + [stats] if kept_bytes <= STATS_BYTES else None
            for blk in self.blocks:
                blk.eigenbases(n, n * self.n_label_samples)
            batches = kept if kept is not None else (
                self._run(xb) for xb, _, _ in data.batches(self.batch_size))
            for stats in tqdm(batches, desc="EK-FAC eigenvalues", disable=verbose <= 0,
                              leave=False):
                for blk, per_label in zip(self.blocks, stats):
                    for a, g in per_label:
                        blk.correct(a, g)
        m = n * self.n_label_samples
        for blk in self.blocks:
            blk.finish(m)
        self.n_passes_ = 1 if kept is not None else 2
        return self

    def mean_eigenvalue(self):
        """Mean of all corrected eigenvalues (the scale of the damping).

        Returns
        -------
        value : float
        """
        return (sum(b.lam_sum() for b in self.blocks)
                / sum(b.n_coords() for b in self.blocks))

    def block_mean_eigenvalues(self):
        """Mean corrected eigenvalue of each module's block.

        Returns
        -------
        means : dict of str to float
        """
        return {b.name: b.lam_sum() / b.n_coords() for b in self.blocks}

    def inverse(self, v, damping):
        """Apply ``(H_ekfac + D)⁻¹`` to a flat parameter vector.

        Parameters
        ----------
        v : torch.Tensor
            Flat vector in the layout of the analysed parameters.
        damping : float or torch.Tensor
            ``D``: a float, or a flat vector constant on each module's block.
            Must be > 0 where structurally zero coordinates exist.

        Returns
        -------
        x : torch.Tensor
        """
        flat = self.model.flat
        vd = flat.unflatten(v)
        dd = flat.unflatten(damping) if torch.is_tensor(damping) else None
        out = {}
        for blk in self.blocks:
            lam = damping if dd is None else float(dd[blk.param_names()[0]].reshape(-1)[0])
            out.update(blk.inverse(vd, lam))
        return flat.flatten(out)

"""EK-FAC: eigenvalue-corrected Kronecker-factored GGN (George et al. 2018).

For each selected ``nn.Linear`` / ``nn.Conv2d`` layer the GGN block is
approximated as ``(Q_S ⊗ Q_A) diag(Λ) (Q_S ⊗ Q_A)ᵀ`` where ``Q_A``, ``Q_S`` are
the eigenbases of the input covariance ``E[a aᵀ]`` and of the pseudo-gradient
covariance ``E[g gᵀ]`` (labels sampled from the model, so that ``E[g gᵀ]`` is
the GGN/true-Fisher factor for the cross-entropy), and ``Λ`` the exact second
moments of the per-sample gradients in that basis (the eigenvalue
correction). Blocks of different layers are treated as independent. Own
code, following kronfluence's conventions (damping 0.1 × mean eigenvalue).
"""

import torch
import torch.nn as nn
import torch.nn.functional as nnf
from tqdm.auto import tqdm

from ._features import iter_batches

_SUPPORTED = (nn.Linear, nn.Conv2d)


class _Block:
    def __init__(self, name, module, has_weight, has_bias):
        self.name = name
        self.module = module
        self.has_bias = has_bias
        self.A = None
        self.S = None
        self.count = 0
        self.lam = None

    def patches(self, x):
        m = self.module
        if isinstance(m, nn.Conv2d):
            if isinstance(m.padding, str):
                raise ValueError(
                    f"EK-FAC does not support padding={m.padding!r} in {self.name}.")
            a = nnf.unfold(x, m.kernel_size, dilation=m.dilation, padding=m.padding,
                           stride=m.stride)  # (N, C*kh*kw, L)
            if m.groups != 1:
                raise ValueError(f"EK-FAC does not support grouped convolutions ({self.name}).")
            a = a.transpose(1, 2)  # (N, L, in)
        else:
            a = x.reshape(len(x), -1, x.shape[-1])  # (N, T, in)
        if self.has_bias:
            a = torch.cat([a, torch.ones_like(a[..., :1])], -1)
        return a

    @staticmethod
    def out_grads(gz, module):
        if isinstance(module, nn.Conv2d):
            return gz.flatten(2).transpose(1, 2)  # (N, L, out)
        return gz.reshape(len(gz), -1, gz.shape[-1])


class EKFAC:
    """EK-FAC approximation of the GGN of the selected Linear/Conv2d layers.

    Parameters
    ----------
    model : skitl.influence._deep._Model
        The network as a function of the analysed parameters.
    names : list of str
        Selected parameter names; each must be the ``weight`` (optionally with
        its ``bias``) of an ``nn.Linear`` or ``nn.Conv2d``.
    n_label_samples : int, default=1
        Labels sampled from the model per input for the pseudo-gradients.
    generator : torch.Generator, optional

    Raises
    ------
    ValueError
        Naming any selected parameter that belongs to an unsupported layer.
    """

    def __init__(self, model, names, *, n_label_samples=1, generator=None):
        self.model = model
        self.names = list(names)
        self.n_label_samples = int(n_label_samples)
        self.generator = generator
        net = model.net
        modules = dict(net.named_modules())
        by_module = {}
        for pname in self.names:
            mname, _, attr = pname.rpartition(".")
            mod = modules.get(mname)
            if not isinstance(mod, _SUPPORTED):
                raise ValueError(
                    f"EK-FAC supports nn.Linear and nn.Conv2d only; parameter {pname!r} "
                    f"belongs to a {type(mod).__name__}. Select only Linear/Conv2d "
                    "parameters (e.g. params=['fc.*', 'layer4.*conv*']) or use "
                    "hessian='ggn'.")
            by_module.setdefault(mname, set()).add(attr)
        self.blocks = []
        for mname, attrs in by_module.items():
            if "weight" not in attrs:
                raise ValueError(f"EK-FAC needs {mname}.weight selected together with its bias.")
            mod = modules[mname]
            self.blocks.append(_Block(mname, mod, True,
                                      "bias" in attrs and mod.bias is not None))

    def _run(self, xb, labels_from):
        """Forward with hooks; returns per-block inputs (patches) and output grads."""
        inputs, outputs, handles = {}, {}, []
        for blk in self.blocks:
            def fhook(mod, args, out, blk=blk):
                inputs[blk.name] = args[0].detach()
                outputs[blk.name] = out
            handles.append(blk.module.register_forward_hook(fhook))
        try:
            theta = {k: v.detach().requires_grad_(True) for k, v in self.model.theta.items()}
            z = self.model.logits(theta, xb)
        finally:
            for h in handles:
                h.remove()
        with torch.no_grad():
            p = torch.softmax(z.double(), 1)
            ys = torch.multinomial(p.cpu(), self.n_label_samples, replacement=True,
                                   generator=self.generator).to(z.device)
        res = []
        outs = [outputs[b.name] for b in self.blocks]
        for j in range(self.n_label_samples):
            loss = nnf.cross_entropy(z, ys[:, j], reduction="sum")
            gz = torch.autograd.grad(loss, outs, retain_graph=j < self.n_label_samples - 1)
            res.append([g.detach() for g in gz])
        return inputs, res

    def fit(self, X, y, *, chunk_size=64, verbose=0):
        """Estimate the factors, their eigenbases and the corrected eigenvalues.

        Two passes over ``X``: covariances, then per-sample second moments in
        the eigenbasis (chunked, memory O(chunk × out × in)).

        Parameters
        ----------
        X : ndarray or Dataset
        y : ndarray
            Unused (pseudo-labels are sampled from the model); kept for a
            uniform signature.
        chunk_size : int, default=64
        verbose : int, default=0

        Returns
        -------
        self
        """
        dev, dtype = self.model.device, self.model.dtype
        n = 0
        for xb in tqdm(iter_batches(X, chunk_size), desc="EK-FAC factors",
                       disable=verbose <= 0, leave=False):
            xb = xb.to(device=dev, dtype=dtype)
            inputs, grads = self._run(xb, None)
            n += len(xb)
            for i, blk in enumerate(self.blocks):
                a = blk.patches(inputs[blk.name]).double()
                a2 = a.reshape(-1, a.shape[-1])
                blk.A = a2.T @ a2 if blk.A is None else blk.A + a2.T @ a2
                for gz in grads:
                    g = blk.out_grads(gz[i], blk.module).double()
                    g2 = g.reshape(-1, g.shape[-1])
                    blk.S = g2.T @ g2 if blk.S is None else blk.S + g2.T @ g2
        for blk in self.blocks:
            _, blk.QA = torch.linalg.eigh(blk.A / n)
            _, blk.QS = torch.linalg.eigh(blk.S / (n * self.n_label_samples))
            blk.lam = torch.zeros(blk.QS.shape[0], blk.QA.shape[0], dtype=torch.float64,
                                  device=dev)
        for xb in tqdm(iter_batches(X, chunk_size), desc="EK-FAC eigenvalues",
                       disable=verbose <= 0, leave=False):
            xb = xb.to(device=dev, dtype=dtype)
            inputs, grads = self._run(xb, None)
            for i, blk in enumerate(self.blocks):
                a = blk.patches(inputs[blk.name]).double() @ blk.QA       # (N, T, in)
                for gz in grads:
                    g = blk.out_grads(gz[i], blk.module).double() @ blk.QS  # (N, T, out)
                    G = torch.einsum("nto,nti->noi", g, a)  # rotated per-sample grads
                    blk.lam += (G**2).sum(0)
        for blk in self.blocks:
            blk.lam /= n * self.n_label_samples
        return self

    def mean_eigenvalue(self):
        """Mean of all corrected eigenvalues (the scale of the damping).

        Returns
        -------
        value : float
        """
        tot = sum(float(b.lam.sum()) for b in self.blocks)
        cnt = sum(b.lam.numel() for b in self.blocks)
        return tot / cnt

    def solve(self, v, *, damping):
        """Apply ``(H_ekfac + damping I)⁻¹`` to a flat parameter vector.

        Parameters
        ----------
        v : torch.Tensor
            Flat vector in the layout of the selected parameters.
        damping : float

        Returns
        -------
        x : torch.Tensor
        """
        flat = self.model.flat
        vd = flat.unflatten(v)
        out = {k: torch.zeros_like(t) for k, t in vd.items()}
        for blk in self.blocks:
            wname = f"{blk.name}.weight"
            Wv = vd[wname].reshape(vd[wname].shape[0], -1).double()
            if blk.has_bias:
                Wv = torch.cat([Wv, vd[f"{blk.name}.bias"].double()[:, None]], 1)
            R = blk.QS.T @ Wv @ blk.QA
            X = blk.QS @ (R / (blk.lam + damping)) @ blk.QA.T
            if blk.has_bias:
                out[f"{blk.name}.bias"] = X[:, -1].to(v.dtype)
                X = X[:, :-1]
            out[wname] = X.reshape(vd[wname].shape).to(v.dtype)
        return flat.flatten(out)

"""Influence throughput as a ratio to one forward pass, and against captum.

Times, in one run on the same model and data: one forward pass of the
backbone over train + validation, skitl's exact head influence end to end
(features included) and its post-forward part alone, skitl's deep influence
on the last block (GGN + CG with a few iterations), captum's
``TracInCPFast`` and ``ArnoldiInfluenceFunction`` on the head.

Data: the CIFAR-10 test JPEGs from ``../shared/data/cifar10_test_jpg`` when
present (resized to ``--size``), random images otherwise.

Examples
--------
    python benchmarks/bench_influence_speed.py
    python benchmarks/bench_influence_speed.py --device cuda --model resnet50 --size 224 \
        --n-train 5000 --n-val 500
"""

import argparse
import copy
import os
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torchvision
from scipy.stats import spearmanr

from skitl.influence import influence_scores

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10_test_jpg"


def load_data(n, size, seed):
    rng = np.random.default_rng(seed)
    root = DATA / "test"
    if root.is_dir():
        tf = torchvision.transforms.Compose([
            torchvision.transforms.Resize(size),
            torchvision.transforms.ToTensor(),
            torchvision.transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ])
        ds = torchvision.datasets.ImageFolder(str(root), transform=tf)
        idx = rng.choice(len(ds), n, replace=False)
        X = torch.stack([ds[i][0] for i in idx]).numpy()
        y = np.array([ds.targets[i] for i in idx])
        return X, y, f"CIFAR-10 test JPEGs ({root})"
    X = rng.standard_normal((n, 3, size, size)).astype(np.float32)
    y = rng.integers(0, 10, n)
    return X, y, "random images (CIFAR JPEGs not found)"


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def forward_pass(net, X, batch_size, device):
    net.eval()
    with torch.inference_mode():
        for s in range(0, len(X), batch_size):
            net(torch.from_numpy(X[s:s + batch_size]).to(device))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18", help="torchvision model name")
    ap.add_argument("--size", type=int, default=32, help="image side in pixels")
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-val", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--alpha", type=float, default=1e-3)
    ap.add_argument("--deep-params", nargs="+", default=["layer4.1.*", "fc.*"])
    ap.add_argument("--deep-iter", type=int, default=5, help="CG iterations (deep)")
    ap.add_argument("--deep-damping", default="auto",
                    help="damping of the deep GGN ('auto' or a float)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="time the forward pass and the head influence this many "
                         "times (alternating) and keep the fastest: shared machines "
                         "are noisy")
    ap.add_argument("--captum-arnoldi-dim", type=int, default=20)
    ap.add_argument("--captum-projection-dim", type=int, default=10)
    ap.add_argument("--skip-deep", action="store_true")
    ap.add_argument("--skip-captum", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dev = args.device
    n, m = args.n_train, args.n_val
    X, y, source = load_data(n + m, args.size, args.seed)
    Xtr, ytr, Xv, yv = X[:n], y[:n], X[n:], y[n:]
    net = torchvision.models.get_model(args.model, weights=None, num_classes=10).to(dev).eval()
    print(f"load average at start: {os.getloadavg()}")
    print(f"model {args.model} @ {args.size}px, {n} train / {m} val, device {dev}, "
          f"torch threads {torch.get_num_threads()}, data: {source}")
    if dev.startswith("cuda"):
        print("GPU:", torch.cuda.get_device_name())

    forward_pass(net, X[: args.batch_size], args.batch_size, dev)  # warm-up
    rows = []
    t_fwd = t_head = t_post = float("inf")
    for _ in range(max(1, args.repeat)):
        t, _ = timed(lambda: forward_pass(net, X, args.batch_size, dev), dev)
        t_fwd = min(t_fwd, t)
        t, r = timed(lambda: influence_scores(net, Xtr, ytr, Xv, yv, alpha=args.alpha,
                                              batch_size=args.batch_size, device=dev), dev)
        if t < t_head:
            t_head, res = t, r
        t_post = min(t_post, t - r.seconds["features"])
    post = t_post
    rows.append((f"forward pass (train+val), best of {args.repeat}", t_fwd, ""))
    rows.append((f"skitl head influence, end to end, best of {args.repeat}", t_head,
                 f"solver={res.solver} residual={res.residual:.1e} damping={res.damping:.1e}"))
    rows.append(("  of which after the forward pass", post,
                 " ".join(f"{k}={v:.3f}s" for k, v in res.seconds.items()
                          if k not in ("total",))))

    # The same fitted head in the network, so captum analyses the same model.
    net_fit = copy.deepcopy(net)
    with torch.no_grad():
        net_fit.fc.weight.copy_(torch.as_tensor(res.W, dtype=torch.float32))
        net_fit.fc.bias.copy_(torch.as_tensor(res.b, dtype=torch.float32))

    if not args.skip_deep:
        try:
            t_deep, dres = timed(lambda: influence_scores(
                net_fit, Xtr, ytr, Xv, yv, params=args.deep_params, solver="cg",
                max_iter=args.deep_iter, tol=1e-12, batch_size=args.batch_size // 2,
                damping=(args.deep_damping if args.deep_damping == "auto"
                         else float(args.deep_damping)), device=dev), dev)
            n_par = sum(p.numel() for nm, p in net_fit.named_parameters() if nm in dres.params)
            rows.append((f"skitl deep influence ({' '.join(args.deep_params)}, GGN-CG "
                         f"{dres.n_iter} it)", t_deep,
                         f"{n_par} params, damping={dres.damping:.1e}, "
                         f"residual={dres.residual:.2e}, Spearman vs head "
                         f"{spearmanr(dres.scores, res.scores)[0]:.3f}"))
        except Exception as exc:  # report, never hide
            rows.append(("skitl deep influence", float("nan"), f"FAILED: {exc!r}"))

    if not args.skip_captum:
        ds = torch.utils.data.TensorDataset(torch.from_numpy(Xtr), torch.from_numpy(ytr))
        val = (torch.from_numpy(Xv).to(dev), torch.from_numpy(yv).to(dev))
        tmp = tempfile.mkdtemp()
        ckpt = os.path.join(tmp, "ckpt.pt")
        torch.save(net_fit.state_dict(), ckpt)

        def run_tracin():
            from captum.influence import TracInCPFast

            tr = TracInCPFast(net_fit, "fc", ds, [ckpt],
                              loss_fn=nn.CrossEntropyLoss(reduction="sum"),
                              batch_size=args.batch_size)
            return tr.influence(val)

        def run_arnoldi():
            from captum.influence._core.arnoldi_influence_function import (
                ArnoldiInfluenceFunction,
            )

            af = ArnoldiInfluenceFunction(
                net_fit, ds, ckpt, layers=["fc"],
                loss_fn=nn.CrossEntropyLoss(reduction="none"),
                test_loss_fn=nn.CrossEntropyLoss(reduction="none"),
                batch_size=args.batch_size, arnoldi_dim=args.captum_arnoldi_dim,
                projection_dim=args.captum_projection_dim, show_progress=False)
            return af.influence(val)

        for name, fn in (("captum TracInCPFast (head)", run_tracin),
                         (f"captum ArnoldiInfluenceFunction (head, arnoldi_dim="
                          f"{args.captum_arnoldi_dim})", run_arnoldi)):
            try:
                t, out = timed(fn, dev)
                scores = out.mean(0).detach().cpu().numpy()
                rho = spearmanr(scores, res.scores)[0]
                rows.append((name, t, f"Spearman vs skitl head {rho:.3f}"))
            except Exception as exc:
                traceback.print_exc()
                rows.append((name, float("nan"), f"FAILED: {type(exc).__name__}: {exc}"))

    print()
    print(f"{'method':62s} {'seconds':>9s} {'samples/s':>10s} {'x forward':>10s}  notes")
    for name, t, note in rows:
        thr = (n + m) / t if t == t else float("nan")
        print(f"{name:62s} {t:9.3f} {thr:10.1f} {t / t_fwd:10.2f}  {note}")
    for name, t, _ in rows:
        if name.startswith("captum") and t == t:
            print(f"skitl head end-to-end is {t / t_head:.1f}x faster than {name}")
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""The GPU check: forward pass, head influence and fine-tuning on ResNet-50.

Measures, on one device and in one run: the forward pass of ResNet-50 at 224
px in fp32 and bf16 (images/s), head influence end to end (features in bf16,
exact float64 head algebra) in samples/s and as a ratio to the bf16 forward
pass, and one fine-tuning epoch of ``TransferClassifier``. The images are
generated (class-dependent colour blobs plus noise), so nothing downloads.
Reference points measured on an H200: forward 8.7k img/s fp32 / 13.1k bf16;
exact head influence 5.3k / 9.2k samples/s (fp32 / bf16 features). Goal: head
influence >= 0.8x the bf16 forward throughput.

Runs in under 10 minutes on one GPU; ``--toy`` runs a tiny configuration on
the CPU (used by the tests).

Example::

    python benchmarks/bench_gpu.py                  # on a GPU machine
    python benchmarks/bench_gpu.py --toy --device cpu
"""

import os
import platform
import sys
import time

import numpy as np

# the shared harness lives next to this script
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402


def generated_images(n, size, n_classes, seed):
    """uint8 images (n, 3, size, size) whose colour and blob position carry the class."""
    rng = np.random.RandomState(seed)
    y = rng.randint(0, n_classes, size=n)
    yy, xx = np.mgrid[0:size, 0:size] / size
    X = np.empty((n, 3, size, size), dtype=np.uint8)
    for c in range(n_classes):
        idx = np.flatnonzero(y == c)
        if not len(idx):
            continue
        cx, cy = (c % 4 + 0.5) / 4, (c // 4 + 0.5) / 3
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.02)
        colour = np.array([(c * 37) % 255, (c * 91) % 255, (c * 53) % 255]) / 255
        base = 0.3 + 0.6 * colour[:, None, None] * blob[None]
        noise = rng.rand(len(idx), 3, size, size) * 0.3
        X[idx] = np.clip((base[None] + noise) * 255, 0, 255).astype(np.uint8)
    return X, y


def sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def forward_throughput(net, X, batch_size, device, dtype=None, repeat=2):
    import torch

    best = np.inf
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            ctx = (torch.autocast(torch.device(device).type, dtype=dtype)
                   if dtype is not None else torch.autocast("cpu", enabled=False))
            with ctx:
                for s in range(0, len(X), batch_size):
                    xb = torch.from_numpy(X[s:s + batch_size]).to(device).float() / 255
                    net(xb)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return len(X) / best


def build_parser():
    p = _harness.make_parser(__doc__)
    _harness.add_arguments(p, "device", device=dict(default="cuda"))
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--n-val", type=int, default=500)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--toy", action="store_true",
                   help="resnet18 at 32 px, 32 train / 8 val: a CPU smoke run")
    _harness.add_arguments(p, "threads", "out", threads=dict(
        default=None, help="torch.set_num_threads (default: torch's own count)"),
        out=dict(help="result file (default benchmarks/results/gpu_<device name>.txt)"))
    return p


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if args.toy:
        args.arch, args.size, args.n_train, args.n_val = "resnet18", 32, 32, 8
        args.batch_size = 32

    import torch
    import torchvision

    from skitl import TransferClassifier
    from skitl.influence import influence_scores

    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run with --device cpu (and --toy)")
    name = (torch.cuda.get_device_name(device) if device.startswith("cuda")
            else f"cpu-{platform.machine()}")
    _harness.limit_threads(args.threads, flush_denormal=None)
    out = args.out or os.path.join(
        "benchmarks", "results",
        f"gpu_{''.join(c if c.isalnum() else '_' for c in name).lower()}.txt")
    # the toy run writes a file only when asked to
    log = _harness.Log(out if not args.toy or args.out else None)
    described = f"{device} ({name})" if device.startswith("cuda") else device
    for line in _harness.header_lines(_harness.run_info(__file__, argv, device=described)):
        log(line)
    X, y = generated_images(args.n_train, args.size, args.classes, 0)
    Xv, yv = generated_images(args.n_val, args.size, args.classes, 1)
    torch.manual_seed(0)
    net = torchvision.models.get_model(args.arch, weights=None).to(device).eval()
    n_all = args.n_train + args.n_val
    Xall = np.concatenate([X, Xv])
    fwd32 = forward_throughput(net, Xall, args.batch_size, device)
    bf16 = torch.bfloat16
    fwd16 = forward_throughput(net, Xall, args.batch_size, device, dtype=bf16)
    log(f"forward pass ({n_all} images, {args.size} px): fp32 {fwd32:8.0f} img/s, "
        f"bf16 {fwd16:8.0f} img/s")
    for amp in (None, "bf16"):
        sync(device)
        t0 = time.perf_counter()
        res = influence_scores(net, X, y, Xv, yv, alpha=1e-3, amp=amp,
                               batch_size=args.batch_size, device=device)
        sync(device)
        secs = time.perf_counter() - t0
        rate = args.n_train / secs
        log(f"head influence end to end, {amp or 'fp32'} features: {secs:6.2f} s, "
            f"{rate:8.0f} samples/s = {rate / fwd16:.2f}x the bf16 forward "
            f"throughput (goal >= 0.8); solver {res.solver}, residual "
            f"{res.residual:.1e}; phases "
            + ", ".join(f"{k} {v:.2f}s" for k, v in res.seconds.items()))
    clf = TransferClassifier(args.arch, weights=None, max_epochs=1,
                             batch_size=min(128, args.batch_size), device=device,
                             random_state=0)
    sync(device)
    t0 = time.perf_counter()
    clf.fit(X, y)
    sync(device)
    secs = time.perf_counter() - t0
    log(f"one fine-tuning epoch (fp32, {args.n_train} images): {secs:6.2f} s, "
        f"{args.n_train / secs:8.0f} img/s")
    log.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

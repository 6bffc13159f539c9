"""Head influence as a ratio to one forward pass with 1 and with 2 torch threads.

The head's float64 algebra (Newton fit, Hessian-vector products, scores) has
matrices of a few thousand to a few million entries: a parallel region costs
more than it saves there, and on a shared 2-core machine two threads made the
head influence more than twice as slow relative to the forward pass. skitl
therefore runs that algebra under :func:`skitl.utils.limit_threads` (one
thread for torch and for the BLAS / OpenMP pools, restored afterwards). This
script measures, in one run and on the model and data of
``bench_influence_speed.py`` (a random-weight ResNet-18 at 32 px, CIFAR-10
JPEGs when present):

- the forward pass over train + validation with 1 and 2 torch threads;
- skitl's head influence end to end with 1 and 2 threads, as shipped and
  with the thread cap switched off (the engine's ``limit_threads`` replaced
  by a no-op), which is what the cap saves.

Times are wall-clock (CPU time counts both threads' spinning), best of
``--repeat`` alternating runs, since the machine may be shared.

Examples
--------
    python benchmarks/bench_threads.py
    python benchmarks/bench_threads.py --quick
"""

import contextlib
import time

import _harness
import torch
import torchvision
from bench_influence_speed import forward_pass, load_data

import skitl.influence._crossfit as _crossfit
import skitl.influence._head as _head
from skitl.influence import influence_scores


@contextlib.contextmanager
def _no_cap(n_threads=1):
    yield torch.get_num_threads()


@contextlib.contextmanager
def thread_cap(enabled):
    """The engine's thread cap as shipped, or replaced by a no-op."""
    saved = _head.limit_threads, _crossfit.limit_threads
    if not enabled:
        _head.limit_threads = _crossfit.limit_threads = _no_cap
    try:
        yield
    finally:
        _head.limit_threads, _crossfit.limit_threads = saved


def best_wall(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def build_parser():
    ap = _harness.make_parser(__doc__, full_doc=True)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-val", type=int, default=200)
    _harness.add_arguments(ap, "quick", quick=dict(help="500 train / 50 validation"))
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--alpha", type=float, default=1e-3)
    # several counts, not one: this script sets each in turn (the measurement)
    _harness.add_arguments(ap, "threads", threads=dict(
        nargs="+", default=[1, 2], help="torch thread counts to compare"))
    ap.add_argument("--repeat", type=int, default=3)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.quick:
        args.n_train, args.n_val = 500, 50
    # denormals flushed; the torch threads are set per measurement below
    _harness.limit_threads(None)
    n, m = args.n_train, args.n_val
    X, y, source = load_data(n + m, args.size, seed=0)
    Xtr, ytr, Xv, yv = X[:n], y[:n], X[n:], y[n:]
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    counts = " and ".join(str(t) for t in args.threads)
    for line in _harness.header_lines(_harness.run_info(__file__, argv, threads=counts)):
        print(line)
    print(f"resnet18 (random weights) @ {args.size}px, {n} train / {m} val, data: {source}; "
          f"wall seconds, best of {args.repeat}\n")

    def head():
        return influence_scores(net, Xtr, ytr, Xv, yv, alpha=args.alpha,
                                batch_size=args.batch_size, device="cpu")

    print(f"{'torch threads':>13} {'forward s':>10} {'head s (cap)':>13} {'ratio':>6} "
          f"{'head s (no cap)':>16} {'ratio':>6}")
    before = torch.get_num_threads()
    try:
        for t in args.threads:
            torch.set_num_threads(t)
            forward_pass(net, Xtr[: args.batch_size], args.batch_size, "cpu")  # warm-up
            fwd = best_wall(lambda: forward_pass(net, X, args.batch_size, "cpu"),
                            args.repeat)
            with thread_cap(True):
                capped = best_wall(head, args.repeat)
            with thread_cap(False):
                uncapped = best_wall(head, args.repeat)
            print(f"{t:>13} {fwd:>10.2f} {capped:>13.2f} {capped / fwd:>6.2f} "
                  f"{uncapped:>16.2f} {uncapped / fwd:>6.2f}", flush=True)
    finally:
        torch.set_num_threads(before)
    print(f"\nload average at end {_harness.load_average()}")


if __name__ == "__main__":
    main()

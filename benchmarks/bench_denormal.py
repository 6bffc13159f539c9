#!/usr/bin/env python
"""Fine-tuning a small pretrained CNN on the CPU with and without flush-to-zero.

Pretrained small CNNs produce subnormal (denormal) floats in activations and
gradients; x86 CPUs process them in microcode, many times slower.
``TransferClassifier.fit`` / ``predict`` and the selectors' scoring switch
flush-to-zero on for their own duration (and restore the previous setting).
This script times the same fit with skitl's setting and with it disabled, in
one run, and checks that the predictions agree.

Example::

    python benchmarks/bench_denormal.py --threads 1
"""

import contextlib
import os
import sys
import time

import numpy as np

# the shared harness lives next to this script
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402


def build_parser():
    p = _harness.make_parser(__doc__)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--repeat", type=int, default=2)
    _harness.add_arguments(p, "threads")
    p.add_argument("--source", choices=("digits", "mnist"), default="digits",
                   help="digits: the embedded task; mnist: a SmallCNN pretrained on "
                        "the 10,000 MNIST test images (10 epochs; it has subnormal "
                        "weights), fine-tuned on 700 USPS images (needs --data-dir)")
    p.add_argument("--data-dir", default=os.path.join("..", "shared", "data"))
    _harness.add_arguments(p, "out", out=dict(
        help="result file (default benchmarks/results/denormal_<source>_cpu.txt)"))
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)

    import torch

    import skitl.classification._transfer as transfer
    from skitl import TransferClassifier
    from skitl.datasets import load_digits_transfer
    from skitl.models import pretrain_source_cnn

    # flush-to-zero off: the fits switch it on (skitl) or not (the patched copy)
    _harness.limit_threads(args.threads, flush_denormal=False)
    if args.source == "digits":
        data = load_digits_transfer(noise=0.0, random_state=0)
        source = pretrain_source_cnn(data.X_source, data.y_source, random_state=0)
    else:
        from skitl.datasets import load_mnist_usps

        data = load_mnist_usps(args.data_dir, n_source=10000, n_target_train=700,
                               random_state=0)
        source = pretrain_source_cnn(data.X_source, data.y_source, n_classes=10,
                                     epochs=10, random_state=0)
    subnormal = sum(int(((t.abs() > 0) & (t.abs() < torch.finfo(t.dtype).tiny)).sum())
                    for t in source.state_dict().values() if t.is_floating_point())
    fix = transfer.flush_denormal

    def fit(flush):
        transfer.flush_denormal = fix if flush else contextlib.nullcontext
        try:
            clf = TransferClassifier(source, max_epochs=args.epochs, lr=3e-3,
                                     backbone_lr_scale=1.0, batch_size=32,
                                     device="cpu", random_state=0)
            t0 = time.perf_counter()
            clf.fit(data.X_train, data.y_train)
            return time.perf_counter() - t0, clf.predict_proba(data.X_test)
        finally:
            transfer.flush_denormal = fix

    out = args.out or os.path.join("benchmarks", "results",
                                   f"denormal_{args.source}_cpu.txt")
    log = _harness.Log(out)
    for line in _harness.header_lines(_harness.run_info(__file__, argv)):
        log(line)
    log(f"SmallCNN pretrained on {len(data.y_source)} source images ({args.source}), "
        f"{subnormal} subnormal weights; fine-tuned on {len(data.y_train)} target "
        f"images for {args.epochs} epochs (all layers)")
    times = {True: [], False: []}
    probas = {}
    for _ in range(args.repeat):
        for flush in (False, True):
            secs, proba = fit(flush)
            times[flush].append(secs)
            probas[flush] = proba
    off, on = min(times[False]), min(times[True])
    log(f"without flush-to-zero (before): best of {args.repeat} {off:7.2f} s")
    log(f"with flush-to-zero (skitl):      best of {args.repeat} {on:7.2f} s")
    log(f"speed-up {off / on:.1f}x; largest probability difference "
        f"{np.abs(probas[True] - probas[False]).max():.2e}")
    from skitl.utils._threads import _flush_denormal_is_on

    log(f"flush-to-zero after the fits: {_flush_denormal_is_on()} (restored: it was off)")
    log.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``skitl`` console command.

``skitl demo`` runs the whole method on the embedded digits transfer task: a
small CNN is pretrained on the source domain; then (target part) a pool of a
few target digits and correctly labelled but rotated digits is pruned by
influence judged against a clean target set, and (noise part) a noisy target
training set is pruned by cross-fitted influence; selectors and fine-tuning
strategies are compared on the clean target test set.
"""

import argparse
import sys


def _build_parser():
    parser = argparse.ArgumentParser(
        prog="skitl",
        description="Instance-based deep transfer learning for scikit-learn.",
    )
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser(
        "demo",
        help="compare fine-tuning strategies and sample selectors on embedded digits",
        description=(
            "Pretrain a small CNN on source digits. Target part: a pool of 150 "
            "target digits and 350 correctly labelled digits rotated by 90 degrees; "
            "influence against 200 clean target digits (max_remove='auto') against "
            "fine-tuning on everything, a domain classifier, out-of-fold loss, "
            "random removal and the target alone. Noise part: corrupt the target "
            "training labels, then compare fine-tune-all, linear probe, partial "
            "re-initialisation, training from scratch and prune-then-fine-tune "
            "(random, out-of-fold loss, cleanlab, influence with the paper's plain "
            "rule and with val_trim='auto'). Accuracy on the clean target test set."
        ),
    )
    demo.add_argument("--parts", nargs="+", choices=("target", "noise"),
                      default=["target", "noise"],
                      help="which parts to run (default: both)")
    demo.add_argument("--noise", type=float, nargs="+", default=[0.3],
                      help="symmetric label-noise rates of the target training labels "
                           "(default: 0.3)")
    demo.add_argument("--seeds", type=int, default=1,
                      help="number of seeds per noise rate (default: 1)")
    demo.add_argument("--epochs", type=int, default=60,
                      help="fine-tuning epochs, no early stopping (default: 60: long "
                           "enough to memorise noise)")
    demo.add_argument("--methods", nargs="+", default=None,
                      help="subset of the noise part's methods to run (default: all)")
    demo.add_argument("--out", default="skitl-demo",
                      help="folder for the results CSV and plot (default: ./skitl-demo)")
    demo.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def main(argv=None):
    """Entry point of the ``skitl`` command.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    status : int
        Process exit status.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo(
            noise=args.noise,
            n_seeds=args.seeds,
            epochs=args.epochs,
            methods=args.methods,
            out=args.out,
            verbose=not args.quiet,
            parts=tuple(args.parts),
        )
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

__all__ = ["main"]

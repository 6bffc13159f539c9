"""``skitl demo``: the whole method on the embedded digits transfer task."""

import csv
import os
import time

import numpy as np

from ._experiment import (
    cleanlab_available,
    finetune,
    markdown_table,
    run_selectors,
    summarise,
)

#: (method label, strategy, selector name)
METHODS = (
    ("finetune", "finetune", "none"),
    ("linear_probe", "linear_probe", "none"),
    ("partial", "partial", "none"),
    ("scratch", "scratch", "none"),
    ("finetune+random", "finetune", "random"),
    ("finetune+loss", "finetune", "loss"),
    ("finetune+cleanlab", "finetune", "cleanlab"),
    ("finetune+influence_plain", "finetune", "influence_plain"),
    ("finetune+influence_auto", "finetune", "influence_auto"),
)

#: Parameters the ``partial`` strategy re-initialises: the last convolution
#: and the head (the paper's variant (b)).
PARTIAL_REINIT = ["features.5.*", "fc.*"]


def run_demo(noise=(0.3,), n_seeds=1, epochs=60, methods=None, out="skitl-demo",
             verbose=True):
    """Run the demo and write ``results.csv``, ``results.md`` and ``accuracy.png``.

    Parameters
    ----------
    noise : sequence of float, default=(0.3,)
        Symmetric noise rates of the target training labels.
    n_seeds : int, default=1
        Seeds per noise rate.
    epochs : int, default=60
        Fine-tuning epochs (no early stopping).
    methods : sequence of str, optional
        Labels from :data:`METHODS` to run; all by default.
    out : str, default="skitl-demo"
        Output folder.
    verbose : bool, default=True
        Print progress.

    Returns
    -------
    status : int
        0 on success.
    """
    import torch

    from .classification import TransferClassifier
    from .datasets import load_digits_transfer
    from .models import pretrain_source_cnn

    # a tiny CNN on 8x8 images: thread start-up costs more than it saves
    torch.set_num_threads(1)
    chosen = [m for m in METHODS if methods is None or m[0] in methods]
    if methods is not None:
        unknown = set(methods) - {m[0] for m in METHODS}
        if unknown:
            raise SystemExit(f"unknown methods {sorted(unknown)}; "
                             f"choose from {[m[0] for m in METHODS]}")
    if not cleanlab_available():
        chosen = [m for m in chosen if m[2] != "cleanlab"]
        print("cleanlab is not installed: skipping finetune+cleanlab "
              '(pip install "skitl[cleanlab]")')
    selectors = sorted({m[2] for m in chosen}, key=lambda s: s != "influence_auto")
    os.makedirs(out, exist_ok=True)
    t_start = time.perf_counter()
    rows = []
    n_total = len(noise) * n_seeds
    run = 0
    for rate in noise:
        for seed in range(n_seeds):
            run += 1
            data = load_digits_transfer(noise=rate, random_state=seed)
            t0 = time.perf_counter()
            source_net = pretrain_source_cnn(data.X_source, data.y_source, random_state=seed)
            src_acc = float((source_net(torch.as_tensor(data.X_test)).argmax(1).numpy()
                             == data.y_test).mean())
            if verbose:
                print(f"[{run}/{n_total}] noise {rate:.2f} seed {seed}: source CNN "
                      f"pretrained in {time.perf_counter() - t0:.1f}s, accuracy on the "
                      f"target test set before transfer {src_acc:.3f}", flush=True)
            base = TransferClassifier(
                source_net, strategy="finetune", max_epochs=epochs, lr=3e-3,
                backbone_lr_scale=1.0, batch_size=32, device="cpu", random_state=seed,
            )
            sel = run_selectors(selectors, base, data.X_train, data.y_train,
                                is_corrupted=data.is_corrupted, random_state=seed,
                                alpha=1e-2, verbose=verbose)
            for label, strategy, sname in chosen:
                params = {"strategy": strategy}
                if strategy == "partial":
                    params["reinit"] = PARTIAL_REINIT
                s = sel[sname]
                clf, secs = finetune(base, data.X_train, data.y_train, s["mask"],
                                     **params)
                acc = float(clf.score(data.X_test, data.y_test))
                row = {"method": label, "noise": rate, "seed": seed, "accuracy": acc,
                       "n_removed": s["n_removed"], "auroc": s["auroc"],
                       "precision": s["precision"], "recall": s["recall"],
                       "score_seconds": s["seconds"] if sname != "none" else 0.0,
                       "fit_seconds": secs}
                rows.append(row)
                if verbose:
                    print(f"  {label:<26} test accuracy {acc:.3f}  removed "
                          f"{s['n_removed']:4d}  ({secs:.1f}s)", flush=True)
    summary = summarise(rows, ["noise", "method"])
    cols = ["noise", "method", "accuracy_mean", "accuracy_std", "n_removed", "precision",
            "recall", "auroc", "score_seconds", "fit_seconds", "n_runs"]
    table = markdown_table(summary, cols)
    print()
    print(table)
    _write_csv(os.path.join(out, "results.csv"), rows)
    with open(os.path.join(out, "results.md"), "w") as fh:
        fh.write(table + "\n")
    png = os.path.join(out, "accuracy.png")
    _plot(summary, png)
    print(f"\nwrote {out}/results.csv, {out}/results.md and {png} "
          f"in {time.perf_counter() - t_start:.0f}s")
    return 0


def _write_csv(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in summary))
    noises = sorted({r["noise"] for r in summary})
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(1, len(noises))
    x = np.arange(len(methods))
    for j, rate in enumerate(noises):
        vals = [next((r for r in summary if r["method"] == m and r["noise"] == rate), None)
                for m in methods]
        means = [np.nan if v is None else v["accuracy_mean"] for v in vals]
        stds = [0 if v is None else v["accuracy_std"] for v in vals]
        ax.bar(x + j * width - 0.4 + width / 2, means, width, yerr=stds,
               label=f"noise {rate:.0%}", capsize=2)
    ax.set_xticks(x)
    ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("clean target test accuracy")
    lows = [r["accuracy_mean"] - r["accuracy_std"] for r in summary]
    ax.set_ylim(max(0.0, np.floor(10 * min(lows)) / 10 - 0.05), 1.0)
    ax.set_title("skitl demo: digits source → shifted, noisy target")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

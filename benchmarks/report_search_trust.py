"""How far the target-scored search's pick can be trusted, by target size.

Reads the results of ``bench_target.py`` (``results/target_<task>*.csv``,
the ``search`` row and the rows of its candidates on the same seeds) and, for
every task, setting and seed, compares the candidate the search picked with
the candidate that did best on the held-out test set: the *regret* is the
test metric of the best candidate minus that of the pick's own row, in
points. It measures the decision, not the refit: both numbers come from the
candidate rows, each fine-tuned once per seed with the same protocol.

The search sees the target samples of the pool; the target size per class
is what its test folds are made of. On mixed pools its candidates are
exactly the candidate rows. On one-domain pools (the shortcut and imbalance
tasks) the search stacks ``X_val`` into the pool as its target part, so its
candidates train on the pool *plus* ``X_val`` while the rows train on the
pool alone: there the comparison is approximate, and the summary by target
size counts mixed pools only.

Usage::

    python benchmarks/report_search_trust.py [--out results/search_trust.md]
"""

import argparse
import collections
import glob
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _harness import read_csv  # noqa: E402
from _target_tasks import TASK_CLASSES  # noqa: E402

#: The row that fine-tunes with each candidate of ``selector_grid``.
PICK_ROW = {
    "none": "finetune_all",
    "TargetOnlySelector()": "target_only",
    "InfluenceSampleSelector()": "influence_default",
    "InfluenceSampleSelector(max_remove='auto')": "influence_default_auto",
    "DomainClassifierSelector()": "domain",
    "LossSelector(max_remove='auto')": "loss_auto",
    "TargetAgnostic(sampler=RandomUnderSampler())": "undersample",
}

#: Target samples per class the search can split, by task (and setting).
TARGET_PER_CLASS = {
    "aux_mix": lambda setting: int(setting),
    "mnist_usps_rot": lambda s: 30,
    "mnist_usps_plain": lambda s: 30,
    "spurious": lambda s: 30,
    "spurious_texture": lambda s: 30,
    "imbalance": lambda s: 50,
    "cifar10_aux": lambda s: 50,
    "cifar10_imbalance": lambda s: 20,
}

#: Tasks whose pool is one domain: the search stacks X_val in (see above).
ONE_DOMAIN = {"spurious", "spurious_texture", "imbalance", "cifar10_imbalance"}


def load(results):
    """Rows of every task's CSVs, by (task, setting) then row then seed."""
    cells = collections.defaultdict(lambda: collections.defaultdict(dict))
    for path in sorted(glob.glob(os.path.join(results, "target_*.csv"))):
        if path.endswith("_curves.csv"):
            continue
        for r in read_csv(path):
            cells[(r["task"], str(r["setting"]))][r["row"]][r["seed"]] = r
    return cells


def decisions(cells):
    """One record per (task, setting, seed) with a search row."""
    out = []
    for (task, setting), rows in sorted(cells.items()):
        metric = TASK_CLASSES[task].metric
        for seed, s in sorted(rows.get("search", {}).items()):
            cand = {row: float(rows[row][seed][metric]) for row in sorted(set(PICK_ROW.values()))
                    if seed in rows.get(row, {})}
            picked = PICK_ROW.get(s["pick"])
            if picked not in cand:
                continue
            best = max(cand, key=cand.get)
            out.append(dict(task=task, setting=setting, seed=seed,
                            per_class=TARGET_PER_CLASS[task](setting), pick=picked,
                            best=best, regret=100 * (cand[best] - cand[picked]),
                            resolved=str(s.get("resolved")) == "True",
                            n_candidates=len(cand)))
    return out


def table(records):
    lines = ["| task | setting | target per class | candidates = rows | seeds | pick is best "
             "| regret ≤ 1 point | mean regret (points) | worst regret | resolved picks "
             "| their mean regret |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    groups = collections.defaultdict(list)
    for r in records:
        groups[(r["per_class"], r["task"], r["setting"])].append(r)
    for (per_class, task, setting), rs in sorted(groups.items()):
        reg = [r["regret"] for r in rs]
        res = [r["regret"] for r in rs if r["resolved"]]
        lines.append(
            f"| {task} | {setting or '–'} | {per_class} "
            f"| {'approximate' if task in ONE_DOMAIN else 'exact'} | {len(rs)} "
            f"| {sum(r['regret'] <= 0 for r in rs)} "
            f"| {sum(x <= 1 for x in reg)} | {statistics.mean(reg):.1f} | {max(reg):.1f} "
            f"| {len(res)} | {f'{statistics.mean(res):.1f}' if res else '–'} |")
    by_size = collections.defaultdict(list)
    for r in records:
        if r["task"] not in ONE_DOMAIN:
            by_size[r["per_class"]].append(r["regret"])
    lines += ["", "Mixed pools only:", "",
              "| target per class | decisions | regret ≤ 1 point | mean regret | worst |",
              "|---|---|---|---|---|"]
    for k, reg in sorted(by_size.items()):
        lines.append(f"| {k} | {len(reg)} | {sum(x <= 1 for x in reg)} "
                     f"| {statistics.mean(reg):.1f} | {max(reg):.1f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=os.path.join(HERE, "results"))
    p.add_argument("--out", default=None, help="also write the tables to this file")
    args = p.parse_args(argv)
    text = table(decisions(load(args.results)))
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write("# Can the search's pick be trusted? Regret by target size\n\n"
                    "Written by `python benchmarks/report_search_trust.py` from the "
                    "`target_*.csv` results. Regret: test metric of the best candidate "
                    "row minus that of the picked candidate's row, per seed, in points.\n\n"
                    + text + "\n")


if __name__ == "__main__":
    main()

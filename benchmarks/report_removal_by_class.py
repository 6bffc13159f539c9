"""Which classes the influence defaults remove from, per task.

For each task of ``bench_target.py`` (its settings, on the given seeds) the
script fits the selections of the rows ``influence_default`` (the shipped
defaults) and ``influence_old`` (the defaults before them) exactly as
``bench_target.py`` does, and counts, per class of the removal candidates,
how many were removed and how many of those were harmful (the task's
``harmful`` part, where it has one). Under imbalance the minority classes
are flagged: removing minority samples there is a defect, not a choice.
No fine-tuning runs, so a task takes seconds to minutes (the CIFAR-10
tasks: one forward pass of the pool and ``X_val`` per seed).

Usage::

    python benchmarks/report_removal_by_class.py --task aux_mix --seeds 0 1 2 3 4
    python benchmarks/report_removal_by_class.py --task cifar10_imbalance --seeds 0 1 2

Writes ``results/removal_by_class_<task>[_<tag>].md``.
"""

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _harness  # noqa: E402
import bench_target  # noqa: E402
from _target_tasks import TASK_CLASSES  # noqa: E402

#: The rows whose removals are counted.
ROWS = ("influence_default", "influence_old")


def counts(d, removed):
    """Per class of the candidates: sizes and removals, overall and of each part.

    Parts: ``harmful`` (the task's harmful samples) and ``minority`` (a
    minority class, or the minority group inside a class), where the task
    has them. ``role`` is ``"minority"`` / ``"majority"`` when the minority
    is whole classes (imbalance), else ``None``.
    """
    candidates = bench_target.removal_candidates(d)
    out = {}
    for k in np.unique(d.y[candidates]):
        in_k = candidates & (d.y == k)
        c = dict(n=int(in_k.sum()), removed=int((removed & in_k).sum()), role=None)
        for part in ("harmful", "minority"):
            mask = getattr(d, part)
            if mask is not None:
                c[f"n_{part}"] = int((in_k & mask).sum())
                c[f"{part}_removed"] = int((removed & in_k & mask).sum())
        out[int(k)] = c
    if d.minority is not None and all(c["n_minority"] in (0, c["n"]) for c in out.values()):
        for c in out.values():
            c["role"] = "minority" if c["n_minority"] else "majority"
    return out


def table(per_seed):
    """Markdown: one line per class (per role under class imbalance), means over seeds."""
    groups = {}
    for s in per_seed:
        seen = {}
        for k, c in s.items():
            # the majority class changes with the seed: group by role there
            acc = seen.setdefault(c["role"] or k, dict.fromkeys((f for f in c if f != "role"), 0))
            for f in acc:
                acc[f] += c[f]
        for key, acc in seen.items():
            groups.setdefault(key, []).append(acc)
    fields = next(iter(groups.values()))[0]
    by_role = any(c["role"] for s in per_seed for c in s.values())
    # with whole minority classes the lines already are the minority
    parts = [p for p in ("harmful", "minority") if f"n_{p}" in fields
             and not (p == "minority" and by_role)]
    head = "| class | candidates | removed | removed % |" + "".join(
        f" {p} | {p} removed |" for p in parts)
    lines = [head, "|---" * (4 + 2 * len(parts)) + "|"]
    for key in sorted(groups, key=str):
        m = {f: np.mean([a[f] for a in groups[key]]) for f in groups[key][0]}
        lines.append(f"| {key} | {m['n']:.0f} | {m['removed']:.0f} | "
                     f"{100 * m['removed'] / max(m['n'], 1):.1f} |" + "".join(
                         f" {m[f'n_{p}']:.0f} | {m[f'{p}_removed']:.0f} |" for p in parts))
    return lines


def main(argv=None):
    p = bench_target.build_parser()
    p.description = __doc__.splitlines()[0]
    args = p.parse_args(argv)
    _harness.limit_threads(args.threads)
    cfg, seeds = bench_target.resolve_config(args)
    task = TASK_CLASSES[args.task](args.task, cfg, args)
    rows = [r for r in ROWS if r in task.rows]
    run_info = _harness.run_info(__file__, argv, device=args.device)
    lines = [f"# Removal by class: {args.task}", "",
             *(f"- {x}" for x in _harness.header_lines(run_info)),
             f"- task: {task.describe()}", f"- seeds: {seeds}",
             "- candidates: the auxiliary samples (mixed pools) or the whole pool; "
             "numbers are means over seeds", ""]
    for setting in task.settings:
        found = {r: [] for r in rows}
        for seed in seeds:
            d = task.data(setting, seed)
            sel = bench_target.Selections(d, task.estimator(seed), cfg, seed, args.device,
                                          reference="influence_default")
            for r in rows:
                found[r].append(counts(d, ~sel.get(r)["mask"]))
            print(f"[{args.task} {setting} seed {seed}] done", flush=True)
        for r in rows:
            lines += [f"## {r}" + (f", setting {setting}" if setting else ""), "",
                      *table(found[r]), ""]
    text = "\n".join(lines)
    print(text)
    tag = args.tag if args.tag is not None else ("quick" if args.quick else "")
    _harness.atomic_write(os.path.join(args.out, f"removal_by_class_{args.task}"
                                       + (f"_{tag}" if tag else "") + ".md"), text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

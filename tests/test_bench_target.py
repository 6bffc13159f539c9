"""benchmarks/bench_target.py and the shared harness: per-cell results that
survive a SIGKILL, --resume, the private network cache, and the pieces of the
protocol (removal curves, markers, step budget, GridSearchCV with routing).

Everything runs on scikit-learn's embedded digits (task ``digits_rot``), with
a handful of optimizer steps: the tests check the machinery, not the results.
"""

import csv
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _load(name):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def target():
    return _load("bench_target")


@pytest.fixture(scope="module")
def transfer():
    return _load("bench_transfer")


@pytest.fixture(scope="module")
def harness():
    return _load("_harness")


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _kill_after_first_cell(cmd, csv_path, timeout=240):
    """Start ``cmd``, SIGKILL it once ``csv_path`` holds a finished cell."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < timeout:
            if csv_path.exists() and len(_rows(csv_path)) >= 1:
                break
            if proc.poll() is not None:
                pytest.fail("the run ended before it could be killed:\n"
                            + proc.stdout.read())
            time.sleep(0.05)
        else:
            pytest.fail("no cell was written in time")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    # no temporary file is left half-written where results are read from
    return _rows(csv_path)


def test_bench_target_survives_sigkill_and_resumes(target, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--task", "digits_rot", "--quick", "--steps", "6", "--rows", "finetune_all",
            "influence_val", "random@count", "--curves", "random", "--out", str(out),
            "--tag", "t"]
    csv_path = out / "target_digits_rot_t.csv"
    # a pause after each cell leaves time to kill the run between cells
    before = _kill_after_first_cell(
        [sys.executable, str(BENCH / "bench_target.py"), *argv, "--pause", "3"], csv_path)
    assert [r["row"] for r in before] == ["finetune_all"]

    assert target.main([*argv, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "--resume: 1 row cells and 0 curve cells kept" in printed
    # the finished cell was not run again: no line for it, its numbers unchanged
    assert "finetune_all " not in printed.split("--resume")[1]
    after = _rows(csv_path)
    assert [r["row"] for r in after] == ["finetune_all", "influence_val", "random@count"]
    assert after[0] == before[0]
    # the count-matched baseline removed the reference's count
    assert after[2]["n_removed"] == after[1]["n_removed"]
    curves = _rows(out / "target_digits_rot_t_curves.csv")
    assert {r["curve"] for r in curves} == {"random"}
    # 21 steps of 5 %, lowest-scored and highest-scored first
    assert len(curves) == 2 * 21
    assert "PARTIAL" not in (out / "target_digits_rot_t.md").read_text()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    # a second --resume finds everything done and runs nothing
    assert target.main([*argv, "--resume"]) == 0
    assert "all cells done, skipped" in capsys.readouterr().out
    assert _rows(csv_path) == after

    # other settings never mix with the stored cells
    with pytest.raises(SystemExit, match="other settings"):
        target.main([*argv[:4], "7", *argv[5:], "--resume"])


def test_bench_transfer_survives_sigkill_and_resumes(transfer, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--task", "digits", "--quick", "--noise", "0.2", "--n-train", "200",
            "--epochs-es", "1", "--selectors", "none", "random", "--threads", "1",
            "--out", str(out), "--tag", "t"]
    csv_path = out / "digits_t.csv"
    before = _kill_after_first_cell(
        [sys.executable, str(BENCH / "bench_transfer.py"), *argv, "--pause", "3"],
        csv_path)
    assert [r["selector"] for r in before] == ["none"]
    assert transfer.main([*argv, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "--resume: 1 finished cells kept" in printed
    after = _rows(csv_path)
    assert [r["selector"] for r in after] == ["none", "random"]
    assert after[0] == before[0]


def test_cell_store_atomic_and_refuses_other_settings(harness, tmp_path):
    path = tmp_path / "r.csv"
    store = harness.CellStore(str(path), ["seed", "row", "value"], ["seed", "row"],
                              {"a": 1})
    store.add([{"seed": 0, "row": "x", "value": 0.5}])
    store.add([{"seed": 0, "row": "y", "value": np.nan}])
    assert not [p for p in tmp_path.iterdir() if p.name != "r.csv"]
    again = harness.CellStore(str(path), ["seed", "row", "value"], ["seed", "row"],
                              {"a": 1}, resume=True)
    assert again.n_resumed == 2
    assert again.done(seed=0, row="x") and not again.done(seed=1, row="x")
    assert np.isnan(again.rows_of(seed=0, row="y")[0]["value"])
    with pytest.raises(SystemExit, match="other settings"):
        harness.CellStore(str(path), ["seed", "row", "value"], ["seed", "row"],
                          {"a": 2}, resume=True)
    # without --resume the file starts afresh
    fresh = harness.CellStore(str(path), ["seed", "row", "value"], ["seed", "row"],
                              {"a": 2})
    assert fresh.rows == [] and not fresh.done(seed=0, row="x")
    with pytest.raises(KeyError, match="value"):
        fresh.add([{"seed": 0, "row": "z"}])


def test_private_cache_is_private_and_loads_weights_only(harness, tmp_path):
    import torch
    import torch.nn as nn

    folder = tmp_path / "cache"
    folder.mkdir(mode=0o777)
    os.chmod(folder, 0o777)
    path = harness.private_cache_dir(str(folder))
    assert os.stat(path).st_mode & 0o777 == 0o700

    calls = []

    def build():
        calls.append(1)
        torch.manual_seed(0)
        return nn.Linear(3, 2)

    net, how = harness.cached_network(path, "lin", build, lambda: nn.Linear(3, 2))
    assert how.startswith("built")
    again, how = harness.cached_network(path, "lin", build, lambda: nn.Linear(3, 2))
    assert how.startswith("cached") and len(calls) == 1
    assert torch.equal(again.weight, net.weight)
    # a pickled module (arbitrary objects) is refused, never unpickled
    torch.save(nn.Linear(3, 2), os.path.join(path, "bad.pt"))
    with pytest.raises(Exception, match="(?i)weights_only|unpickl"):
        harness.cached_network(path, "bad", build, lambda: nn.Linear(3, 2))


def test_removal_curves_remove_in_score_order(target):
    rng = np.random.RandomState(0)
    y = np.repeat([0, 1], 20)
    scores = rng.randn(40)
    cand = np.ones(40, bool)
    masks = {(d, p): m for d, p, m in target.curve_masks(scores, y, cand, [0, 25, 100])}
    assert not masks[("lowest", 0)].any()
    low, high = masks[("lowest", 25)], masks[("highest", 25)]
    assert low.sum() == high.sum() == 10
    assert scores[low].mean() < scores.mean() < scores[high].mean()
    # 100 %: everything the class floor (max(2, 10 %)) allows
    assert masks[("lowest", 100)].sum() == 40 - 2 * 2


def test_step_budget_and_markers(target):
    assert target.epochs_for(600, 32, 1300) == 15
    assert target.epochs_for(600, 32, 300) == 60
    assert target.epochs_for(600, 32, 3) == target.MAX_EPOCHS
    y = np.repeat(np.arange(10), 40)
    marker, aligned = target._marker_classes(y, 0.95, np.random.RandomState(0))
    assert (marker[aligned] == y[aligned]).all() and (marker[~aligned] != y[~aligned]).all()
    assert [int((~aligned[y == c]).sum()) for c in range(10)] == [2] * 10
    patterns = target._markers()
    assert len({p.tobytes() for p in patterns}) == 10


def test_every_task_quick_is_smaller(target):
    for name in target.TASKS:
        cfg = dict(target.CONFIGS[name])
        quick = cfg.pop("quick")
        assert quick["steps"] < cfg["steps"], name
        for key, value in quick.items():
            if key.startswith("n_") and isinstance(value, int) and cfg.get(key):
                assert value <= cfg[key], (name, key)


def test_grid_search_routes_sample_domain(target, tmp_path):
    import sklearn

    args = target.build_parser().parse_args(
        ["--task", "digits_rot", "--grid", "--steps", "4", "--out", str(tmp_path),
         "--tag", "t", "--quiet"])
    try:
        search = target.run_grid(args)
    finally:
        sklearn.set_config(enable_metadata_routing=False)
    res = search.cv_results_
    assert list(res["param_clf__selector__threshold"]) == [-np.inf, -1e-4, 0.0, 1e-4]
    assert np.isfinite(res["mean_test_score"]).all()
    # the selector saw sample_domain (the target scorer would have failed without
    # it, and error_score="raise"): its validation set was the target samples
    selector = search.best_estimator_["clf"].selector_
    assert selector.influence_["mode"] == "target_whole"
    text = (tmp_path / "target_grid_t.txt").read_text()
    assert "cv_results_" in text and "best_params_" in text


def test_search_trust_report_regret(tmp_path):
    """The regret of the search's pick is the best candidate row's metric
    minus the picked candidate's, per seed; one-domain pools are kept out of
    the summary by target size."""
    trust = _load("report_search_trust")
    fields = ["task", "setting", "seed", "row", "accuracy", "worst_group", "pick",
              "resolved"]
    rows = []
    for seed, (pick, acc) in enumerate([("none", {"finetune_all": 0.80,
                                                  "target_only": 0.85,
                                                  "influence_default": 0.83}),
                                        ("TargetOnlySelector()", {"finetune_all": 0.70,
                                                                  "target_only": 0.90,
                                                                  "influence_default": 0.90})]):
        for row, a in acc.items():
            rows.append(dict(task="aux_mix", setting="10", seed=seed, row=row, accuracy=a))
        rows.append(dict(task="aux_mix", setting="10", seed=seed, row="search",
                         accuracy=0.0, pick=pick, resolved=str(seed == 1)))
    rows.append(dict(task="spurious", setting="", seed=0, row="finetune_all",
                     worst_group=0.5))
    rows.append(dict(task="spurious", setting="", seed=0, row="search", worst_group=0.4,
                     pick="none", resolved="False"))
    with open(tmp_path / "target_mix.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    records = trust.decisions(trust.load(tmp_path))
    mix = sorted((r for r in records if r["task"] == "aux_mix"), key=lambda r: r["seed"])
    assert [r["per_class"] for r in mix] == [10, 10]
    assert mix[0]["regret"] == pytest.approx(5.0) and mix[0]["best"] == "target_only"
    assert mix[1]["regret"] == pytest.approx(0.0) and mix[1]["resolved"]
    text = trust.table(records)
    assert "| aux_mix | 10 | 10 | exact | 2 | 1 | 1 | 2.5 | 5.0 | 1 | 0.0 |" in text
    assert "| spurious | – | 30 | approximate | 1 | 1 |" in text
    summary = text.split("Mixed pools only:")[1]
    assert "| 10 | 2 | 1 | 2.5 | 5.0 |" in summary and "| 30 |" not in summary


def _bunch(y, *, target=None, harmful=None, minority=None, y_val=None):
    from sklearn.utils import Bunch

    y = np.asarray(y)
    is_target = np.zeros(len(y), bool) if target is None else np.asarray(target, bool)
    return Bunch(y=y, is_target=is_target,
                 sample_domain=None if target is None else np.where(is_target, -1, 1),
                 harmful=harmful, minority=minority,
                 y_val=None if y_val is None else np.asarray(y_val))


def test_removal_by_class_counts_each_part():
    """Per class: candidates only (not the target), removals of the harmful part;
    a minority made of whole classes turns the lines into majority / minority."""
    report = _load("report_removal_by_class")
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    target = np.array([1, 0, 0, 0, 1, 0, 0, 0], bool)
    harmful = np.array([0, 1, 1, 0, 0, 0, 1, 0], bool)
    removed = np.array([1, 1, 0, 0, 0, 1, 1, 0], bool)
    c = report.counts(_bunch(y, target=target, harmful=harmful), removed)
    assert c[0] == dict(n=3, removed=1, role=None, n_harmful=2, harmful_removed=1)
    assert c[1] == dict(n=3, removed=2, role=None, n_harmful=1, harmful_removed=1)
    lines = report.table([c, c])
    assert lines[0].startswith("| class | candidates | removed | removed % | harmful |")
    assert "| 1 | 3 | 2 | 66.7 | 1 | 1 |" in lines
    # imbalance: the majority class differs by seed, so lines are by role
    y2 = np.array([0] * 6 + [1, 2])
    minority = y2 != 0
    r2 = np.array([1, 1, 1, 0, 0, 0, 0, 1], bool)
    seeds = [report.counts(_bunch(y2, minority=minority), r2),
             report.counts(_bunch((y2 + 1) % 3, minority=minority), r2)]
    text = report.table(seeds)
    assert "| majority | 6 | 3 | 50.0 |" in text and "| minority | 2 | 1 | 50.0 |" in text


def test_small_validation_set_mirrors_the_target(target):
    d = _bunch([0, 0, 1, 2, 2, 2, 3], target=[1, 1, 1, 0, 0, 0, 0],
               y_val=np.repeat([0, 1, 2, 3], 5))
    pick = target._like_target(d, seed=0)
    assert np.bincount(d.y_val[pick], minlength=4).tolist() == [2, 1, 0, 0]
    assert (np.diff(pick) > 0).all()


def test_small_target_variants_keep_what_they_say():
    """explore_small_target's variants on features (no network): rounds of
    remove-and-rescore only remove more, ``top<n>`` removes n, ``split<n>``
    never trains on the images that validated."""
    explore = _load("explore_small_target")
    rng = np.random.RandomState(0)
    y = np.r_[np.repeat([0, 1, 2], 3), rng.randint(0, 3, 150)]
    target = np.r_[np.ones(9, bool), np.zeros(150, bool)]
    X = rng.randn(len(y), 4) + np.eye(3, 4)[y] * 2
    X[~target] += 0.3
    d = _bunch(y, target=target, harmful=np.r_[np.zeros(9, bool), rng.rand(150) < 0.3],
               y_val=np.repeat([0, 1, 2], 4))
    d.X, d.X_val = X, rng.randn(12, 4) + np.eye(3, 4)[d.y_val] * 2
    keep, rows = explore.select("default", None, d, 0)
    assert keep[target].all() and len(rows) == len(y)
    more, _ = explore.select("iter2", None, d, 0)
    assert not (more & ~keep).any()
    top, _ = explore.select("top5", None, d, 0)
    assert (~top).sum() == 5
    split, rows = explore.select("split1", None, d, 0)
    held = np.setdiff1d(np.arange(len(y)), rows)
    assert len(held) == 3 and not split[held].any() and target[held].all()
    with pytest.raises(ValueError, match="unknown variant"):
        explore.select("nonsense", None, d, 0)

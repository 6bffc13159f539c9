"""The peer benchmarks (OpenDataVal, dattri): arguments and result writing without
the peers; each script's --quick run, offline, where the peer is installed.

Neither peer is in the test extra: OpenDataVal pins torch ~2.1 and numpy < 1.26
(``pip install --no-deps opendataval==1.3.0``), dattri is in the bench extra.
"""

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _load(name):
    if str(BENCH) not in sys.path:  # the scripts import _harness beside them
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def odv_bench():
    return _load("bench_peers_opendataval")


@pytest.fixture(scope="module")
def dattri_bench():
    return _load("bench_peers_dattri")


def _has(name):
    return importlib.util.find_spec(name) is not None


# ------------------------------------------------------------ without peers --
@pytest.mark.parametrize("name", ["bench_peers_opendataval", "bench_peers_dattri"])
def test_help_exits_cleanly(name, capsys):
    bench = _load(name)
    with pytest.raises(SystemExit) as exc:
        bench.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--quick" in out and "docs/peers.md" in out


def test_opendataval_arguments(odv_bench):
    args = odv_bench.parse_args(["--quick"])
    assert args.datasets == ["breast_cancer"] and args.seeds == [0]
    assert args.shapley_datasets == [] and args.tag == "quick"
    args = odv_bench.parse_args(["--datasets", "digits", "--seeds", "4", "5"])
    assert args.counts["digits"] == odv_bench.DATASETS["digits"]
    assert args.seeds == [4, 5] and args.tag is None
    assert set(args.methods) == set(odv_bench.METHODS)


def test_opendataval_missing_peer_message(odv_bench, monkeypatch):
    if _has("opendataval"):
        pytest.skip("OpenDataVal is installed")
    with pytest.raises(ImportError, match="--no-deps opendataval"):
        odv_bench.import_opendataval.__wrapped__()


def test_opendataval_stand_ins_are_inert(odv_bench):
    geomloss = odv_bench._stand_in("geomloss")
    assert geomloss.utils.distances is None
    assert odv_bench._stand_in("transformers").DistilBertModel is None


def test_opendataval_removal_summary(odv_bench):
    axis = [i / 20 for i in range(20)]
    low = [0.9 + 0.001 * i for i in range(21)]
    high = [0.9 - 0.01 * i for i in range(21)]
    s = odv_bench.removal_summary({
        "remove_least_influential_first_accuracy": low,
        "remove_most_influential_first_accuracy": high, "axis": axis})
    assert s["acc_full"] == pytest.approx(0.9)
    assert s["acc_low10"] == pytest.approx(0.902)
    assert s["low50"] == pytest.approx(np.mean(low[:11]))
    assert s["high50"] == pytest.approx(np.mean(high[:11]))


def _odv_rows(odv_bench):
    rows = []
    for d in ("breast_cancer", "digits"):
        for seed in (0, 1):
            for val in ("noisy", "clean"):
                for i, m in enumerate(("skitl_loss", "data_oob", "random")):
                    rows.append(dict(dataset=d, seed=seed, validation=val, method=m,
                                     uses_val=0, auroc=0.9 - 0.2 * i + 0.01 * seed,
                                     f1=0.7 - 0.2 * i, acc_full=0.9, acc_low10=0.92,
                                     low50=0.91, high50=0.8 + 0.05 * i, cpu_s=0.5 * i,
                                     wall_s=1.0, n_train=100, n_flipped=10))
    return rows


def test_opendataval_tables_and_markdown(odv_bench, tmp_path):
    rows = _odv_rows(odv_bench)
    text = "\n".join(odv_bench.summary_tables(rows))
    for needle in ("Detection of the flipped labels, noisy validation set",
                   "Point removal, clean validation set", "| skitl_loss | 0.905 ± 0.005",
                   "breast_cancer AUROC", "digits high-first"):
        assert needle in text, needle
    # methods keep the script's order, whatever the order of the rows
    assert text.index("| skitl_loss |") < text.index("| data_oob |") < text.index(
        "| random |")
    args = odv_bench.parse_args(["--datasets", "breast_cancer", "digits",
                                 "--out", str(tmp_path)])
    info = dict(command="python benchmarks/bench_peers_opendataval.py",
                started=__import__("datetime").datetime(2026, 1, 1), machine="test")
    path = tmp_path / "peers.md"
    odv_bench.write_markdown(str(path), rows, args, info)
    md = path.read_text()
    assert md.startswith("# skitl inside OpenDataVal's benchmark")
    assert "2 seed(s)" in md and "| random |" in md


@pytest.mark.skipif(not _has("matplotlib"), reason="matplotlib not installed")
def test_opendataval_plot(odv_bench, tmp_path):
    rows = _odv_rows(odv_bench)
    curves = [dict(dataset=r["dataset"], seed=r["seed"], validation=r["validation"],
                   method=r["method"], direction="lowest_first", fraction=f,
                   accuracy=0.9 - f / 10) for r in rows for f in (0.0, 0.05, 0.1)]
    path = tmp_path / "p.png"
    odv_bench.plot(rows, curves, str(path))
    assert path.stat().st_size > 10_000


def test_dattri_arguments(dattri_bench):
    args = dattri_bench.parse_args(["--quick"])
    assert (args.seeds, args.n_train, args.n_test, args.subsets) == ([0], 500, 50, 8)
    args = dattri_bench.parse_args([])
    assert (args.n_train, args.n_test, args.subsets) == (5000, 500, 50)
    assert args.seeds == [0, 1, 2] and args.methods == list(dattri_bench.METHODS)


def test_dattri_ground_truth_without_dattri(dattri_bench):
    X, y = dattri_bench.load_data("digits")
    F, yt, Fq, yq = dattri_bench.split(X, y, 200, 30, seed=0)
    assert len(set(map(tuple, F)) & set(map(tuple, Fq))) < 5  # disjoint draws
    values, idx = dattri_bench.ground_truth(F, yt, Fq, yq, k=10, alpha=1e-2,
                                            subsets=3, seed=0)
    assert tuple(values.shape) == (3, 30) and tuple(idx.shape) == (3, 100)
    assert (values <= 0).all()  # minus a loss, as dattri flips it
    assert all(len(set(r.tolist())) == 100 for r in idx)


def test_dattri_summary_and_files(dattri_bench, tmp_path):
    rows = []
    for seed in (0, 1):
        rows.append(dict(seed=seed, method="skitl_head", lds_mean_loss=0.9,
                         lds_per_query=0.95, cpu_mean_s=0.2, cpu_matrix_s=0.3,
                         n_train=100, n_test=20, subsets=5, alpha=0.01))
        rows.append(dict(seed=seed, method="dattri_explicit", lds_mean_loss=0.8,
                         lds_per_query=float("nan"), cpu_mean_s=2.0, cpu_matrix_s=2.0,
                         n_train=100, n_test=20, subsets=5, alpha=0.01))
    lines = dattri_bench.summarize(rows)
    text = "\n".join(lines)
    assert "| skitl_head | 0.900 ± 0.000 | 0.950 ± 0.000 | 0.20 | 0.30 |" in text
    assert "| dattri_explicit | 0.800 ± 0.000 | n/a | (from the matrix) | 2.00 |" in text
    assert "1.50x the CPU time of one mean-loss score" in text
    args = dattri_bench.parse_args(["--out", str(tmp_path), "--tag", "t"])
    info = dict(command="c", started=__import__("datetime").datetime(2026, 1, 1),
                machine="m")
    md_path = dattri_bench.write_markdown(rows, args, info, lines_after=["tail"])
    assert Path(md_path) == tmp_path / "peers_dattri_t.md"
    md = Path(md_path).read_text()
    assert "linear datamodeling score" in md and "seeds 0, 1" in md
    assert md.rstrip().endswith("tail")


def test_dattri_rows_go_to_the_csv_cell_by_cell(dattri_bench, tmp_path):
    import _harness

    args = dattri_bench.parse_args(["--out", str(tmp_path)])
    store = _harness.CellStore(dattri_bench.result_stem(args) + ".csv",
                               dattri_bench.COLUMNS, ("seed", "method"), {"a": 1})
    row = dict(seed=0, method="skitl_head", lds_mean_loss=0.9, lds_per_query=0.95,
               cpu_mean_s=0.2, cpu_matrix_s=0.3, n_train=100, n_test=20, subsets=5,
               alpha=0.01)
    store.add([row])
    again = _harness.CellStore(store.path, dattri_bench.COLUMNS, ("seed", "method"),
                               {"a": 1}, resume=True)
    assert again.done(seed=0, method="skitl_head")
    assert not again.done(seed=1, method="skitl_head")
    with open(store.path, newline="") as fh:
        assert list(csv.DictReader(fh))[0]["lds_per_query"] == "0.95"


# -------------------------------------------------------- with the peers --
def _odv_available(odv_bench):
    try:
        odv_bench.import_opendataval()
    except Exception as exc:  # not installed, or it does not import here
        return str(exc)
    return None


def test_opendataval_quick_run(odv_bench, tmp_path):
    why = _odv_available(odv_bench)
    if why:
        pytest.skip(f"OpenDataVal unavailable: {why}")
    rows = odv_bench.main(["--quick", "--quiet", "--out", str(tmp_path)]
                          + ([] if _has("matplotlib") else ["--no-plot"]))
    methods = {r["method"] for r in rows}
    assert methods == set(odv_bench.METHODS) - {"data_shapley"}
    assert len(rows) == 2 * len(methods)  # both validation sets
    by = {(r["method"], r["validation"]): r for r in rows}
    # an evaluator blind to the validation set is run once and reported twice
    assert by[("skitl_loss", "noisy")]["auroc"] == by[("skitl_loss", "clean")]["auroc"]
    assert by[("skitl_loss", "noisy")]["auroc"] > 0.8
    for r in rows:
        assert 0.0 <= r["auroc"] <= 1.0 and 0.0 <= r["acc_low10"] <= 1.0
    for suffix in (".csv", "_curves.csv", ".md"):
        assert (tmp_path / f"peers_opendataval_quick{suffix}").is_file()


@pytest.mark.skipif(not _has("dattri"), reason="dattri not installed "
                    "(pip install --no-deps dattri==0.3.0, or the bench extra)")
def test_dattri_quick_run(dattri_bench, tmp_path):
    from skitl.datasets._real import default_data_dir

    data_dir = default_data_dir()
    has_mnist = data_dir is not None and (Path(data_dir) / "mnist").is_dir()
    argv = ["--quick", "--quiet", "--out", str(tmp_path),
            *([] if has_mnist else ["--data", "digits"])]
    rows = dattri_bench.main(argv)
    by = {r["method"]: r for r in rows}
    assert set(by) == set(dattri_bench.METHODS)
    sk = by["skitl_head"]
    # the exact head influence of the model that was refitted is close to exact
    assert sk["lds_mean_loss"] > 0.8 and sk["lds_per_query"] > 0.7
    assert by["dattri_explicit"]["lds_per_query"] > 0.5
    assert (tmp_path / "peers_dattri_quick.md").is_file()

"""Smoke tests of benchmarks/bench_transfer.py: argument parsing, what --quick
leaves out, and the ImageNet -> CIFAR code path offline (weights=None, a few
local images). Interruption and --resume: tests/test_bench_target.py."""

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    path = ROOT / "benchmarks" / "bench_transfer.py"
    spec = importlib.util.spec_from_file_location("bench_transfer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_arguments(bench):
    args = bench.build_parser().parse_args(
        ["--task", "cifar10", "--quick", "--noise", "0", "0.2", "--regime", "long",
         "--selectors", "none", "loss", "influence_auto", "--strategies"])
    cfg, setup = bench.resolve_config(args)
    assert setup["seeds"] == [0]
    assert setup["noise"] == [0.0, 0.2]
    assert setup["regimes"] == ["long"]
    assert setup["strategies"] == []
    assert cfg["n_train"] == bench.CONFIGS["cifar10"]["quick"]["n_train"]
    runs = bench.plan(setup)
    assert runs == [("long", "finetune", s) for s in ("none", "loss", "influence_auto")]


def test_full_defaults_and_overrides(bench):
    args = bench.build_parser().parse_args(["--task", "mnist_usps", "--n-train", "123"])
    cfg, setup = bench.resolve_config(args)
    assert setup["seeds"] == [0, 1, 2]
    assert setup["noise"] == [0.0, 0.2, 0.4]
    assert setup["regimes"] == ["early_stopping", "long"]
    assert cfg["n_train"] == 123
    # strategies with no selector and with influence_auto, in one regime
    extra = [r for r in bench.plan(setup) if r[1] != "finetune"]
    assert {r[1] for r in extra} == {"partial", "linear_probe", "scratch"}
    assert {r[2] for r in extra} <= {"none", "influence_auto"}
    assert {r[0] for r in extra} == {"early_stopping"}


def test_quick_leaves_the_slow_parts_out(bench):
    # quick: one seed, early stopping only, no strategy sweep, no deep influence
    cfg, setup = bench.resolve_config(bench.build_parser().parse_args(
        ["--task", "cifar10", "--quick"]))
    assert setup["seeds"] == [0]
    assert setup["regimes"] == ["early_stopping"]
    assert setup["strategies"] == []
    assert "influence_deep" not in setup["selectors"]
    assert cfg["epochs_es"] <= 2 and cfg["n_train"] <= 300
    # deep influence is opt-in in a full run too; asking for it works
    _, setup = bench.resolve_config(bench.build_parser().parse_args(["--task", "cifar10"]))
    assert "influence_deep" not in setup["selectors"]
    _, setup = bench.resolve_config(bench.build_parser().parse_args(
        ["--task", "cifar10", "--quick", "--selectors", "none", "influence_deep"]))
    assert setup["selectors"] == ["none", "influence_deep"]


def test_network_cache_is_private_by_default(bench, monkeypatch, tmp_path):
    # (loading the script put benchmarks/ on sys.path)
    import _harness

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = _harness.private_cache_dir()
    assert Path(path) == tmp_path / "skitl" / "bench"
    assert Path(path).stat().st_mode & 0o777 == 0o700


def test_help_exits_cleanly(bench, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.build_parser().parse_args(["--help"])
    assert exc.value.code == 0
    assert "--noise-kind" in capsys.readouterr().out


def _write_images(root, n_per_class, rng):
    from PIL import Image

    for split, n in (("train", n_per_class), ("test", 2)):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.randint(0, 256, size=(32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_imagenet_code_path_offline(bench, tmp_path):
    # The ImageNet task's code path (torchvision ResNet by name, weights=None,
    # torch Datasets through selectors and fine-tuning) on 12 + 4 local images;
    # resnet18 at 32 px keeps it to seconds.
    pytest.importorskip("PIL")
    _write_images(tmp_path / "images", 6, np.random.RandomState(0))
    out = tmp_path / "out"
    rc = bench.main([
        "--task", "imagenet_cifar10", "--quick", "--weights", "none",
        "--image-folder", str(tmp_path / "images"), "--noise", "0.25",
        "--regime", "long", "--selectors", "none", "influence_auto",
        "--strategies", "linear_probe", "--batch-size", "4", "--threads", "1",
        "--image-size", "32", "--arch", "resnet18",
        "--out", str(out), "--quiet",
    ])
    assert rc == 0
    with open(out / "imagenet_cifar10_quick.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == [
        "finetune", "finetune+influence_auto", "linear_probe",
        "linear_probe+influence_auto"]
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)
    assert all(r["n_train"] == "12" for r in rows)
    assert (out / "imagenet_cifar10_quick.md").read_text().count("|") > 10

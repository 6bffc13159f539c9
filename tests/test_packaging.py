"""The README's promises: two set-up commands, CI runs the second, the CLI works."""

import pathlib
import re
import subprocess
import sys

import pytest
import sklearn

import skitl

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", setup, flags=re.S)


def test_readme_has_exactly_two_setup_commands():
    cmds = _readme_commands()
    assert len(cmds) == 2, cmds
    assert cmds[0].strip().endswith("skitl demo")
    assert cmds[1].strip().endswith("pytest")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    block = ci.split("# --- begin README test command", 1)[1].split(
        "# --- end README test command", 1)[0]
    lines = [ln for ln in block.splitlines()[1:] if ln.strip()]
    assert lines == [_readme_commands()[1].strip()]


def test_public_names():
    from skitl import InfluenceSampleSelector, TransferClassifier

    assert skitl.__all__ == ["InfluenceSampleSelector", "TransferClassifier"]
    assert InfluenceSampleSelector().threshold == 0.0
    assert TransferClassifier("resnet18").strategy == "finetune"


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"]])
def test_cli_help(argv):
    out = subprocess.run([sys.executable, "-m", "skitl", *argv], capture_output=True,
                         text=True, check=True)
    assert "usage" in out.stdout


def test_demo_runs_end_to_end(tmp_path):
    """A shortened demo: every stage runs and the table and plot are written."""
    from skitl._cli import main

    status = main(["demo", "--epochs", "2", "--out", str(tmp_path), "--quiet",
                   "--methods", "finetune", "finetune+influence_auto", "partial"])
    assert status == 0
    table = (tmp_path / "results.md").read_text()
    assert "finetune+influence_auto" in table and "partial" in table
    target = (tmp_path / "results_target.md").read_text()
    for row in ("finetune_all", "influence_defaults", "influence", "domain", "loss@count",
                "random@count", "target_only", "search"):
        assert f"| {row} |" in target, row
    assert (tmp_path / "accuracy.png").stat().st_size > 1000
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert len(rows) == 4


def test_readme_search_and_quick_start_run(tmp_path, monkeypatch):
    """The README's search and its quick start, with 1 epoch, 2 splits, 3 candidates."""
    text = (ROOT / "README.md").read_text()
    search_block, fit_block = re.findall(r"```python\n(.*?)```", text, flags=re.S)[:2]
    for promise in ("max_epochs=60", "TargetStratifiedKFold(3",
                    'selector_grid(memory="skitl-cache"'):
        assert promise in search_block, promise
    assert "max_epochs=60" in fit_block
    code = (search_block.replace("max_epochs=60", "max_epochs=1")
            .replace("TargetStratifiedKFold(3", "TargetStratifiedKFold(2")
            .replace('selector_grid(memory="skitl-cache"',
                     'selector_grid(["none", "target_only", "influence"], '
                     'memory="skitl-cache"')
            + fit_block.replace("max_epochs=60", "max_epochs=1"))
    monkeypatch.chdir(tmp_path)            # the search's score cache lands here
    namespace = {}
    # the README turns metadata routing on globally; keep it out of other tests
    with sklearn.config_context():
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    search, report, clf = namespace["search"], namespace["report"], namespace["clf"]
    domain = namespace["sample_domain"]
    assert len(search.cv_results_["params"]) == 3
    assert report.best in {row["candidate"] for row in report.table}
    assert 0.0 <= search.best_score_ <= 1.0
    assert (tmp_path / "skitl-cache").is_dir()
    kept = clf.selector_.support_
    assert kept[domain < 0].all()          # target samples are never removal candidates
    assert 0 < clf.selector_.n_removed_ <= (domain > 0).sum()


def test_ruff_clean():
    """The lint configuration in pyproject.toml holds for the whole tree."""
    pytest.importorskip("ruff")
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "skitl", "tests",
                          "benchmarks"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr

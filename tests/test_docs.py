"""The documentation site builds with warnings as errors, offline, gallery included.

``sphinx-build -W --keep-going -b html`` on a copy of ``docs/`` (so the build
writes nothing into the checkout), with ``SKITL_DOCS_OFFLINE=1`` (no
intersphinx inventories to fetch) and one thread per library. The gallery
examples run as part of the build. A few minutes on one CPU core.
"""

import importlib
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from test_docstrings import public_modules, public_objects

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# The docs extra (pyproject.toml), by import name.
DOCS_PACKAGES = ("sphinx", "numpydoc", "myst_parser", "sphinx_gallery",
                 "pydata_sphinx_theme", "matplotlib", "imblearn")
MISSING = [name for name in DOCS_PACKAGES if importlib.util.find_spec(name) is None]

pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"documentation packages not installed ({', '.join(MISSING)}); "
    "pip install -e '.[docs]'",
)


def _public_pages():
    """The API page every name of every public module's ``__all__`` must get.

    Classes and functions get one page under their shortest public path;
    constants one page per module that exports them.
    """
    pages = set(public_objects())
    for modname in public_modules():
        module = importlib.import_module(modname)
        pages |= {f"{modname}.{name}" for name in module.__all__
                  if not callable(getattr(module, name))}
    return pages


@pytest.fixture(scope="module")
def built_site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("docs")
    src = tmp / "docs"
    shutil.copytree(DOCS, src, ignore=shutil.ignore_patterns(
        "_build", "auto_examples", "api", "sg_execution_times.rst"))
    out = tmp / "html"
    env = dict(os.environ, SKITL_DOCS_OFFLINE="1", MPLBACKEND="agg",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html",
           "-d", str(tmp / "doctrees"), str(src), str(out)]
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=1500)
    return proc, out


def _site(built_site):
    """The build, or a skip when it wrote no site (warnings alone still write it)."""
    proc, out = built_site
    if not (out / "index.html").is_file():
        pytest.skip("sphinx-build wrote no site (see test_sphinx_build_without_warnings)")
    return proc, out


def test_sphinx_build_without_warnings(built_site):
    proc, _ = built_site
    log = proc.stderr + proc.stdout
    status = proc.returncode
    assert status == 0, (
        "sphinx-build -W failed; its warnings and errors:\n"
        + "\n".join(ln for ln in log.splitlines()
                    if "WARNING" in ln or "ERROR" in ln or "Error" in ln)[-6000:]
        + "\n--- end of the log ---\n" + log[-3000:]
    )


def test_every_public_name_has_an_api_page(built_site):
    _, out = _site(built_site)
    pages = _public_pages()
    assert "skitl.InfluenceSampleSelector" in pages and "skitl.TransferClassifier" in pages
    missing = sorted(p for p in pages if not (out / "api" / "generated" / f"{p}.html").is_file())
    assert not missing, f"no API page for {missing}"
    for modname in {p.rsplit(".", 1)[0] for p in pages}:
        assert (out / "api" / f"{modname}.html").is_file()


def test_gallery_ran_and_drew(built_site):
    _, out = _site(built_site)
    examples = sorted(p.stem for p in (DOCS / "examples").glob("plot_*.py"))
    assert len(examples) >= 5
    for stem in examples:
        page = (out / "auto_examples" / f"{stem}.html").read_text()
        # sphinx-gallery writes the captured output and embeds each figure
        assert f"sphx_glr_{stem}_001.png" in page, f"{stem} drew no figure"
        assert "sphx-glr-script-out" in page, f"{stem} printed nothing"
    # the Markdown pages are part of the site
    for page in ("index", "influence", "benchmarks", "robustness", "architecture",
                 "contributing", "api"):
        assert (out / f"{page}.html").is_file(), page

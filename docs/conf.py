"""Sphinx configuration of the skitl documentation.

Build (from the repository root)::

    pip install -e ".[docs]"
    sphinx-build -W --keep-going -b html docs docs/_build/html

The Markdown pages stay Markdown (myst-parser). The API reference is written
from each public module's ``__all__`` when this file is read, so a name added
to ``__all__`` (or a new public subpackage) appears without editing the docs.
The gallery (``docs/examples/plot_*.py``) runs during the build.

Offline builds: intersphinx needs the inventories of numpy, scikit-learn,
PyTorch, ... from the internet. ``SKITL_DOCS_OFFLINE=1`` turns intersphinx
off; ``SKITL_DOCS_OFFLINE=0`` keeps it on whatever happens; unset, a host that
cannot be reached within a few seconds is left out (with a note in the log),
so ``sphinx-build -W`` does not fail on a machine without internet.
"""

import importlib
import inspect
import os
import pkgutil
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

from numpydoc.xref import DEFAULT_LINKS
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging

import skitl

DOCS = Path(__file__).resolve().parent
logger = logging.getLogger("skitl-docs")

# -- Project ---------------------------------------------------------------
project = "skitl"
author = "the skitl developers"
copyright = "the skitl developers, BSD-3-Clause"
release = skitl.__version__
version = release

# -- General -----------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "_templates",
    "examples",  # gallery sources; their rendered pages are in auto_examples/
    "**.ipynb_checkpoints",
]
# Bare backquotes (`x`) in docstrings are code, as in numpy and scikit-learn.
default_role = "literal"

# -- Markdown ----------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "colon_fence"]
# Anchors for `[text](page.md#section)` links between the Markdown pages.
myst_heading_anchors = 3

# -- autodoc / autosummary / numpydoc ------------------------------------------
autosummary_generate = True
autodoc_typehints = "none"  # numpydoc renders the types written in docstrings
autodoc_member_order = "bysource"
# numpydoc's own member tables would need stub pages of their own; the class
# template lists the members with autodoc instead.
numpydoc_show_class_members = False
numpydoc_show_inherited_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = True
numpydoc_xref_ignore = {
    "of", "or", "and", "in", "to", "the", "a", "an", "with", "default",
    "optional", "shape", "like", "instance", "object", "objects", "any",
    "n_samples", "n_features", "n_classes", "n_val", "n_train", "k", "d", "n",
}  # fmt: skip
# numpydoc's defaults (DEFAULT_LINKS) cover bool, int, ndarray, array-like, ...
numpydoc_xref_aliases = {
    "RandomState": "numpy.random.RandomState",
    "Generator": "torch.Generator",
    "Tensor": "torch.Tensor",
    "Module": "torch.nn.Module",
    "nn.Module": "torch.nn.Module",
    "Dataset": "torch.utils.data.Dataset",
    "Bunch": "sklearn.utils.Bunch",
    "Path": "pathlib.Path",
    "PathLike": "os.PathLike",
}

# -- HTML --------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"skitl {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_show_sourcelink = False

# -- intersphinx (offline-safe) ---------------------------------------------------
_INTERSPHINX = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable", None),
    "scipy": ("https://docs.scipy.org/doc/scipy", None),
    "sklearn": ("https://scikit-learn.org/stable", None),
    "torch": ("https://docs.pytorch.org/docs/stable", None),
    "torchvision": ("https://docs.pytorch.org/vision/stable", None),
    "skorch": ("https://skorch.readthedocs.io/en/stable", None),
    "imblearn": ("https://imbalanced-learn.org/stable", None),
    "matplotlib": ("https://matplotlib.org/stable", None),
}


def _reachable(url, timeout=3.0):
    """Whether a TCP connection to the host of ``url`` opens within ``timeout``."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _intersphinx_mapping():
    mode = os.environ.get("SKITL_DOCS_OFFLINE", "").strip().lower()
    if mode in ("1", "true", "yes"):
        logger.info("skitl docs: SKITL_DOCS_OFFLINE=1, intersphinx links are off.")
        return {}
    if mode in ("0", "false", "no"):
        return dict(_INTERSPHINX)
    # Unset: a failed inventory fetch is a Sphinx warning, which -W turns into
    # an error, so leave out the hosts this machine cannot reach.
    mapping, hosts = {}, {}
    for name, (url, inv) in _INTERSPHINX.items():
        host = urlsplit(url).hostname
        if host not in hosts:
            hosts[host] = _reachable(url)
        if hosts[host]:
            mapping[name] = (url, inv)
    left_out = sorted(set(_INTERSPHINX) - set(mapping))
    if left_out:
        logger.info(
            "skitl docs: no connection to the inventories of "
            f"{', '.join(left_out)}; building without those links "
            "(SKITL_DOCS_OFFLINE=0 forces them)."
        )
    return mapping


intersphinx_mapping = _intersphinx_mapping()
intersphinx_timeout = 10


def _without_dead_links(aliases):
    """numpydoc aliases, with targets in inventories that are not loaded made plain.

    An unresolved ``:term:`` or ``:ref:`` is a warning, and an unresolved
    ``python:list`` renders as that text; so without, e.g., the Python
    inventory, ``list`` stays ``list``.
    """
    out = {}
    for word, target in {**DEFAULT_LINKS, **aliases}.items():
        match = re.match(r":[\w:]+:`(?:[^`<]*<)?(\w+):", target)
        dead = match and match.group(1) in _INTERSPHINX and match.group(1) not in intersphinx_mapping
        out[word] = word if dead else target
    return out


numpydoc_xref_aliases = _without_dead_links(numpydoc_xref_aliases)

# -- Gallery -------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "within_subsection_order": "FileNameSortKey",
    "doc_module": ("skitl",),
    "backreferences_dir": "api/generated/backreferences",
    "remove_config_comments": True,
    "min_reported_time": 1,
    # Example pages in the API reference are optional: an object that no
    # example uses simply has none.
    "log_level": {"backreference_missing": "debug"},
}

# Matplotlib's Agg backend for the gallery: no windows, same images everywhere.
os.environ.setdefault("MPLBACKEND", "agg")


# -- API reference, written from __all__ ---------------------------------------
def public_modules():
    """``skitl`` and its public subpackages/modules (names without ``_``)."""
    names = ["skitl"]
    for info in pkgutil.iter_modules(skitl.__path__):
        if not info.name.startswith("_"):
            names.append(f"skitl.{info.name}")
    return names


def _kind(obj):
    if inspect.isclass(obj):
        return "class"
    if inspect.isroutine(obj):
        return "function"
    if inspect.ismodule(obj):
        return "module"
    return "data"


def api_objects():
    """``{module: [(name, kind, canonical full name)]}`` from each ``__all__``.

    An object exported by several public modules (``skitl.InfluenceSampleSelector``
    is also ``skitl.selection.InfluenceSampleSelector``) gets one page, under
    its shortest public path: the one users import and sphinx-gallery links.
    """
    listing, canonical = {}, {}
    for modname in public_modules():
        module = importlib.import_module(modname)
        names = getattr(module, "__all__", None)
        if names is None:
            logger.warning(
                f"{modname} is a public module without __all__; the API reference "
                "is written from __all__, so it lists nothing of it."
            )
            continue
        entries = []
        for name in names:
            if not hasattr(module, name):
                logger.warning(f"{modname}.__all__ names {name!r}, which it lacks.")
                continue
            obj = getattr(module, name)
            kind = _kind(obj)
            if kind == "module":
                continue
            key = id(obj) if kind != "data" else (modname, name)
            full = canonical.setdefault(key, f"{modname}.{name}")
            entries.append((name, kind, full))
        listing[modname] = entries
    return listing


_SECTIONS = (("class", "Classes"), ("function", "Functions"), ("data", "Data"))


def _module_page(modname, entries):
    title = f":mod:`{modname}`"
    lines = [
        ".. This file is written by docs/conf.py from __all__; do not edit.",
        "",
        title,
        "=" * len(title),
        "",
        f".. automodule:: {modname}",
        "   :no-members:",
        "",
        f".. currentmodule:: {modname}",
        "",
    ]
    for kind, heading in _SECTIONS:
        own = [n for n, k, full in entries if k == kind and full == f"{modname}.{n}"]
        elsewhere = [full for n, k, full in entries if k == kind and full != f"{modname}.{n}"]
        if not own and not elsewhere:
            continue
        lines += [heading, "-" * len(heading), ""]
        if own:
            lines += [".. autosummary::", "   :toctree: generated/",
                      f"   :template: autosummary/{kind}.rst", "   :nosignatures:", ""]  # fmt: skip
            lines += [f"   {name}" for name in own] + [""]
        if elsewhere:
            # No :toctree: here: autosummary would prefix the current module
            # to these names, and their page comes from the shorter path.
            if own:
                lines += ["Also exported here, documented under a shorter path:", ""]
            lines += [".. autosummary::", "   :nosignatures:", ""]
            lines += [f"   ~{full}" for full in elsewhere] + [""]
    return "\n".join(lines)


def write_api_pages(listing):
    """Write ``docs/api/<module>.rst``; return ``{public path: canonical path}``."""
    out = DOCS / "api"
    out.mkdir(exist_ok=True)
    wanted = set()
    aliases = {}
    for modname, entries in listing.items():
        path = out / f"{modname}.rst"
        text = _module_page(modname, entries)
        wanted.add(path.name)
        # Rewrite only what changed, so incremental builds stay incremental.
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
        for name, _, full in entries:
            aliases[f"{modname}.{name}"] = full
    for stale in out.glob("*.rst"):
        if stale.name not in wanted:
            stale.unlink()
    return aliases


_PUBLIC_PATHS = write_api_pages(api_objects())
# References to a re-exported path (skitl.selection.InfluenceSampleSelector)
# are resolved to the one page (skitl.InfluenceSampleSelector).
API_ALIASES = {alias: full for alias, full in _PUBLIC_PATHS.items() if alias != full}
# Short names in docstring types ("TransferClassifier", "InfluenceResult")
# link to their pages.
for _full in sorted(set(_PUBLIC_PATHS.values())):
    numpydoc_xref_aliases.setdefault(_full.rsplit(".", 1)[1], _full)


def _resolve_alias(app, env, node, contnode):
    """Resolve references to a re-exported path (``skitl.selection.X``) to ``skitl.X``.

    Also: methods inherited from scikit-learn (``set_fit_request``,
    ``get_metadata_routing``) bring docstrings that point at scikit-learn's
    own labels and glossary; without its inventory they become plain text
    instead of a warning.
    """
    if (
        node.get("refdomain") == "std"
        and node.get("reftype") in ("ref", "term")
        and "sklearn" not in intersphinx_mapping
        and "docstring of sklearn." in (node.source or "")
    ):
        return contnode
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    for alias, full in API_ALIASES.items():
        if target == alias or target.startswith(alias + "."):
            new_target = full + target[len(alias) :]
            py = env.domains["py"]
            return py.resolve_xref(
                env, node.get("refdoc", ""), app.builder, node["reftype"],
                new_target, node, contnode,
            )  # fmt: skip
    return None


def _data_docstring(app, what, name, obj, options, lines):
    """Document a re-exported constant with the ``#:`` comment where it is assigned.

    autodoc reads ``#:`` comments of the module it documents
    (``skitl.datasets``), not of the private module the constant comes from
    (``skitl.datasets._real``); without this, the page would show the
    docstring of ``tuple`` or ``dict``.
    """
    if what != "data":
        return
    type_doc = inspect.getdoc(type(obj)) or ""
    if lines and "\n".join(lines).strip() != type_doc.strip():
        return  # a docstring of its own
    lines.clear()
    modname, _, attr = name.rpartition(".")
    package = importlib.import_module(modname)
    for info in pkgutil.iter_modules(getattr(package, "__path__", [])):
        module = importlib.import_module(f"{modname}.{info.name}")
        if getattr(module, attr, None) is not obj:
            continue
        # a module that only imports the constant has no comment for it
        comment = ModuleAnalyzer.for_module(module.__name__).find_attr_docs()
        if ("", attr) in comment:
            lines.extend(comment[("", attr)])
            return


def setup(app):
    app.connect("missing-reference", _resolve_alias)
    # before numpydoc (priority 500) reformats the lines
    app.connect("autodoc-process-docstring", _data_docstring, priority=400)


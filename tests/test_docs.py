"""The documentation covers the public API and its generated pages are complete."""

import argparse
import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import curvlab

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))
curvlab_docs = pytest.importorskip("curvlab_docs", reason="sphinx is not installed")

AUTOSUMMARY_ENTRY = re.compile(r"^\.\. autosummary::\n((?:[ \t]+.*\n|\n)+)", re.M)


def _autosummary_entries() -> set[str]:
    """Every object named in an ``autosummary`` block of the hand-written sources."""
    entries = set()
    for rst in DOCS.rglob("*.rst"):
        if "_build" in rst.parts or "generated" in rst.parts or "_templates" in rst.parts:
            continue
        for block in AUTOSUMMARY_ENTRY.findall(rst.read_text()):
            for line in block.splitlines():
                item = line.strip()
                if item and not item.startswith(":"):
                    entries.add(item.lstrip("~"))
    return entries


@pytest.mark.parametrize("name", curvlab.__all__)
def test_public_name_is_in_the_api_reference(name):
    obj = getattr(curvlab, name)
    documented_as = {f"curvlab.{name}", f"{obj.__module__}.{name}"}
    assert documented_as & _autosummary_entries(), f"add {name} to docs/api/index.rst"


@pytest.mark.parametrize("name", curvlab.__all__)
def test_public_name_has_a_docstring(name):
    assert (inspect.getdoc(getattr(curvlab, name)) or "").strip(), f"{name} has no docstring"


def test_autosummary_entries_import():
    for entry in sorted(_autosummary_entries()):
        module, _, attr = entry.rpartition(".")
        try:
            obj = importlib.import_module(entry)
        except ImportError:
            obj = getattr(importlib.import_module(module), attr)
        assert obj is not None, entry


CANONICAL = [
    # (alias, where it is documented)
    ("curvlab.create", "curvlab.api.create"),
    ("curvlab.CurvatureOptimizer.step", "curvlab.optimizer.CurvatureOptimizer.step"),
    ("curvlab.testing.ConformanceSuite", "curvlab.testing.conformance.ConformanceSuite"),
    ("curvlab.api.create", None),  # already canonical
    ("torch.optim.SGD", None),  # not ours
    ("curvlab.no_such_name", None),
]


@pytest.mark.parametrize("alias,expected", CANONICAL, ids=[c[0] for c in CANONICAL])
def test_reexported_names_resolve_to_their_definition(alias, expected):
    assert curvlab_docs.canonical_target(alias) == expected


def test_cli_reference_finds_the_parser_and_every_subcommand():
    parser = curvlab_docs.find_parser("curvlab.cli")
    assert isinstance(parser, argparse.ArgumentParser)
    names = [name for name, _, _ in curvlab_docs.subcommands(parser)]
    assert {"list", "info", "compare", "ablate", "report"} <= set(names)


@pytest.fixture(name="conf")
def _conf():
    namespace: dict = {"__file__": str(DOCS / "conf.py")}
    exec(compile((DOCS / "conf.py").read_text(), "conf.py", "exec"), namespace)
    return namespace


def test_backend_pages_exist(conf):
    for name, page in conf["curvlab_backend_pages"].items():
        assert (DOCS / f"{page}.rst").exists(), f"{name}: docs/{page}.rst is missing"
    assert set(curvlab.available()) - {"signsgd"} <= set(conf["curvlab_backend_pages"]), (
        "a built-in optimizer has no maths page; add it to curvlab_backend_pages in docs/conf.py"
    )


@pytest.mark.slow
def test_docs_build_without_warnings_and_document_everything(tmp_path):
    """Full ``-W`` build (about a minute); CI runs the same through ``make docs``."""
    src = tmp_path / "docs"
    shutil.copytree(DOCS, src, ignore=shutil.ignore_patterns("_build", "generated", "node_modules", "_figures"))
    shutil.copytree(ROOT / "examples", tmp_path / "examples")  # literalinclude'd
    out = tmp_path / "html"
    env = {**os.environ, "CURVLAB_MATHJAX_DIR": str(DOCS / "node_modules" / "mathjax")}
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(src), str(out)],
        capture_output=True, text=True, timeout=900, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    html = "\n".join(p.read_text() for p in out.rglob("*.html"))
    for name in curvlab.__all__:
        obj = getattr(curvlab, name)
        assert f'id="{obj.__module__}.{name}"' in html, f"{name} is not documented"
    hparams = (out / "hparams.html").read_text()
    for name in curvlab.available():
        assert f'id="hparams-{name}"' in hparams, f"no hyper-parameter table for {name}"
    cli = (out / "cli.html").read_text()
    for sub in ("list", "info", "compare", "ablate", "report"):
        assert f'id="cli-{sub}"' in cli


def test_module_pages_cover_every_module_even_when_a_function_shadows_it():
    tree = curvlab_docs.module_tree(["curvlab", "curvlab_plugins"])
    assert "curvlab.closure" in tree["curvlab"]  # the module, not the function curvlab.closure
    assert "curvlab_plugins.kfac" in tree["curvlab_plugins"]
    children = {c for subs in tree.values() for c in subs}
    assert set(tree) - {"curvlab", "curvlab_plugins"} == children  # every page is in a toctree
    page = curvlab_docs.module_page(importlib.import_module("curvlab.closure"), [])
    assert ".. automodule:: curvlab.closure" in page
    assert {"   closure", "   LossClosure", "   call_closure"} <= set(page.splitlines())

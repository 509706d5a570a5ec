"""Sphinx directives that derive curvlab's reference pages from the code.

Nothing here is hand-copied: the optimizer overview, the hyper-parameter
tables and the CLI reference are generated at build time from the registry
(:func:`curvlab.available`), each optimizer's ``schema``/``meta`` and the
argparse parser of :mod:`curvlab.cli`.

Directives:

``.. curvlab-optimizers::``
    One row per registered optimizer: name (linked to its maths page when
    ``curvlab_backend_pages`` names one), summary, paper.
``.. curvlab-hparams:: NAME``
    Facts from ``meta`` (paper, layers, losses, closure options) and the
    hyper-parameter table (name, type, default, range, search space, doc).
``.. curvlab-loops::``
    Per optimizer, the training loops it supports (plain loop, closure,
    keyword-free closure as PyTorch Lightning passes) and how, from ``meta``.
``.. curvlab-hparams-all::``
    A section with the above for every registered optimizer (``:exclude:``
    takes a space-separated list of names to leave out).
``.. curvlab-problems::``
    The harness's registered problems (summary, task, batch size, target).
``.. curvlab-cli::``
    ``--help`` of the ``curvlab`` command and of each sub-command.

It also writes one API page per module of ``curvlab_api_packages`` into
``curvlab_api_dir`` when the build starts (see :func:`module_tree`).

An optimizer that cannot be loaded (e.g. a backend still being written, or
one whose optional extra is missing) yields a note in the page instead of a
table. With ``curvlab_docs_strict = True`` a registered, available optimizer
that fails to load is a build warning (so ``-W`` fails).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import os
import pkgutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

_PARSER_FACTORIES = ("build_parser", "make_parser", "get_parser", "create_parser", "parser")


# --------------------------------------------------------------------- nodes
def _para(*children: nodes.Node | str) -> nodes.paragraph:
    para = nodes.paragraph()
    for child in children:
        para += nodes.Text(child) if isinstance(child, str) else child
    return para


def _table(headers: list[str], rows: list[list[nodes.Node]], widths: list[int]) -> nodes.table:
    table = nodes.table(classes=["curvlab-table"])
    group = nodes.tgroup(cols=len(headers))
    table += group
    for width in widths:
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    group += head
    row = nodes.row()
    for text in headers:
        row += nodes.entry("", _para(text))
    head += row
    body = nodes.tbody()
    group += body
    for cells in rows:
        row = nodes.row()
        for cell in cells:
            entry = nodes.entry()
            entry += cell if isinstance(cell, nodes.paragraph) else _para(cell)
            row += entry
        body += row
    return table


def _literal(text: str) -> nodes.literal:
    return nodes.literal(text=text)


def _field_list(items: list[tuple[str, nodes.Node | str]]) -> nodes.field_list:
    flist = nodes.field_list()
    for name, value in items:
        field = nodes.field()
        field += nodes.field_name(text=name)
        body = nodes.field_body()
        body += value if isinstance(value, nodes.paragraph) else _para(value)
        field += body
        flist += field
    return flist


def _section(document: nodes.document, title: str, ident: str) -> nodes.section:
    section = nodes.section(ids=[nodes.make_id(ident)], names=[nodes.fully_normalize_name(ident)])
    section += nodes.title(text=title)
    document.note_implicit_target(section, section)
    return section


# --------------------------------------------------------------------- model
def _load_info(name: str) -> tuple[Any | None, str]:
    """``curvlab.info(name)`` or ``(None, reason)`` when it cannot be loaded."""
    import curvlab

    try:
        return curvlab.info(name), ""
    except Exception as err:  # noqa: BLE001 - every failure becomes a note
        return None, f"{type(err).__name__}: {err}"


def _grid_text(info: Any, pname: str) -> str:
    space = info.schema[pname].search_space
    return space.text if space is not None else ""


class _CurvlabDirective(SphinxDirective):
    """Shared helpers: failure notes and the optimizer facts."""

    def run(self) -> list[nodes.Node]:
        self.env.note_reread()  # generated from code: re-read on every build
        return self.generate()

    def generate(self) -> list[nodes.Node]:
        raise NotImplementedError

    def unavailable(self, name: str, reason: str) -> list[nodes.Node]:
        import curvlab

        missing = curvlab.unavailable().get(name)
        if missing:
            text = (
                f"{name} needs the optional requirement(s) {', '.join(missing)} "
                "(pip install 'curvlab[peers]'); they are not installed where "
                "these pages were built."
            )
        else:
            text = f"{name} could not be loaded where these pages were built ({reason})."
            if self.config.curvlab_docs_strict:
                logger.warning("curvlab-docs: %s", text, location=self.get_location())
            else:
                logger.info("curvlab-docs: %s", text)
        note = nodes.note()
        note += _para(text)
        return [note]

    def facts(self, info: Any) -> list[nodes.Node]:
        meta = info.meta
        items: list[tuple[str, nodes.Node | str]] = [("Summary", meta.summary)]
        if meta.paper:
            items.append(("Paper", meta.paper))
        cls = info.cls
        items.append(("Class", _para(_literal(f"{cls.__module__}.{cls.__qualname__}"))))
        items.append(("Layers", ", ".join(meta.layers)))
        items.append(("Losses", ", ".join(meta.losses)))
        if meta.closure_options:
            items.append(("Closure options", ", ".join(meta.closure_options)))
        if meta.needs_loss_fn:
            items.append(("Needs loss_fn", "yes"))
        if meta.conformance:
            conf = ", ".join(f"{k}={v!r}" for k, v in meta.conformance.items())
            items.append(("Conformance hparams", _para(_literal(conf))))
        return [_field_list(items)]

    def hparam_table(self, info: Any) -> list[nodes.Node]:
        rows = []
        for row in info.schema.table():
            rows.append(
                [
                    _para(_literal(row["name"])),
                    _para(row["type"]),
                    _para(_literal(row["default"])),
                    _para(_literal(row["range"])),
                    _para(_literal(_grid_text(info, row["name"]))),
                    _para(row["doc"]),
                ]
            )
        if not rows:
            return [_para("This optimizer declares no hyper-parameters.")]
        headers = ["name", "type", "default", "allowed", "search space", "meaning"]
        return [_table(headers, rows, [12, 6, 10, 14, 14, 34])]


class OptimizersDirective(_CurvlabDirective):
    """``.. curvlab-optimizers::``: overview table of every registered name."""

    has_content = False

    def generate(self) -> list[nodes.Node]:
        import curvlab

        pages: dict[str, str] = self.config.curvlab_backend_pages
        rows = []
        names = sorted(set(curvlab.available()) | set(curvlab.unavailable()))
        for name in names:
            info, reason = _load_info(name)
            if name in pages:
                ref = pending_xref(
                    "",
                    nodes.literal(text=name),
                    refdomain="std",
                    reftype="doc",
                    reftarget="/" + pages[name],
                    refexplicit=True,
                    refdoc=self.env.docname,
                )
                first = _para(ref)
            else:
                first = _para(_literal(name))
            if info is None:
                missing = curvlab.unavailable().get(name)
                summary = (
                    f"needs {', '.join(missing)} (extra not installed)"
                    if missing
                    else "not loadable in this build"
                )
                if not missing:
                    logger.info("curvlab-docs: %s: %s", name, reason)
                rows.append([first, _para(summary), _para("")])
            else:
                rows.append([first, _para(info.meta.summary), _para(info.meta.paper)])
        return [_table(["name", "summary", "paper"], rows, [14, 46, 30])]


class LoopsDirective(_CurvlabDirective):
    """``.. curvlab-loops::``: per registered optimizer, the training loops it supports (from ``meta``)."""

    has_content = False

    def generate(self) -> list[nodes.Node]:
        import curvlab

        rows = []
        for name in sorted(set(curvlab.available()) | set(curvlab.unavailable())):
            info, _ = _load_info(name)
            if info is None:
                rows.append([_para(_literal(name)), _para("?"), _para("?"), _para("?"),
                             _para("not loadable in this build (optional extra missing)")])
                continue
            meta = info.meta
            loops = meta.loops
            yes = {True: "yes", False: "no"}
            notes = meta.loop_notes
            if not loops["plain"]:
                notes = f"needs a closure: {meta.why_closure}" + (f"; {notes}" if notes else "")
            elif not notes:
                notes = "reads the gradients of your backward"
            keyword_free = yes[loops["keyword-free closure"]]
            if meta.closure_options:
                keyword_free += " (needs " + ", ".join(meta.closure_options) + ")"
            rows.append([_para(_literal(name)), _para(yes[loops["plain"]]),
                         _para(yes[loops["closure"]]), _para(keyword_free), _para(notes)])
        headers = ["optimizer", "plain loop", "step(closure)", "keyword-free closure (Lightning)",
                   "how"]
        return [_table(headers, rows, [12, 8, 9, 13, 58])]


class HParamsDirective(_CurvlabDirective):
    """``.. curvlab-hparams:: NAME``: facts and hyper-parameter table of one optimizer."""

    required_arguments = 1
    option_spec = {"no-facts": directives.flag}

    def generate(self) -> list[nodes.Node]:
        name = self.arguments[0]
        info, reason = _load_info(name)
        if info is None:
            return self.unavailable(name, reason)
        out: list[nodes.Node] = []
        if "no-facts" not in self.options:
            out += self.facts(info)
        return out + self.hparam_table(info)


class HParamsAllDirective(_CurvlabDirective):
    """``.. curvlab-loops::``
    Per optimizer, the training loops it supports (plain loop, closure,
    keyword-free closure as PyTorch Lightning passes) and how, from ``meta``.
``.. curvlab-hparams-all::``: one section per registered optimizer."""

    option_spec = {"exclude": directives.unchanged}

    def generate(self) -> list[nodes.Node]:
        import curvlab

        exclude = set(self.options.get("exclude", "").split())
        names = sorted(set(curvlab.available()) | set(curvlab.unavailable()))
        out: list[nodes.Node] = []
        for name in names:
            if name in exclude:
                continue
            section = _section(self.state.document, name, f"hparams-{name}")
            info, reason = _load_info(name)
            if info is None:
                section.extend(self.unavailable(name, reason))
            else:
                section.extend(self.facts(info) + self.hparam_table(info))
            out.append(section)
        return out


class ProblemsDirective(_CurvlabDirective):
    """``.. curvlab-problems::``: the registered benchmark problems of the harness."""

    def generate(self) -> list[nodes.Node]:
        try:
            problems = importlib.import_module("curvlab.harness.problems")
            names = problems.available_problems()
        except Exception as err:  # noqa: BLE001
            return self.unavailable("the harness problem registry", f"{type(err).__name__}: {err}")
        rows = []
        for name in names:
            try:
                prob = problems.load_problem(name)
            except Exception as err:  # noqa: BLE001
                rows.append([_para(_literal(name)), _para(f"not loadable ({err})"), _para(""),
                             _para(""), _para("")])
                continue
            rows.append(
                [
                    _para(_literal(name)),
                    _para(prob.summary),
                    _para(prob.task),
                    _para(str(prob.batch_size)),
                    _para(_literal(repr(prob.target_loss))),
                ]
            )
        headers = ["problem", "data, model and loss", "task", "batch", "loss target"]
        return [_table(headers, rows, [16, 50, 12, 8, 10])]


# ----------------------------------------------------------------------- CLI
@contextlib.contextmanager
def _cli_environment(columns: int) -> Iterator[None]:
    """Make argparse output independent of the terminal and of ``sys.argv``."""
    saved_argv0, saved_columns = sys.argv[0], os.environ.get("COLUMNS")
    sys.argv[0] = "curvlab"
    os.environ["COLUMNS"] = str(columns)
    try:
        yield
    finally:
        sys.argv[0] = saved_argv0
        if saved_columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved_columns


def find_parser(module_name: str = "curvlab.cli") -> argparse.ArgumentParser | None:
    """The CLI's parser: a module-level parser or a zero-argument factory.

    Returns ``None`` when the module or a parser cannot be found.
    """
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001
        logger.info("curvlab-docs: cannot import %s: %s", module_name, err)
        return None
    for attr in _PARSER_FACTORIES:
        obj = getattr(module, attr, None)
        if isinstance(obj, argparse.ArgumentParser):
            return obj
        if callable(obj):
            try:
                made = obj()
            except TypeError:
                continue
            if isinstance(made, argparse.ArgumentParser):
                return made
    return None


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """``(name, one-line help, parser)`` of each sub-command, in declaration order."""
    out = []
    for action in parser._actions:  # argparse exposes sub-parsers only this way
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) in seen:
                    continue
                seen.add(id(sub))
                out.append((name, helps.get(name, ""), sub))
    return out


class CliDirective(SphinxDirective):
    """``.. curvlab-cli::``: the ``--help`` text of the command and its sub-commands."""

    option_spec = {"columns": directives.positive_int}

    def run(self) -> list[nodes.Node]:
        self.env.note_reread()  # generated from code: re-read on every build
        columns = self.options.get("columns", 88)
        with _cli_environment(columns):
            parser = find_parser()
            if parser is None:
                note = nodes.note()
                note += _para("The curvlab command-line interface is not available in this build.")
                return [note]
            main_help = parser.format_help()
            subs = [(n, h, p.format_help()) for n, h, p in subcommands(parser)]
        out: list[nodes.Node] = [nodes.literal_block(main_help, main_help, language="text")]
        for name, helptext, text in subs:
            section = _section(self.state.document, f"curvlab {name}", f"cli-{name}")
            if helptext:
                section += _para(helptext)
            section += nodes.literal_block(text, text, language="text")
            out.append(section)
        return out


# ------------------------------------------------------------ module pages
def _public_members(module: Any) -> list[str]:
    """Public classes and functions defined in ``module`` itself (not re-exports)."""
    names = []
    for name, obj in vars(module).items():
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if getattr(obj, "__module__", None) == module.__name__:
            names.append(name)
    return names


def module_page(module: Any, submodules: list[str]) -> str:
    """The reST source of one module's API page.

    autodoc documents what the module defines (re-exports are documented
    where they are defined), a summary table links to each public object and
    a toctree lists the sub-modules.
    """
    name = module.__name__
    lines = [name, "=" * len(name), "", f".. automodule:: {name}", "   :members:",
             "   :show-inheritance:", "   :ignore-module-all:", ""]
    members = _public_members(module)
    if members:
        lines += [".. rubric:: Summary", "", ".. autosummary::", "   :nosignatures:", ""]
        lines += [f"   {m}" for m in members] + [""]
    if submodules:
        lines += [".. rubric:: Modules", "", ".. toctree::", "   :maxdepth: 1", ""]
        lines += [f"   {sub}" for sub in submodules] + [""]
    return "\n".join(lines)


def module_tree(packages: list[str]) -> dict[str, list[str]]:
    """Every importable module under ``packages`` → its direct sub-modules.

    Modules are imported by their real name (``importlib.import_module``),
    never looked up as package attributes: ``curvlab.closure`` the module is
    shadowed by ``curvlab.closure`` the function on the package, which is why
    autosummary's ``:recursive:`` cannot be used here.
    """
    tree: dict[str, list[str]] = {}
    for root in packages:
        pkg = importlib.import_module(root)
        tree[root] = []
        for info in pkgutil.walk_packages(pkg.__path__, prefix=root + ".", onerror=lambda n: None):
            tree.setdefault(info.name, [])
            tree.setdefault(info.name.rpartition(".")[0], []).append(info.name)
    return tree


def _write_module_pages(app: Sphinx) -> None:
    """``builder-inited``: (re)write ``curvlab_api_dir/<module>.rst`` for every module."""
    packages: list[str] = app.config.curvlab_api_packages
    if not packages:
        return
    out = Path(app.srcdir) / app.config.curvlab_api_dir
    out.mkdir(parents=True, exist_ok=True)
    wanted = set()
    for name, subs in sorted(module_tree(packages).items()):
        try:
            module = importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - reported as a build warning
            logger.warning("curvlab-docs: cannot import %s: %s", name, err)
            continue
        path = out / f"{name}.rst"
        wanted.add(path)
        text = module_page(module, sorted(subs))
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    for stale in set(out.glob("*.rst")) - wanted:
        stale.unlink()


# ---------------------------------------------------- re-exported names
def canonical_target(target: str) -> str | None:
    """Where a re-exported name is documented: ``curvlab.create`` → ``curvlab.api.create``.

    The API reference documents every object once, in the module that
    defines it; this maps a public alias (a package re-export) to that place.
    Returns ``None`` for targets outside curvlab or that do not import.
    """
    parts = target.split(".")
    if parts[0] not in ("curvlab", "curvlab_plugins") or len(parts) < 2:
        return None
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            obj = getattr(obj, parts[cut])
        except AttributeError:
            return None
        module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if not module or not qualname:
            return None
        new = ".".join([module, qualname, *parts[cut + 1 :]])
        return new if new != target else None
    return None


def _resolve_reexport(app: Sphinx, env: Any, node: Any, contnode: nodes.Node) -> nodes.Node | None:
    """``missing-reference`` handler: resolve public aliases to their definition."""
    if node.get("refdomain") != "py":
        return None
    new = canonical_target(node.get("reftarget", ""))
    if new is None:
        return None
    domain = env.get_domain("py")
    return domain.resolve_xref(
        env, node.get("refdoc", ""), app.builder, node["reftype"], new, node, contnode
    )


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the directives and their configuration values."""
    app.add_config_value("curvlab_backend_pages", {}, "env")
    app.add_config_value("curvlab_docs_strict", False, "env")
    app.add_config_value("curvlab_api_packages", [], "env")
    app.add_config_value("curvlab_api_dir", "api/generated", "env")
    app.connect("builder-inited", _write_module_pages)
    app.add_directive("curvlab-optimizers", OptimizersDirective)
    app.add_directive("curvlab-hparams", HParamsDirective)
    app.add_directive("curvlab-loops", LoopsDirective)
    app.add_directive("curvlab-hparams-all", HParamsAllDirective)
    app.add_directive("curvlab-problems", ProblemsDirective)
    app.add_directive("curvlab-cli", CliDirective)
    app.connect("missing-reference", _resolve_reexport)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}

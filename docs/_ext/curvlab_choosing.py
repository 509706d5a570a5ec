"""The "Choosing an optimizer" page: cost, coverage and measured behaviour per backend.

Everything in these tables is derived, at build time, from

- the registry: :func:`curvlab.available`, each optimizer's ``meta`` (layers,
  losses, closure options) and ``schema`` (defaults of the tuned hparams);
- the step-time benchmark table (``docs/results/<benchmark>.csv``, written by
  ``benchmarks/step_time.py --csv``);
- the committed result stores (``docs/results/*.sqlite``): the final runs of a
  tuned comparison (best settings, rank, failed grid points) and of
  comparisons at the defaults.

``curvlab_choosing`` in ``conf.py`` names the sources::

    curvlab_choosing = {
        "benchmark": "step_time",
        "tuned": "readme/digits-autoencoder-tuned",
        "defaults": ["readme/digits-mlp-defaults", "readme/digits-cnn-defaults"],
    }

Directives:

``.. curvlab-choosing::``
    Two overview tables, one row per registered optimizer: cost per step and
    coverage; measured results.
``.. curvlab-choose:: NAME``
    One optimizer: the same facts as a field list, a link to its maths page,
    then the directive's content (the hand-written stability caveats).
    With ``curvlab_docs_strict``, a built-in optimizer (one named in
    ``curvlab_backend_pages``) without such a section is a build warning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curvlab_results import (
    _num,
    _para,
    benchmark,
    provenance_fields,
    result_sets,
    step_time_ratios,
    table,
)
from docutils import nodes
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    """One optimizer's final run(s) in one comparison."""

    comparison: str  # the comparison's title
    problem: str  # its short name (the comparison id in the manifest)
    hparams: str
    final_loss: float
    rank: int | None  # 1 = lowest final loss; None when it failed
    of: int
    reached: bool
    failure: str = ""
    skipped_steps: float = 0.0


@dataclass
class Evidence:
    """What the page says about one optimizer."""

    name: str
    cost: dict[str, float | str] = field(default_factory=dict)
    tuned: Outcome | None = None
    grid: int = 0
    grid_failed: list[str] = field(default_factory=list)
    defaults: list[Outcome] = field(default_factory=list)


def _failed(row: dict[str, Any]) -> str:
    if row.get("errors"):
        return f"error: {str(row.get('error', '')).splitlines()[0][:120]}"
    if row.get("diverged"):
        return "diverged"
    loss = row.get("final_loss")
    if not (isinstance(loss, float) and math.isfinite(loss)):
        return "no finite loss"
    return ""


def outcomes(comp: Any, label: str, short: str) -> dict[str, Outcome]:
    """``optimizer → Outcome`` for the final runs of one comparison, ranked by final loss."""
    rows = comp.summary()
    ok = sorted((r for r in rows if not _failed(r)), key=lambda r: r["final_loss"])
    rank = {r["label"]: i + 1 for i, r in enumerate(ok)}
    out = {}
    for r in rows:
        out[r["label"]] = Outcome(
            comparison=label, problem=short,
            hparams=r.get("hparams") or "defaults", final_loss=r.get("final_loss", math.nan),
            rank=rank.get(r["label"]), of=len(rows), reached=bool(r.get("reached")),
            failure=_failed(r), skipped_steps=float(r.get("stat_skipped_steps", 0.0) or 0.0))
    return out


def grid_failures(comp: Any) -> dict[str, tuple[int, list[str]]]:
    """``optimizer → (grid points tried, ["hparams: why" for each failed point])``."""
    out: dict[str, tuple[int, list[str]]] = {}
    for rec in comp.records(("tune",)):
        res, hp = rec["result"], rec["config"].hparams
        shown = comp.spec.get("shown", {}).get(rec["label"], [])
        where = ", ".join(f"{k}={hp[k]}" for k in shown if k in hp)
        n, bad = out.get(rec["label"], (0, []))
        why = ""
        if res.status != "done":
            why = f"error ({str(res.error).splitlines()[0][:80]})" if res.error else "error"
        elif res.failed:
            why = "diverged"
        out[rec["label"]] = (n + 1, bad + ([f"{where}: {why}"] if why else []))
    return out


def collect(srcdir: Path, config: Any) -> tuple[dict[str, Evidence], dict[str, Any]]:
    """Evidence for every registered optimizer, and the sources it came from."""
    import curvlab

    spec = config.curvlab_choosing
    folder = srcdir / config.curvlab_results_dir
    # Built-in backends in the order of their maths pages, then any other plugin.
    known = list(dict.fromkeys(config.curvlab_backend_pages))
    names = [n for n in known if n in curvlab.available()]
    names += sorted(set(curvlab.available()) - set(names))
    evidence = {n: Evidence(n) for n in names}
    sources: dict[str, Any] = {"benchmark": None, "tuned": None, "defaults": []}
    found = benchmark(folder, spec.get("benchmark", "step_time"))
    if found is not None:
        sources["benchmark"] = found[0]
        problems = list(dict.fromkeys(r["problem"] for r in found[1]))
        sources["problems"] = problems
        for name, ratios in step_time_ratios(found[1]).items():
            if name in evidence:
                evidence[name].cost = ratios
    sets = {s.name: s for s in result_sets(folder)}
    wanted = [("tuned", spec.get("tuned"))] + [("defaults", d) for d in spec.get("defaults", [])]
    for role, ref in wanted:
        if not ref:
            continue
        set_name, _, comp_name = ref.partition("/")
        rs = sets.get(set_name)
        if rs is None:
            continue
        store = rs.open()
        try:
            entry, comp = next(((e, c) for e, c in rs.comparisons(store) if e["name"] == comp_name),
                               (None, None))
            if comp is None:
                continue
            found_outcomes = outcomes(comp, entry.get("title", comp_name), comp_name)
            failures = grid_failures(comp) if role == "tuned" else {}
        finally:
            store.close()
        if role == "tuned":
            sources["tuned"] = (rs.manifest, entry)
        else:
            sources["defaults"].append((rs.manifest, entry))
        for name, ev in evidence.items():
            got = found_outcomes.get(name)
            if role == "tuned":
                ev.tuned = got
                ev.grid, ev.grid_failed = failures.get(name, (0, []))
            elif got is not None:
                ev.defaults.append(got)
    return evidence, sources


# -------------------------------------------------------------- rendering
def _cost_text(ev: Evidence, problems: list[str]) -> list[str]:
    cells = []
    for prob in problems:
        v = ev.cost.get(prob)
        cells.append(f"{v:.2f}×" if isinstance(v, float) else ("n/a" if v else "—"))
    return cells


def _outcome_text(o: Outcome | None, with_hparams: bool = False) -> str:
    if o is None:
        return "—"
    if o.failure:
        return o.failure
    text = f"#{o.rank} of {o.of} ({_num(o.final_loss, 4)})"
    if with_hparams:
        text = f"{o.hparams}: {text}"
    return text


class _ChoosingDirective(SphinxDirective):
    def evidence(self) -> tuple[dict[str, Evidence], dict[str, Any]]:
        self.env.note_reread()
        return collect(Path(self.env.srcdir), self.config)

    def page_link(self, name: str) -> nodes.Node:
        page = self.config.curvlab_backend_pages.get(name)
        if not page:
            return nodes.literal(text=name)
        return pending_xref("", nodes.literal(text=name), refdomain="std", reftype="doc",
                            reftarget="/" + page, refexplicit=True, refdoc=self.env.docname)


class ChoosingDirective(_ChoosingDirective):
    """``.. curvlab-choosing::``: the two overview tables."""

    def run(self) -> list[nodes.Node]:
        import curvlab

        evidence, sources = self.evidence()
        problems = sources.get("problems", [])
        cost_rows = []
        for name, ev in evidence.items():
            meta = curvlab.info(name).meta
            needs = list(meta.closure_options) + (["loss_fn"] if meta.needs_loss_fn else [])
            cost_rows.append([_para(self.page_link(name)), *_cost_text(ev, problems),
                              ", ".join(meta.layers), ", ".join(needs) or "—"])
        out: list[nodes.Node] = [
            _para("Cost per step relative to SGD on the same problem (median of interleaved "
                  "blocks, ",
                  nodes.literal(text="benchmarks/step_time.py"),
                  "), the layers each method preconditions, and what it asks of the training "
                  "loop beyond a plain closure."),
            table(["optimizer", *[f"× SGD, {p}" for p in problems], "layers",
                   "closure options / needs"], cost_rows, numeric=range(1, len(problems) + 1)),
        ]
        if sources.get("benchmark"):
            out.append(provenance_fields(sources["benchmark"], command=True))
        tuned = sources.get("tuned")
        defaults = sources.get("defaults", [])
        if tuned or defaults:
            heads = ["optimizer"]
            if tuned:
                heads += [f"{tuned[1]['name']}: best settings", "rank (final loss)",
                          "failed grid points"]
            heads += [f"{entry['name']}: rank (final loss)" for _, entry in defaults]
            rows = []
            for name, ev in evidence.items():
                cells: list[str | nodes.Node] = [_para(self.page_link(name))]
                if tuned:
                    grid = (f"{len(ev.grid_failed)} of {ev.grid}" if ev.grid else
                            "not tuned" if ev.tuned else "—")
                    cells += [ev.tuned.hparams if ev.tuned else "—", _outcome_text(ev.tuned), grid]
                for (_, entry) in defaults:
                    o = next((d for d in ev.defaults if d.comparison == entry.get("title")), None)
                    cells.append(_outcome_text(o))
                rows.append(cells)
            out.append(_para("Measured on the committed comparisons of the ",
                             pending_xref("", nodes.inline(text="Results"), refdomain="std",
                                          reftype="doc", reftarget="/results", refexplicit=True,
                                          refdoc=self.env.docname),
                             " page (one seed, 500 steps; rank 1 = lowest final training loss; "
                             "a failed grid point diverged or raised)."))
            out.append(table(heads, rows))
        return out


class ChooseDirective(_ChoosingDirective):
    """``.. curvlab-choose:: NAME``: one optimizer's facts, then its caveats (the content)."""

    required_arguments = 1
    has_content = True

    def run(self) -> list[nodes.Node]:
        import curvlab

        name = curvlab.info(self.arguments[0]).name
        evidence, sources = self.evidence()
        ev = evidence.get(name, Evidence(name))
        meta = curvlab.info(name).meta
        if not hasattr(self.env, "curvlab_choose"):
            self.env.curvlab_choose = {}
        self.env.curvlab_choose[name] = self.env.docname
        items: list[tuple[str, nodes.Node | str]] = [("Method", meta.summary)]
        problems = sources.get("problems", [])
        if ev.cost:
            cost = ", ".join(f"{p} {c}" for p, c in zip(problems, _cost_text(ev, problems)))
            items.append(("Cost per step", f"{cost} (× SGD)"))
        items.append(("Covers", f"layers: {', '.join(meta.layers)}; losses: "
                                f"{', '.join(meta.losses)}"))
        loop = []
        if meta.requires_closure:
            loop.append("needs step(closure)")
        if meta.closure_options:
            loop.append("closure options: " + ", ".join(meta.closure_options))
        if meta.needs_loss_fn:
            loop.append("needs loss_fn at construction")
        items.append(("Training loop", "; ".join(loop) or "plain step(closure) or step()"))
        if ev.tuned is not None:
            schema = curvlab.info(name).schema
            tuned_names = [kv.split("=")[0] for kv in ev.tuned.hparams.split(", ") if "=" in kv]
            defaults = ", ".join(f"{k}={schema[k].default}" for k in tuned_names if k in schema)
            text = f"{ev.tuned.hparams} on {ev.tuned.problem} ({_outcome_text(ev.tuned)})"
            if defaults:
                text += f"; defaults {defaults}"
            items.append(("Best measured settings", text))
        if ev.grid:
            failed = "; ".join(ev.grid_failed[:4]) + (" …" if len(ev.grid_failed) > 4 else "")
            items.append(("Tuning grid", f"{ev.grid} points, {len(ev.grid_failed)} failed"
                                         + (f" ({failed})" if failed else "")))
        if ev.defaults:
            items.append(("At defaults", "; ".join(f"{o.problem}: {_outcome_text(o)}"
                                                     for o in ev.defaults)))
        skipped = [o for o in [ev.tuned, *ev.defaults] if o is not None and o.skipped_steps]
        if skipped:
            items.append(("Skipped steps", "; ".join(f"{o.problem}: {o.skipped_steps:g}"
                                                       for o in skipped)))
        page = self.config.curvlab_backend_pages.get(name)
        if page:
            items.append(("Maths", _para(self.page_link(name), " — update, cost and limits")))
        flist = nodes.field_list()
        for label, value in items:
            f = nodes.field()
            f += nodes.field_name(text=label)
            body = nodes.field_body()
            body += value if isinstance(value, nodes.Element) else _para(value)
            f += body
            flist += f
        out: list[nodes.Node] = [flist]
        if self.content:
            box = nodes.admonition(classes=["caution"])
            box += nodes.title(text="Stability caveats")
            self.state.nested_parse(self.content, self.content_offset, box)
            out.append(box)
        return out


def _check_every_builtin_has_a_section(app: Sphinx, env: Any) -> None:
    """``env-check-consistency``: a built-in optimizer without ``curvlab-choose`` warns."""
    if not app.config.curvlab_docs_strict:
        return
    seen = getattr(env, "curvlab_choose", {})
    if not seen:
        return  # the page is not part of this build
    import curvlab

    for name in sorted(set(app.config.curvlab_backend_pages) & set(curvlab.available())):
        if name not in seen:
            logger.warning("curvlab-choosing: no '.. curvlab-choose:: %s' section on the "
                           "choosing page", name)


def _purge(app: Sphinx, env: Any, docname: str) -> None:
    seen = getattr(env, "curvlab_choose", {})
    for name in [n for n, doc in seen.items() if doc == docname]:
        del seen[name]


def _merge(app: Sphinx, env: Any, docnames: Any, other: Any) -> None:
    if not hasattr(env, "curvlab_choose"):
        env.curvlab_choose = {}
    env.curvlab_choose.update(getattr(other, "curvlab_choose", {}))


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the directives and the configuration value."""
    app.setup_extension("curvlab_docs")  # curvlab_backend_pages, curvlab_docs_strict
    app.setup_extension("curvlab_results")
    app.add_config_value("curvlab_choosing", {"benchmark": "step_time"}, "env",
                         types=frozenset({dict}))
    app.add_directive("curvlab-choosing", ChoosingDirective)
    app.add_directive("curvlab-choose", ChooseDirective)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    app.connect("env-check-consistency", _check_every_builtin_has_a_section)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}

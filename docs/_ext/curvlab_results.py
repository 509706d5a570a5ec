"""The Results page: tables and plots drawn at build time from committed result stores.

Data (``curvlab_results_dir``, default ``docs/results/``), written by
``python docs/results/regenerate.py`` (see its docstring):

- ``NAME.json`` with ``"kind": "comparisons"`` and ``NAME.sqlite``: a result
  set — the manifest names the set's comparisons (ids in the store), the
  command that ran each, the date, the machine and the versions;
- ``NAME.json`` with ``"kind": "benchmark"`` and ``NAME.csv``: a benchmark
  table (``benchmarks/step_time.py --csv``) with the same provenance.

A set is shown when both of its files exist, so any command that writes the
two files (e.g. ``curvlab reproduce``) gets its section without code here.

Directives:

``.. curvlab-results::``
    Every result set (``:set: NAME`` for one), in the manifests' ``order``:
    provenance, then per comparison its command, the summary table
    (:meth:`curvlab.harness.Comparison.summary`) and the harness's own plots
    (:meth:`curvlab.harness.Comparison.report`: loss vs step, loss vs time,
    time to target), then performance profiles across the set's comparisons
    (:func:`curvlab.harness.performance_profile`). Every figure carries the
    command, date, machine and versions, in its caption and in the image.
``.. curvlab-step-time:: NAME``
    The benchmark table ``NAME.csv`` as optimizer × problem ratios to SGD.

Plots are written to ``curvlab_results_figures`` (under the source folder,
not committed) on every build, so they always come from the committed data
and the installed harness.
"""

from __future__ import annotations

import csv
import json
import math
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

#: τ values of the performance-profile tables.
TAUS = (1.0, 1.5, 2.0, 4.0, 8.0)
#: Harness plot files shown per comparison, with what they show.
COMPARISON_PLOTS = (
    ("loss_vs_step.png", "Full training loss against steps"),
    ("loss_vs_time.png", "Full training loss against training time (evaluation excluded)"),
    ("time_to_target.png", "Training seconds to the problem's loss target"),
)
MEASURES = {"steps": "steps to the loss target", "seconds": "training seconds to the target",
            "loss": "final training loss"}


# ---------------------------------------------------------------- data
@dataclass
class ResultSet:
    """One committed result set: its manifest and store."""

    name: str
    manifest: dict[str, Any]
    store_path: Path

    def open(self) -> Any:
        """The :class:`curvlab.harness.Store`, read-only (the committed file is never changed)."""
        from curvlab.harness import Store

        return Store(self.store_path, readonly=True)

    def comparisons(self, store: Any) -> list[tuple[dict[str, Any], Any]]:
        """``(manifest entry, Comparison)`` for every comparison the manifest lists."""
        from curvlab.harness import Comparison

        out = []
        for entry in self.manifest.get("comparisons", []):
            cid, spec = store.comparison(entry["name"])
            out.append((entry, Comparison(cid, store, spec)))
        return out


def _manifests(folder: Path, kind: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            manifest = json.loads(path.read_text())
        except ValueError as err:
            logger.warning("curvlab-results: %s is not valid JSON: %s", path, err)
            continue
        if isinstance(manifest, dict) and manifest.get("kind") == kind:
            out.append((path.stem, manifest))
    return sorted(out, key=lambda item: (item[1].get("order", 100), item[0]))


def result_sets(folder: Path) -> list[ResultSet]:
    """The result sets in ``folder`` whose manifest and store both exist, in display order."""
    sets = []
    for name, manifest in _manifests(folder, "comparisons"):
        store = folder / manifest.get("store", f"{name}.sqlite")
        if store.is_file():
            sets.append(ResultSet(name, manifest, store))
        else:
            logger.info("curvlab-results: %s has no store %s; not shown", name, store.name)
    return sets


def benchmark(folder: Path, name: str) -> tuple[dict[str, Any], list[dict[str, str]]] | None:
    """Manifest and rows of benchmark ``name`` (``None`` when it was not generated)."""
    path = folder / f"{name}.json"
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    table = folder / manifest.get("table", f"{name}.csv")
    if not table.is_file():
        return None
    with open(table, newline="") as fh:
        return manifest, list(csv.DictReader(fh))


def step_time_ratios(rows: list[dict[str, str]]) -> dict[str, dict[str, float | str]]:
    """``optimizer → problem → ratio to SGD`` (the refusal text where unsupported)."""
    out: dict[str, dict[str, float | str]] = {}
    for row in rows:
        value: float | str = (float(row["ratio_vs_sgd"]) if row.get("ratio_vs_sgd")
                              else f"unsupported: {row.get('unsupported', '')}")
        out.setdefault(row["optimizer"], {})[row["problem"]] = value
    return out


def provenance(manifest: dict[str, Any]) -> dict[str, str]:
    """Date, machine and versions of a manifest as short texts."""
    m = manifest.get("machine", {})
    load = m.get("load_average_1min")
    after = m.get("load_average_1min_after")
    machine = f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('os', '?')}"
    if load is not None:
        machine += f", load average {load}" + (f" → {after}" if after is not None else "")
    if m.get("threads_per_run"):
        machine += f", {m['threads_per_run']} thread(s) per run"
    v = dict(manifest.get("versions", {}))
    v.pop("code", None)  # git tree ids of the code folders: for regenerate.py's own check
    head = f"curvlab {v.pop('curvlab', '?')}"
    if "git" in v:
        head += f" (git {v.pop('git')})"
    versions = ", ".join([head] + [f"{k} {val}" for k, val in v.items()])
    return {"date": str(manifest.get("date", "?")), "machine": machine, "versions": versions}


def stamp(png: Path, lines: list[str], width: int = 150) -> None:
    """Append a footer with ``lines`` (wrapped) under the picture ``png``, pixel for pixel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    img = mpimg.imread(png)
    h, w = img.shape[:2]
    dpi = 100
    chars = max(40, min(width, int(w / 6.3)))  # 7 pt monospace ≈ 5.8 px a character
    text = "\n".join(wrapped for line in lines for wrapped in textwrap.wrap(line, chars))
    foot = 11 * (text.count("\n") + 1) + 10
    fig = plt.figure(figsize=(w / dpi, (h + foot) / dpi), dpi=dpi)
    ax = fig.add_axes((0, foot / (h + foot), 1, h / (h + foot)))
    ax.imshow(img, interpolation="none")
    ax.set_axis_off()
    fig.text(0.01, (foot - 5) / (h + foot), text, va="top", ha="left", fontsize=7,
             family="monospace", color="#444444")
    fig.savefig(png, dpi=dpi)
    plt.close(fig)


# ------------------------------------------------------------- formatting
def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if math.isinf(value):
            return "∞"
        return f"{value:.{digits}g}"
    return str(value)


def _pm(row: dict[str, Any], key: str, digits: int = 4) -> str:
    mean, std = row.get(key), row.get(f"{key}_std")
    text = _num(mean, digits)
    if row.get("runs", 1) > 1 and isinstance(std, float) and math.isfinite(std) and text != "—":
        text += f" ± {_num(std, 2)}"
    return text


def _sort_key(row: dict[str, Any]) -> tuple[int, float]:
    loss = row.get("final_loss")
    failed = row.get("errors", 0) >= row.get("runs", 1) or (
        row.get("diverged", 0) and row.get("diverged") == row.get("runs"))
    ok = isinstance(loss, float) and math.isfinite(loss) and not failed
    return (0 if ok else 1, loss if ok else math.inf)


def _para(*children: nodes.Node | str) -> nodes.paragraph:
    para = nodes.paragraph()
    for child in children:
        para += nodes.Text(child) if isinstance(child, str) else child
    return para


def table(headers: list[str], rows: list[list[str | nodes.Node]], numeric: Iterable[int] = (),
          classes: tuple[str, ...] = ()) -> nodes.table:
    """A docutils table; the ``numeric`` columns are right-aligned numbers."""
    numeric = set(numeric)
    tab = nodes.table(classes=["curvlab-table", *classes])
    group = nodes.tgroup(cols=len(headers))
    tab += group
    for _ in headers:
        group += nodes.colspec(colwidth=10)
    head = nodes.thead()
    group += head
    hrow = nodes.row()
    for text in headers:
        hrow += nodes.entry("", _para(text))
    head += hrow
    body = nodes.tbody()
    group += body
    for cells in rows:
        brow = nodes.row()
        for i, cell in enumerate(cells):
            entry = nodes.entry(classes=["curvlab-num"] if i in numeric else [])
            entry += cell if isinstance(cell, nodes.paragraph) else _para(cell)
            brow += entry
        body += brow
    return tab


def summary_table(rows: list[dict[str, Any]]) -> nodes.table:
    """README-style table of :meth:`Comparison.summary` rows, best final loss first."""
    has_acc = any(isinstance(r.get("test_acc"), float) and math.isfinite(r["test_acc"])
                  for r in rows)
    headers = ["optimizer", "hparams", "final train loss", "test loss"]
    headers += ["test acc"] if has_acc else []
    headers += ["steps to target", "s to target", "ms/step", "× SGD", "failed runs"]
    out = []
    for r in sorted(rows, key=_sort_key):
        failed = []
        if r.get("diverged"):
            failed.append(f"{r['diverged']} diverged")
        if r.get("errors"):
            failed.append(f"{r['errors']} error(s): {str(r.get('error', ''))[:80]}")
        cells: list[str | nodes.Node] = [_para(nodes.literal(text=r["label"])),
                                         r.get("hparams") or "defaults",
                                         _pm(r, "final_loss"), _pm(r, "test_loss")]
        cells += [_pm(r, "test_acc", 3)] if has_acc else []
        cells += [_num(r.get("steps_to_target")), _num(r.get("seconds_to_target"), 3),
                  _num(r.get("step_time_ms"), 3), _num(r.get("ratio_vs_sgd"), 3),
                  "; ".join(failed) or "—"]
        out.append(cells)
    return table(headers, out, numeric=range(2, len(headers) - 1))


def _figure(uri: str, caption: str, alt: str) -> nodes.figure:
    fig = nodes.figure(classes=["curvlab-figure"])
    fig += nodes.image(uri=uri, alt=alt)
    fig += nodes.caption(text=caption)
    return fig


def _field_list(items: list[tuple[str, nodes.Node | str]]) -> nodes.field_list:
    flist = nodes.field_list()
    for name, value in items:
        field = nodes.field()
        field += nodes.field_name(text=name)
        body = nodes.field_body()
        body += value if isinstance(value, nodes.Element) else _para(value)
        field += body
        flist += field
    return flist


def provenance_fields(manifest: dict[str, Any], command: bool = False) -> nodes.field_list:
    """Regenerate command (and the command itself), date, machine and versions as fields."""
    p = provenance(manifest)
    items: list[tuple[str, nodes.Node | str]] = []
    if command and manifest.get("command"):
        items.append(("Command", _para(nodes.literal(text=manifest["command"]))))
    items += [("Regenerate", _para(nodes.literal(text=manifest.get("regenerate", "")))),
              ("Date", p["date"]), ("Machine", p["machine"]), ("Versions", p["versions"])]
    return _field_list(items)


# ------------------------------------------------------------- directives
class _ResultsDirective(SphinxDirective):
    def folder(self) -> Path:
        return Path(self.env.srcdir) / self.config.curvlab_results_dir

    def figures(self, *parts: str) -> tuple[Path, str]:
        """A fresh figure folder and its source-relative URI prefix."""
        rel = Path(self.config.curvlab_results_figures, *parts)
        path = Path(self.env.srcdir) / rel
        path.mkdir(parents=True, exist_ok=True)
        return path, "/" + rel.as_posix()

    def section(self, title: str, ident: str) -> nodes.section:
        sec = nodes.section(ids=[nodes.make_id(ident)], names=[nodes.fully_normalize_name(ident)])
        sec += nodes.title(text=title)
        self.state.document.note_implicit_target(sec, sec)
        return sec

    def provenance_fields(self, manifest: dict[str, Any]) -> nodes.field_list:
        return provenance_fields(manifest)


class ResultsDirective(_ResultsDirective):
    """``.. curvlab-results::``: every committed result set (or ``:set: NAME``)."""

    option_spec = {"set": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        self.env.note_reread()  # drawn from data files: re-read on every build
        folder = self.folder()
        for path in folder.glob("*"):
            if path.suffix in (".json", ".sqlite", ".csv"):
                self.env.note_dependency(str(path))
        sets = result_sets(folder)
        wanted = self.options.get("set")
        if wanted:
            sets = [s for s in sets if s.name == wanted]
            if not sets:
                logger.warning("curvlab-results: no result set %r in %s", wanted, folder,
                               location=self.get_location())
        if not sets:
            note = nodes.note()
            note += _para("No result set has been generated yet: run "
                          "python docs/results/regenerate.py.")
            return [note]
        return [self.render(s) for s in sets]

    def render(self, rs: ResultSet) -> nodes.section:
        sec = self.section(rs.manifest.get("title", rs.name), f"results-{rs.name}")
        if rs.manifest.get("summary"):
            sec += _para(rs.manifest["summary"])
        sec += self.provenance_fields(rs.manifest)
        p = provenance(rs.manifest)
        store = rs.open()
        try:
            comps = rs.comparisons(store)
            for entry, comp in comps:
                sec += self.comparison(rs, entry, comp, p)
            if rs.manifest.get("profiles") and len(comps) > 1:
                sec += self.profiles(rs, store, [c.id for _, c in comps], comps, p)
        finally:
            store.close()
        return sec

    def comparison(self, rs: ResultSet, entry: dict[str, Any], comp: Any,
                   p: dict[str, str]) -> nodes.section:
        sec = self.section(entry.get("title", entry["name"]), f"results-{rs.name}-{entry['name']}")
        if entry.get("about"):
            sec += _para(entry["about"])
        command = entry.get("command", "")
        sec += nodes.literal_block(command, command, language="bash")
        spec = comp.spec
        sec += _para(f"Loss target {_num(comp.target)} (for steps and seconds to target); "
                     f"{spec.get('seeds', 1)} seed(s); comparison id ",
                     nodes.literal(text=comp.id), f", started {entry.get('started', p['date'])}.")
        sec += summary_table(comp.summary())
        out, uri = self.figures(rs.name, entry["name"])
        comp.report(out)  # the harness's own plots (and CSV/markdown beside them)
        for fname, what in COMPARISON_PLOTS:
            if not (out / fname).is_file():
                continue
            caption = (f"{what}: {spec.get('problem', entry['name'])}. Command: {command}. "
                       f"Date {p['date']}; {p['machine']}; {p['versions']}.")
            stamp(out / fname, [command, f"{p['date']} · {p['machine']}", p["versions"]])
            sec += _figure(f"{uri}/{fname}", caption, f"{what} ({entry['name']})")
        return sec

    def profiles(self, rs: ResultSet, store: Any, ids: list[str], comps: list,
                 p: dict[str, str]) -> nodes.section:
        from curvlab.harness import performance_profile
        from curvlab.harness.profiles import write_profile

        sec = self.section("Performance profiles across these problems",
                           f"results-{rs.name}-profiles")
        sec += _para(
            "Dolan–Moré profiles over the problems above: for each optimizer, ρ(τ) is the "
            "fraction of problems on which its cost is within a factor τ of the best "
            "optimizer's (a run that misses the target, diverges or fails costs ∞). "
            "ρ(1): how often it is the best; ρ at large τ: how often it reaches the target "
            "at all.")
        commands = "; ".join(entry.get("command", "") for entry, _ in comps)
        out, uri = self.figures(rs.name, "profiles")
        for measure in rs.manifest["profiles"]:
            try:
                prof = performance_profile(store, ids, measure)
            except ValueError as err:
                sec += _para(f"No {measure} profile: {err}")
                continue
            sub = self.section(f"Cost: {MEASURES.get(measure, measure)}",
                               f"results-{rs.name}-profile-{measure}")
            paths = write_profile(prof, out)
            png = next(path for path in paths if path.suffix == ".png")
            stamp(png, [f"profile over {', '.join(prof.problems)} ({measure})",
                        f"{p['date']} · {p['machine']}", p["versions"]])
            caption = (f"Performance profile, cost = {MEASURES.get(measure, measure)}, over "
                       f"{', '.join(prof.problems)}. Commands: {commands}. Date {p['date']}; "
                       f"{p['machine']}; {p['versions']}.")
            sub += _figure(f"{uri}/{png.name}", caption, f"performance profile ({measure})")
            rows = [[_para(nodes.literal(text=s)), *[_num(prof.rho(s, t), 3) for t in TAUS]]
                    for s in sorted(prof.solvers, key=lambda s: [-prof.rho(s, t) for t in TAUS])]
            sub += table(["optimizer", *[f"ρ(τ={t:g})" for t in TAUS]], rows,
                         numeric=range(1, len(TAUS) + 1))
            sec += sub
        return sec


class StepTimeDirective(_ResultsDirective):
    """``.. curvlab-step-time:: NAME``: a benchmark table (ratios to SGD per problem)."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        self.env.note_reread()
        name = self.arguments[0]
        found = benchmark(self.folder(), name)
        if found is None:
            logger.warning("curvlab-results: benchmark %r has not been generated "
                           "(python docs/results/regenerate.py %s)", name, name,
                           location=self.get_location())
            return []
        manifest, rows = found
        ratios = step_time_ratios(rows)
        problems = list(dict.fromkeys(r["problem"] for r in rows))
        sgd = {r["problem"]: r["ms_per_step"] for r in rows if r["optimizer"] == "sgd"}
        body = []
        for opt in sorted(ratios, key=lambda o: (o != "sgd", o)):
            cells: list[str | nodes.Node] = [_para(nodes.literal(text=opt))]
            for prob in problems:
                v = ratios[opt].get(prob, "")
                cells.append(f"{v:.2f}×" if isinstance(v, float) else ("n/a" if v else "—"))
            body.append(cells)
        headers = ["optimizer", *[f"{p} (SGD {sgd.get(p, '?')} ms)" for p in problems]]
        return [table(headers, body, numeric=range(1, len(headers))),
                provenance_fields(manifest, command=True)]


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the directives and their configuration values."""
    app.add_config_value("curvlab_results_dir", "results", "env", types=frozenset({str}))
    app.add_config_value("curvlab_results_figures", "results/_figures", "env",
                         types=frozenset({str}))
    app.add_directive("curvlab-results", ResultsDirective)
    app.add_directive("curvlab-step-time", StepTimeDirective)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}

"""The Reproductions page: the seed papers' claims, our figures beside theirs, the verdicts.

Data: ``reproductions.json`` and ``reproductions.sqlite`` in
``curvlab_results_dir`` (``docs/results/``), both written by ``curvlab
reproduce --all --quick --write-docs`` (:func:`curvlab.harness.reproduce.write_docs`):
the manifest holds the command, the date, the machine, the versions and
every preset's result (parts, claims, arms, verdicts); the store holds the
runs of every part that ran as a harness comparison.

Directive ``.. curvlab-reproductions::``: the provenance, a table of the
verdicts, then per preset its source, and per part the verdict, the claims
(the paper's figure beside ours, with the gap) and the arms; for a part
stored as a comparison, the harness's own summary table and plots, drawn
with the Results page's machinery (:mod:`curvlab_results`), so every
figure carries the command, date, machine and versions.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from curvlab_results import ResultsDirective, ResultSet, provenance, provenance_fields, table
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

MANIFEST = "reproductions.json"


def _para(*children: nodes.Node | str) -> nodes.paragraph:
    para = nodes.paragraph()
    for child in children:
        para += nodes.Text(child) if isinstance(child, str) else child
    return para


def _verdict(text: str) -> nodes.Node:
    return nodes.strong(text=text)


class ReproductionsDirective(ResultsDirective):
    """``.. curvlab-reproductions::``: every preset of the committed results file."""

    option_spec: dict[str, Any] = {}

    def run(self) -> list[nodes.Node]:
        self.env.note_reread()
        folder = self.folder()
        path = folder / MANIFEST
        if not path.is_file():
            note = nodes.note()
            note += _para("No reproduction has been recorded yet: run "
                          "curvlab reproduce --all --quick --write-docs.")
            return [note]
        self.env.note_dependency(str(path))
        manifest = json.loads(path.read_text())
        store_path = folder / manifest.get("store", "reproductions.sqlite")
        self.env.note_dependency(str(store_path))
        out: list[nodes.Node] = [provenance_fields(manifest, command=True)]
        out.append(self.verdicts(manifest))
        rs = ResultSet("reproductions", manifest, store_path)
        store = rs.open() if store_path.is_file() else None
        try:
            comps = {entry["name"]: (entry, comp) for entry, comp in rs.comparisons(store)} \
                if store is not None else {}
            p = provenance(manifest)
            for preset in manifest.get("presets", []):
                out.append(self.preset(rs, preset, comps, p))
        finally:
            if store is not None:
                store.close()
        return out

    def verdicts(self, manifest: dict[str, Any]) -> nodes.table:
        rows: list[list[str | nodes.Node]] = []
        for preset in manifest.get("presets", []):
            parts = "; ".join(f"{part['problem']}: {part['verdict']}" for part in preset["parts"])
            rows.append([_para(nodes.literal(text=preset["name"])), preset["title"],
                         _para(_verdict(preset["verdict"])), parts])
        for name, why in manifest.get("skipped", {}).items():
            rows.append([_para(nodes.literal(text=name)), "—", _para(_verdict("cannot run yet")),
                         why])
        return table(["preset", "claim", "verdict", "parts"], rows)

    def preset(self, rs: ResultSet, preset: dict[str, Any], comps: dict[str, Any],
               p: dict[str, str]) -> nodes.section:
        sec = self.section(f"{preset['name']}: {preset['title']}", f"reproduce-{preset['name']}")
        sec += _para("Paper: ", preset["paper"], ". Verdict: ", _verdict(preset["verdict"]),
                     f" ({'quick' if preset.get('quick') else 'full'} budgets).")
        sec += self.source(preset["source"])
        for part in preset["parts"]:
            sec += self.part(rs, preset, part, comps, p)
        return sec

    def source(self, text: str) -> nodes.container:
        """The preset's source (its docstring, reStructuredText) as a block."""
        box = nodes.container(classes=["curvlab-source"])
        lines = inspect.cleandoc(text).splitlines()
        self.state.nested_parse(StringList(lines, source="curvlab reproduce presets"),
                                self.content_offset, box)
        return box

    def part(self, rs: ResultSet, preset: dict[str, Any], part: dict[str, Any],
             comps: dict[str, Any], p: dict[str, str]) -> nodes.section:
        from curvlab.harness.reproduce import Check, PartResult, part_table

        sec = self.section(f"{part['title']} ({part['problem']})",
                           f"reproduce-{preset['name']}-{part['problem']}")
        sec += _para("Verdict: ", _verdict(part["verdict"]),
                     f". {part['why']}" if part.get("why") else ".")
        if part["verdict"] == "not applicable offline":
            return sec
        settings = ", ".join(f"{k} {v}" for k, v in part.get("settings", {}).items())
        sec += _para(f"Budget: {settings}; {part.get('seconds', 0)} s here.")
        rows = [[c["claim"], c["paper"] or "—", c["ours"],
                 _para(_verdict("holds" if c["passed"] else "fails")), c["gap"] or "—"]
                for c in part["checks"]]
        sec += table(["claim", "paper", "ours", "", "gap"], rows)
        result = PartResult(part["problem"], part["title"], part["verdict"],
                            checks=[Check(**c) for c in part["checks"]], rows=part["rows"],
                            comparison=part.get("comparison", ""))
        headers, arm_rows = part_table(result)
        sec += table(headers, [list(r) for r in arm_rows])
        if part.get("comparison") in comps:
            entry, comp = comps[part["comparison"]]
            sec += self.comparison(rs, entry, comp, p)
        return sec


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the directive (it reads ``curvlab_results_dir``, declared by curvlab_results)."""
    app.setup_extension("curvlab_results")
    app.add_directive("curvlab-reproductions", ReproductionsDirective)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}


__all__ = ["MANIFEST", "ReproductionsDirective", "setup"]

"""Combine results stores from several machines into one: :func:`merge_stores`.

``curvlab merge a.sqlite b.sqlite --out all.sqlite`` copies every run (with
its curve and provenance), comparison and membership of the inputs into the
output store (which may exist already: its rows take part like an input's).
Rows are matched by their keys:

- the same run key in two stores is the same configuration. When both are
  finished (``done`` or ``timeout``) their *results* must agree: status,
  stop reason, steps, every loss and accuracy of the metrics and of the
  curve (numbers within a relative :data:`REL_TOL`, so last-bit differences
  of BLAS results agree). Wall-clock times, memory and provenance may differ
  (another machine), and the first copy (the output's, then the inputs' in
  order) is kept. A finished run beats an unfinished one (``running``,
  ``error``). Results that differ are a *conflict* (runs on different CPUs
  can differ beyond the last bits: run each configuration on one machine,
  or pass ``on_conflict="first"`` to keep the first copy);
- the same comparison id must have the same settings (its ``selected``
  entry may differ only if one side is missing it);
- the same membership (comparison, run, role) must have the same label.

Every input is read and checked before anything is written: with any
conflict nothing is written and a ``ValueError`` names every conflicting
row (up to ten, then how many more) and where they differ; with
``on_conflict="first"`` (``--on-conflict first``) the first copy of a
conflicting run is kept and the conflicts are listed in the summary
(settings and membership conflicts are always refused).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curvlab.harness.store import FINISHED, Store

__all__ = ["MACHINE_METRICS", "ON_CONFLICT", "REL_TOL", "MergeSummary", "merge_stores"]

#: What to do with a run whose copies disagree.
ON_CONFLICT = ("refuse", "first")

#: Metrics that are measurements of the machine, not results: they may differ between copies.
MACHINE_METRICS = frozenset({"train_time", "step_time", "ref_step_time", "ref_samples", "step_cost",
                             "step_cost_wall", "cost_clock", "peak_mem_mb", "mem_delta_mb",
                             "warnings", "warning_kinds", "resumed_from"})


@dataclass(frozen=True)
class MergeSummary:
    """What :func:`merge_stores` did.

    Attributes:
        runs_added: Runs copied into the output.
        runs_same: Runs present in several stores with agreeing results.
        comparisons_added: Comparisons copied.
        members_added: Memberships copied.
        conflicts_kept_first: Runs whose copies disagreed, kept from their first
            store (``on_conflict="first"``).
    """

    runs_added: int
    runs_same: int
    comparisons_added: int
    members_added: int
    conflicts_kept_first: tuple[str, ...] = ()


#: Two copies of a number agree within this relative tolerance (last-bit differences of BLAS
#: results are not conflicts; anything larger is).
REL_TOL = 1e-9


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or not (
            isinstance(a, (int, float)) and isinstance(b, (int, float))):
        return a == b
    if math.isnan(a) and math.isnan(b):
        return True
    return a == b or math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-12)


def _result_view(record: dict[str, Any]) -> dict[str, Any]:
    """What must agree between two copies of a finished run."""
    run = record["run"]
    metrics = json.loads(run["metrics"] or "{}")
    view = {"status": run["status"], "stop_reason": run["stop_reason"],
            **{f"metrics.{k}": v for k, v in metrics.items() if k not in MACHINE_METRICS}}
    for p in record["curve"]:
        for col in ("loss", "test_loss", "test_acc", "val_loss", "val_acc"):
            if col in p:
                view[f"curve.{p['kind']}.{p['step']}.{col}"] = p[col]
    return view


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    va, vb = _result_view(a), _result_view(b)
    out = []
    for k in sorted(set(va) | set(vb)):
        if not _close(va.get(k), vb.get(k)):
            out.append(f"{k} {va.get(k)!r} vs {vb.get(k)!r}")
    return out


def merge_stores(inputs: Sequence[str | Path], out: str | Path, *,
                 on_conflict: str = "refuse") -> MergeSummary:
    """Merge the stores ``inputs`` into ``out`` (see the module docstring).

    Args:
        inputs: Store files (opened read-only).
        out: The output store (created if missing).
        on_conflict: ``"refuse"`` (default) or ``"first"`` (keep the first copy
            of a run whose copies disagree).

    Returns:
        A :class:`MergeSummary`.

    Raises:
        ValueError: no input, an input that is the output, conflicting rows
            (each named; nothing written); :class:`~curvlab.harness.store.StoreError`
            for a store that cannot be used.

    Example:
        >>> import tempfile, pathlib
        >>> from curvlab.harness.compare import compare
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> for name, opt in (("a", "sgd"), ("b", "adam")):
        ...     _ = compare("quadratic", [opt], steps=4, eval_every=2, executor="serial",
        ...                 store=str(d / f"{name}.sqlite"))
        >>> s = merge_stores([d / "a.sqlite", d / "b.sqlite"], d / "all.sqlite")
        >>> s.runs_added, s.comparisons_added
        (2, 2)
    """
    if not inputs:
        raise ValueError("merge needs at least one input store")
    if on_conflict not in ON_CONFLICT:
        raise ValueError(f"on_conflict must be one of {ON_CONFLICT}, got {on_conflict!r}")
    out = Path(out)
    for p in inputs:
        if Path(p).resolve() == out.resolve():
            raise ValueError(f"input {str(p)!r} is also the output; the output takes part in "
                             "the merge anyway")
    sources: list[Store] = []
    try:
        for p in inputs:
            sources.append(Store(p, readonly=True))
        target = Store(out)
        try:
            return _merge(target, sources, on_conflict)
        finally:
            target.close()
    finally:
        for s in sources:
            s.close()


def _merge(target: Store, sources: list[Store], on_conflict: str) -> MergeSummary:
    runs: dict[str, tuple[str, dict[str, Any]]] = {}
    for key in target.keys():
        runs[key] = (target.path, target.record(key))
    present = set(runs)
    conflicts: list[str] = []
    kept: list[str] = []
    same = 0
    for src in sources:
        for key in src.keys():
            rec = src.record(key)
            if key not in runs:
                runs[key] = (src.path, rec)
                continue
            where, have = runs[key]
            a_done, b_done = have["run"]["status"] in FINISHED, rec["run"]["status"] in FINISHED
            if a_done and b_done:
                diff = _differences(have, rec)
                if diff:
                    r = rec["run"]
                    text = (f"run {key} ({r['problem']}/{r['optimizer']} seed {r['seed']}) in "
                            f"{where} and {src.path}: " + "; ".join(diff[:3])
                            + (f" (+{len(diff) - 3} more)" if len(diff) > 3 else ""))
                    (kept if on_conflict == "first" else conflicts).append(text)
                else:
                    same += 1
            elif b_done:
                runs[key] = (src.path, rec)
    comps: dict[str, tuple[str, float, dict[str, Any]]] = {
        cid: (target.path, created, spec) for cid, created, spec in target.comparisons()}
    old_comps = set(comps)
    for src in sources:
        for cid, created, spec in src.comparisons():
            if cid not in comps:
                comps[cid] = (src.path, created, spec)
                continue
            where, _, have = comps[cid]
            a = {k: v for k, v in have.items() if k != "selected"}
            b = {k: v for k, v in spec.items() if k != "selected"}
            if a != b or ("selected" in have and "selected" in spec and
                          have["selected"] != spec["selected"]):
                keys = sorted(k for k in set(have) | set(spec) if have.get(k) != spec.get(k))
                conflicts.append(f"comparison {cid} in {where} and {src.path}: settings differ "
                                 f"({', '.join(keys[:5])})")
            elif "selected" in spec and "selected" not in have:
                comps[cid] = (where, comps[cid][1], spec)
    members: dict[tuple[str, str, str], tuple[str, str]] = {}
    for cid, _, _ in target.comparisons():
        for key, role, label in target.members(cid):
            members[(cid, key, role)] = (target.path, label)
    old_members = set(members)
    for src in sources:
        for cid, _, _ in src.comparisons():
            for key, role, label in src.members(cid):
                m = (cid, key, role)
                if m not in members:
                    members[m] = (src.path, label)
                elif members[m][1] != label:
                    conflicts.append(f"member {key} ({role}) of comparison {cid}: label "
                                     f"{members[m][1]!r} in {members[m][0]} vs {label!r} in "
                                     f"{src.path}")
    if conflicts:
        more = f" (+{len(conflicts) - 10} more)" if len(conflicts) > 10 else ""
        raise ValueError(f"merge refused, nothing written: {len(conflicts)} conflicting row(s): "
                         + " | ".join(conflicts[:10]) + more)
    added = 0
    for key, (where, rec) in runs.items():
        if key not in present or where != target.path:
            target.put_record(rec)
            added += key not in present
    new_comps = 0
    for cid, (where, created, spec) in comps.items():
        if cid not in old_comps:
            target.add_comparison(cid, spec, created=created)
            new_comps += 1
        elif where != target.path:
            target.update_comparison(cid, spec)
    new_members = [(cid, key, role, label) for (cid, key, role), (_, label) in members.items()
                   if (cid, key, role) not in old_members]
    by_comparison: dict[str, list[tuple[str, str, str]]] = {}
    for cid, key, role, label in new_members:
        by_comparison.setdefault(cid, []).append((key, role, label))
    for cid, rows in by_comparison.items():
        target.add_members(cid, rows)
    return MergeSummary(added, same, new_comps, len(new_members), tuple(kept))

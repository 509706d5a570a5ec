r"""Reproductions of the seed papers' claims: presets run through the harness, with a verdict.

A *preset* (:class:`Preset`, the registered ones in
:mod:`curvlab.harness.presets`) restates one claim of a paper as runs the
harness can do: one or more *parts*, each a problem with *arms* (an
optimizer with fixed hyper-parameters and an explicit tuning grid, e.g.
``"foof T=100"``), a step budget (full and ``quick``), and the *claims*
(:class:`Claim`) that the paper makes about them. :func:`reproduce` runs a
preset:

1. every arm is one :func:`~curvlab.harness.compare.compare` of its
   optimizer on the part's problem, with the part's
   :class:`~curvlab.harness.settings.RunSettings` (budget in steps only, so
   losses do not depend on the machine's speed), the arm's fixed
   hyper-parameters and its grid: the comparison protocol unchanged (grid
   trials on the tuning seed, selection on the validation set, the winner
   re-run with the evaluation seeds), every run in the results store, so an
   interrupted reproduction resumes and a second one re-uses every run;
2. the arms' runs are gathered into one stored comparison of kind
   ``"reproduce"`` whose labels are the arms (so ``curvlab report``, the
   summary and the plots show the part as one comparison);
3. every claim is evaluated on the part's summary rows
   (:meth:`Claim.evaluate`), beside the paper's figure.

The verdict of a part is *reproduced* when every claim holds, *not
reproduced* (with the measured gap of each failed claim) otherwise, and
*not applicable offline* when its data cannot be had without a download
(the reason and the command that installs it). A preset is reproduced when
every applicable part is, not applicable when none is.

:func:`write_docs` writes the committed results file (a manifest
``reproductions.json`` and a compact store ``reproductions.sqlite``) that
the docs' *Reproductions* page is built from; ``curvlab reproduce --all
--write-docs`` regenerates both.

Example:
    >>> claim = Claim("A at most B", "final_loss", "a", "b", "<=", tol=0.05)
    >>> check = claim.evaluate({"a": {"final_loss": 1.02}, "b": {"final_loss": 1.0}})
    >>> check.passed, round(check.value, 3)
    (True, 0.02)
"""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from curvlab.harness.compare import Comparison, compare
from curvlab.harness.protocol import comparison_id
from curvlab.harness.runner import DataError
from curvlab.harness.settings import RunSettings
from curvlab.harness.store import Store

__all__ = [
    "METRICS",
    "NOT_APPLICABLE",
    "NOT_REPRODUCED",
    "RELATIONS",
    "REPRODUCED",
    "Arm",
    "Budget",
    "Check",
    "Claim",
    "Part",
    "PartResult",
    "Preset",
    "PresetResult",
    "combine_verdicts",
    "export",
    "format_result",
    "part_table",
    "reproduce",
    "machine",
    "write_docs",
]

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
NOT_APPLICABLE = "not applicable offline"
#: The metrics a claim may read from a part's summary row (medians over the seeds).
METRICS = {
    "final_loss": "final training loss (full training set)",
    "val_loss": "final validation loss",
    "test_acc": "final test accuracy",
    "step_cost": "cost of a step in reference SGD steps",
    "steps_to_target": "steps to the validation-loss target",
    "value": "the measured value",
}
#: ``<=``: left ≤ right·(1 + tol); ``~``: abs(left/right − 1) ≤ tol; ``ratio``: left/right
#: within [expected/tol, expected·tol]; ``below``/``above``: left ≤ / ≥ the number ``expected``.
RELATIONS = ("<=", "~", "ratio", "below", "above")


@dataclass(frozen=True)
class Arm:
    """One line of a paper's figure: an optimizer with fixed hparams and a tuning grid.

    Attributes:
        label: The name shown (``"foof T=100"``).
        optimizer: The registered optimizer.
        hparams: Fixed hyper-parameters (never tuned).
        grid: ``{hparam: [values]}``: the explicit grid the arm is tuned over
            (the protocol's grid trials; empty: the defaults and ``hparams``).
        paper: The paper's figure for this arm, as text ("" where it gives none).
    """

    label: str
    optimizer: str
    hparams: Mapping[str, Any] = field(default_factory=dict)
    grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    paper: str = ""


@dataclass(frozen=True)
class Budget:
    """A part's budget: steps, seeds and the problem variant (all runs share it).

    Attributes:
        steps: Steps per run.
        seeds: Evaluation seeds.
        eval_every: Evaluation period (``None``: the problem's).
        small: The problem's small (CI) variant.
        batch_size: Mini-batch size (``None``: the problem's).
        fresh_batch_size: Size of the separate batches (``None``: the batch size).
        eval_size: Rows of the training-loss evaluation subset (``None``: the problem's).
    """

    steps: int
    seeds: int = 1
    eval_every: int | None = None
    small: bool = False
    batch_size: int | None = None
    fresh_batch_size: int | None = None
    eval_size: int | str | None = None

    def settings(self, **options: Any) -> RunSettings:
        """The :class:`RunSettings` of this budget (steps only, no time cap) plus ``options``."""
        return RunSettings.build(
            None, steps=self.steps, seconds=None, eval_every=self.eval_every, seeds=self.seeds,
            small=self.small, batch_size=self.batch_size, fresh_batch_size=self.fresh_batch_size,
            eval_size=self.eval_size, **options)


@dataclass(frozen=True)
class Check:
    """A claim evaluated on measured values.

    Attributes:
        claim: The claim's text.
        paper: What the paper reports.
        ours: What we measured, as text.
        value: The measured quantity the relation tests (``nan``: not measured).
        passed: Whether the claim holds.
        gap: How far it misses, as text ("" when it holds).
    """

    claim: str
    paper: str
    ours: str
    value: float
    passed: bool
    gap: str


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if math.isinf(x):
        return "∞ (failed or missed)"
    return f"{x:.4g}"


@dataclass(frozen=True)
class Claim:
    r"""One claim of a paper about two arms (or one arm and a number), as a test on a metric.

    Relations (:data:`RELATIONS`), with :math:`L` the left arm's metric and
    :math:`R` the right arm's (or the number ``expected``):

    - ``"<="``: :math:`L \le R (1 + \text{tol})` ("A is at least as good as B");
      the measured value is :math:`L/R - 1`;
    - ``"~"``: :math:`|L/R - 1| \le \text{tol}` ("A ≈ B");
    - ``"ratio"``: :math:`\text{expected}/\text{tol} \le L/R \le \text{expected}\cdot\text{tol}`
      ("A costs ≈ 1.5× B");
    - ``"below"`` / ``"above"``: :math:`L \le` / :math:`\ge` ``expected``.

    A non-finite metric (a failed run, a missed target) fails the claim.

    Attributes:
        text: The claim in words.
        metric: A key of :data:`METRICS`.
        left: The left arm's label.
        right: The right arm's label (``None`` for ``below``/``above``).
        relation: One of :data:`RELATIONS`.
        tol: The tolerance (relative; a factor for ``ratio``).
        expected: The number of ``ratio``, ``below`` and ``above``.
        paper: What the paper reports for it.

    Example:
        >>> Claim("K-FAC ≈ 1.5× FOOF per update", "step_cost", "kfac", "foof", "ratio",
        ...       tol=1.5, expected=1.5).evaluate({"kfac": {"step_cost": 3.0},
        ...                                        "foof": {"step_cost": 1.0}}).gap
        'kfac/foof = 3 is outside [1, 2.25]'
    """

    text: str
    metric: str
    left: str
    right: str | None
    relation: str
    tol: float = 0.0
    expected: float | None = None
    paper: str = ""

    def __post_init__(self) -> None:
        if self.relation not in RELATIONS:
            raise ValueError(f"relation must be one of {RELATIONS}, got {self.relation!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {sorted(METRICS)}, got {self.metric!r}")
        if (self.right is None) != (self.relation in ("below", "above")):
            raise ValueError(f"relation {self.relation!r}: right must be "
                             f"{'None' if self.right is not None else 'an arm label'}")
        if self.relation in ("ratio", "below", "above") and self.expected is None:
            raise ValueError(f"relation {self.relation!r} needs expected")
        if self.relation == "ratio" and not self.tol >= 1:
            raise ValueError(f"relation 'ratio' needs a factor tol >= 1, got {self.tol}")
        if not self.tol >= 0:
            raise ValueError(f"tol must be >= 0, got {self.tol}")

    def labels(self) -> list[str]:
        """The arms it reads."""
        return [self.left] + ([self.right] if self.right is not None else [])

    def evaluate(self, measured: Mapping[str, Mapping[str, float]]) -> Check:
        """The :class:`Check` of this claim on ``label → {metric: value}``.

        Raises:
            KeyError: an arm it reads is not in ``measured``.
        """
        left = float(measured[self.left].get(self.metric, math.nan))
        if self.right is None:
            ours = f"{self.left}: {_fmt(left)}"
            value, bound = left, float(self.expected)  # type: ignore[arg-type]
            ok = math.isfinite(value) and (value <= bound if self.relation == "below"
                                           else value >= bound)
            word = "≤" if self.relation == "below" else "≥"
            gap = "" if ok else f"{_fmt(value)} is not {word} {bound:.3g}"
            return Check(self.text, self.paper, ours, value, ok, gap)
        right = float(measured[self.right].get(self.metric, math.nan))
        ours = f"{self.left} {_fmt(left)}, {self.right} {_fmt(right)}"
        if not (math.isfinite(left) and math.isfinite(right)) or right == 0:
            return Check(self.text, self.paper, ours, math.nan, False,
                         f"not measured: {self.left} {_fmt(left)}, {self.right} {_fmt(right)}")
        ratio = left / right
        if self.relation == "ratio":
            lo, hi = self.expected / self.tol, self.expected * self.tol  # type: ignore[operator]
            ok = lo <= ratio <= hi
            gap = "" if ok else (f"{self.left}/{self.right} = {ratio:.3g} is outside "
                                 f"[{lo:.3g}, {hi:.3g}]")
            return Check(self.text, self.paper, ours + f" (ratio {ratio:.3g})", ratio, ok, gap)
        rel = ratio - 1.0
        if self.relation == "<=":
            ok = rel <= self.tol
            gap = "" if ok else (f"{self.left} is {100 * rel:.1f} % above {self.right} "
                                 f"(allowed {100 * self.tol:.0f} %)")
            return Check(self.text, self.paper, ours + f" ({100 * rel:+.1f} %)", rel, ok, gap)
        ok = abs(rel) <= self.tol
        gap = "" if ok else (f"{self.left} differs from {self.right} by {100 * rel:+.1f} % "
                             f"(allowed ±{100 * self.tol:.0f} %)")
        return Check(self.text, self.paper, ours + f" ({100 * rel:+.1f} %)", abs(rel), ok, gap)


@dataclass(frozen=True)
class Part:
    """One problem of a preset: its arms, budgets and claims.

    Attributes:
        problem: The harness problem.
        title: What it shows (the paper's figure).
        arms: The arms.
        claims: The claims tested on it.
        full: The paper-size budget.
        quick: The ``--quick`` budget (under ~3 CPU-minutes for the preset).
        offline: Why the paper's data cannot be had offline (``None``: it can;
            otherwise the part is not run and its verdict is
            :data:`NOT_APPLICABLE`).
        measure: Instead of harness comparisons, a function ``(budget) →
            {label: {"value": x}}`` that measures the claim's quantities
            (for checks that are not a training comparison, e.g. an
            invariance of trajectories).
    """

    problem: str
    title: str
    arms: tuple[Arm, ...] = ()
    claims: tuple[Claim, ...] = ()
    full: Budget = Budget(steps=500)
    quick: Budget = Budget(steps=100)
    offline: str | None = None
    measure: Callable[[Budget], dict[str, dict[str, float]]] | None = None

    def __post_init__(self) -> None:
        labels = [a.label for a in self.arms]
        if len(set(labels)) != len(labels):
            raise ValueError(f"part {self.problem}: an arm label is used twice: {labels}")
        for claim in self.claims:
            unknown = [lb for lb in claim.labels() if self.arms and lb not in labels]
            if unknown:
                raise ValueError(f"part {self.problem}: claim {claim.text!r} reads unknown arm(s) "
                                 f"{unknown}; arms: {labels}")


@dataclass(frozen=True)
class Preset:
    """A paper's claim as runs: see the module docstring.

    Attributes:
        name: The name (``curvlab reproduce NAME``).
        title: One line.
        paper: The paper and the figure or section.
        source: The paper's configuration and where each value comes from.
        parts: The parts.
        missing: What the library lacks to run it ("" when nothing); a
            preset with something missing refuses to run, naming it.
    """

    name: str
    title: str
    paper: str
    source: str
    parts: tuple[Part, ...]
    missing: str = ""


@dataclass
class PartResult:
    """A part's outcome.

    Attributes:
        problem: The problem.
        title: The part's title.
        verdict: :data:`REPRODUCED`, :data:`NOT_REPRODUCED` or :data:`NOT_APPLICABLE`.
        why: Why not applicable ("" otherwise).
        checks: The evaluated claims.
        rows: One row per arm: label, optimizer, hparams, paper and the metrics.
        comparison: Id of the stored comparison of kind ``"reproduce"`` ("" if none).
        settings: The budget it ran with.
        seconds: Wall-clock seconds it took here (runs re-used from the store cost ~0).
    """

    problem: str
    title: str
    verdict: str
    why: str = ""
    checks: list[Check] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    comparison: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def gaps(self) -> list[str]:
        """The failed claims with their gaps."""
        return [f"{c.claim}: {c.gap}" for c in self.checks if not c.passed]


@dataclass
class PresetResult:
    """A preset's outcome: its parts and the combined verdict.

    Attributes:
        name: The preset.
        title: Its title.
        paper: The paper.
        source: The paper's configuration (the preset's source).
        quick: Whether the quick budgets ran.
        parts: The parts' results.
    """

    name: str
    title: str
    paper: str
    source: str
    quick: bool
    parts: list[PartResult]

    @property
    def verdict(self) -> str:
        """:func:`combine_verdicts` of the parts."""
        return combine_verdicts([p.verdict for p in self.parts])

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (the results file's entry)."""
        return {"name": self.name, "title": self.title, "paper": self.paper,
                "source": self.source, "quick": self.quick, "verdict": self.verdict,
                "parts": [{**asdict(p), "gaps": p.gaps} for p in self.parts]}


def combine_verdicts(verdicts: Sequence[str]) -> str:
    """A preset's verdict from its parts': n/a if none applies, else reproduced iff all applicable are.

    Example:
        >>> combine_verdicts([REPRODUCED, NOT_APPLICABLE])
        'reproduced'
        >>> combine_verdicts([REPRODUCED, NOT_REPRODUCED]), combine_verdicts([NOT_APPLICABLE])
        ('not reproduced', 'not applicable offline')
    """
    applicable = [v for v in verdicts if v != NOT_APPLICABLE]
    if not applicable:
        return NOT_APPLICABLE
    return REPRODUCED if all(v == REPRODUCED for v in applicable) else NOT_REPRODUCED


def _row_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key in METRICS:
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def _combine(store: Store, part: Part, comps: dict[str, Comparison]) -> Comparison:
    """One stored comparison (kind ``"reproduce"``) whose labels are the arms."""
    per_optimizer = ("optimizers", "hparams", "grids", "shown", "spaces", "trial_counts",
                     "selected", "plugin_code")
    first = next(iter(comps.values())).spec
    spec = {key: value for key, value in first.items() if key not in per_optimizer}
    spec.update(
        spaces={a.label: comps[a.label].spec.get("spaces", {}).get(a.optimizer, {})
                for a in part.arms},
        kind="reproduce", part=part.title, arms=[a.label for a in part.arms],
        optimizers=sorted({a.optimizer for a in part.arms}),
        members={a.label: comps[a.label].id for a in part.arms},
        hparams={a.label: dict(comps[a.label].spec.get("hparams", {}).get(a.optimizer, {}))
                 for a in part.arms},
        shown={a.label: comps[a.label].spec.get("shown", {}).get(a.optimizer, [])
               for a in part.arms},
        trial_counts={a.label: comps[a.label].spec.get("trial_counts", {}).get(a.optimizer, 0)
                      for a in part.arms},
        selected={a.label: comps[a.label].spec.get("selected", {}).get(a.optimizer, [])
                  for a in part.arms},
        plugin_code={a.label: comps[a.label].spec.get("plugin_code", {}).get(a.optimizer)
                     for a in part.arms},
    )
    cid = "reproduce-" + comparison_id(spec)
    store.add_comparison(cid, spec)
    store.add_members(cid, [(key, role, a.label) for a in part.arms
                            for key, role, _ in store.members(comps[a.label].id)])
    return Comparison(cid, store, spec)


def _run_part(part: Part, budget: Budget, options: dict[str, Any], store: Store) -> PartResult:
    t0 = time.perf_counter()
    base = PartResult(part.problem, part.title, NOT_APPLICABLE,
                      settings={k: v for k, v in asdict(budget).items() if v is not None})
    if part.offline:
        base.why = part.offline
        return base
    if part.measure is not None:
        measured = part.measure(budget)
        base.rows = [{"label": a.label, "optimizer": a.optimizer, "paper": a.paper,
                      "hparams": dict(a.hparams), **measured.get(a.label, {})}
                     for a in part.arms]
    else:
        comps: dict[str, Comparison] = {}
        try:
            for arm in part.arms:
                settings = budget.settings(**options, store=store)
                comps[arm.label] = compare(
                    part.problem, [arm.optimizer], hparams={arm.optimizer: dict(arm.hparams)},
                    grids={arm.optimizer: dict(arm.grid)} if arm.grid else None,
                    settings=settings)
        except DataError as err:
            base.why = str(err)
            return base
        combined = _combine(store, part, comps)
        rows = {r["label"]: r for r in combined.summary()}
        base.comparison = combined.id
        base.rows = [{"label": a.label, "optimizer": a.optimizer, "paper": a.paper,
                      "hparams": rows[a.label]["hparams"], "trials": rows[a.label]["trials"],
                      "runs": rows[a.label]["runs"], "failed": rows[a.label]["errors"]
                      + rows[a.label]["timeouts"] + rows[a.label]["diverged"],
                      **_row_metrics(rows[a.label])} for a in part.arms]
        measured = {r["label"]: _row_metrics(r) for r in base.rows}
    base.checks = [c.evaluate(measured) for c in part.claims]
    base.verdict = REPRODUCED if all(c.passed for c in base.checks) else NOT_REPRODUCED
    base.seconds = round(time.perf_counter() - t0, 1)
    return base


def reproduce(preset: str | Preset, *, quick: bool = False, store: str | Store | None = None,
              **options: Any) -> PresetResult:
    """Run a preset (see the module docstring) and return its verdicts.

    Args:
        preset: A registered name (:func:`curvlab.harness.presets.preset_names`) or a
            :class:`Preset`.
        quick: Run the quick budgets (CI, docs) instead of the paper-size ones.
        store: The results store (path, ``":memory:"`` or an open store;
            default: the settings' default file).
        **options: Execution settings of :class:`RunSettings` (``executor``,
            ``jobs``, ``progress``, ...) and ``data_dir``; the budget is the
            preset's.

    Raises:
        ValueError: an unknown preset (with the list), a preset that needs
            something the library lacks (named), an option that is not an
            execution setting.

    Example:
        >>> r = reproduce("gn-invariance", quick=True, store=":memory:")
        >>> r.verdict
        'reproduced'
    """
    from curvlab.harness.presets import get_preset

    p = get_preset(preset) if isinstance(preset, str) else preset
    if p.missing:
        raise ValueError(f"preset {p.name!r} cannot run yet: {p.missing}")
    budget_fields = {"steps", "seconds", "eval_every", "seeds", "small", "batch_size",
                     "fresh_batch_size", "eval_size", "ruleset", "trials", "target", "name"}
    fixed = sorted(set(options) & budget_fields)
    if fixed:
        raise ValueError(f"reproduce: {', '.join(fixed)} is set by the preset, not an option "
                         "(use `curvlab compare` for other budgets)")
    RunSettings.build(None, **options)  # unknown or invalid options: refused before any run
    opened = store if isinstance(store, Store) else Store(
        store if store is not None else RunSettings().store)
    try:
        parts = [_run_part(part, part.quick if quick else part.full, dict(options), opened)
                 for part in p.parts]
    finally:
        if not isinstance(store, Store):
            opened.close()
    return PresetResult(p.name, p.title, p.paper, p.source, quick, parts)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join([line, sep, *body])


def part_table(part: PartResult) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of a part's table: per arm our figures, its tuning and the paper's.

    A part measured in-process (no comparison) shows its measured value.
    """
    if not part.comparison:
        headers = ["arm", "ours: measured value", "hparams", "paper"]
        return headers, [[r["label"], _fmt(r.get("value", math.nan)),
                          _hp(r.get("hparams")), r.get("paper") or "—"] for r in part.rows]
    headers = ["arm", "ours: final train loss", "val loss", "step cost", "trials", "failed runs",
               "hparams (selected)", "paper"]
    return headers, [[r["label"], _fmt(r.get("final_loss", math.nan)),
                      _fmt(r.get("val_loss", math.nan)), _fmt(r.get("step_cost", math.nan)),
                      str(r.get("trials", 0)), f"{r.get('failed', 0)}/{r.get('runs', 0)}",
                      _hp(r.get("hparams")), r.get("paper") or "—"] for r in part.rows]


def _hp(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "defaults"
    return str(value or "defaults")


def format_result(result: PresetResult) -> str:
    """The text ``curvlab reproduce`` prints: per part our figure beside the paper's, the verdicts.

    Example:
        >>> r = PresetResult("x", "t", "paper", "src", True,
        ...                  [PartResult("fashionmlp", "Fig. 1", NOT_APPLICABLE, why="no data")])
        >>> print(format_result(r).splitlines()[-1])
        verdict x: not applicable offline
    """
    out = [f"{result.name}: {result.title}", f"paper: {result.paper}",
           f"budget: {'quick' if result.quick else 'full'}"]
    for part in result.parts:
        out.append("")
        out.append(f"== {part.title} ({part.problem}) ==")
        if part.verdict == NOT_APPLICABLE:
            out.append(f"{NOT_APPLICABLE}: {part.why}")
            continue
        headers, rows = part_table(part)
        out.append(_table(headers, rows))
        for c in part.checks:
            mark = "ok  " if c.passed else "FAIL"
            out.append(f"  [{mark}] {c.claim}: ours {c.ours}; paper: {c.paper or '—'}"
                       + (f"; gap: {c.gap}" if c.gap else ""))
        out.append(f"verdict: {part.verdict}"
                   + (f" ({'; '.join(part.gaps)})" if part.gaps else ""))
        if part.comparison:
            out.append(f"comparison {part.comparison} (curvlab report --comparison "
                       f"{part.comparison})")
    out.append("")
    out.append(f"verdict {result.name}: {result.verdict}")
    return "\n".join(out)


# ------------------------------------------------------------------ the results file
def machine() -> dict[str, Any]:
    """CPU model, cores, OS, host and load average where this runs (the results file's record)."""
    from curvlab.harness.provenance import cpu_model

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "os": platform.platform(terse=True),
            "host": platform.node(),
            "load_average_1min": round(load[0], 2) if load else None, "threads_per_run": 1}


def _versions() -> dict[str, str]:
    from curvlab.harness.provenance import environment

    env = environment()
    out = {k: str(env[k]) for k in ("python", "curvlab", "torch", "numpy", "scipy")}
    if env.get("git"):
        out["git"] = str(env["git"])[:12] + ("+local changes" if "+dirty" in env["git"] else "")
    return out


def export(store: Store, target: Path, ids: Sequence[str]) -> None:
    """Copy comparisons ``ids`` and their runs (evaluation points only) into a fresh store ``target``."""
    if target.exists():
        target.unlink()
    dst = Store(target)
    try:
        for cid in ids:
            _, spec = store.comparison(cid)
            dst.add_comparison(cid, spec)
            members = store.members(cid)
            for key in dict.fromkeys(k for k, _, _ in members):
                result = store.result(key, curve=True)
                result.curve = [pt for pt in result.curve if pt.kind == "eval"]
                dst.mark_running(store.config(key))
                dst.save(result)
            dst.add_members(cid, members)
    finally:
        dst.close()


def write_docs(results: Sequence[PresetResult], store: Store, folder: str | Path, *,
               command: str, started: dt.datetime, machine_before: Mapping[str, Any],
               skipped: Sequence[str] = ()) -> list[Path]:
    """Write ``reproductions.json`` and ``reproductions.sqlite`` into ``folder`` (the docs' data).

    The manifest has ``"kind": "reproductions"``, the command, the date, the
    machine and the versions (the format of ``docs/results/``), the presets'
    results and, as ``comparisons``, the stored comparison of every part
    that ran (their runs are in the store beside it).

    Raises:
        ValueError: ``folder`` does not exist.
    """
    import json

    from curvlab.harness.presets import get_preset

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--write-docs: the folder {folder} does not exist (run from the "
                         "repository root, or pass --docs-dir)")
    comparisons = []
    for r in results:
        for part in r.parts:
            if part.comparison:
                comparisons.append({
                    "name": part.comparison, "title": f"{r.name}: {part.title}",
                    "about": f"{r.paper}. Arms: " + ", ".join(row["label"] for row in part.rows),
                    "command": f"curvlab reproduce {r.name}{' --quick' if r.quick else ''}",
                    "preset": r.name})
    db = folder / "reproductions.sqlite"
    export(store, db, [c["name"] for c in comparisons])
    after = machine()
    manifest = {
        "kind": "reproductions",
        "title": "Reproductions of the seed papers' claims",
        "store": db.name,
        "command": command,
        "regenerate": command,
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {**machine_before, "load_average_1min_after": after["load_average_1min"]},
        "versions": _versions(),
        "presets": [r.to_json() for r in results],
        "skipped": {name: get_preset(name).missing for name in skipped},
        "comparisons": comparisons,
    }
    path = folder / "reproductions.json"
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return [path, db]

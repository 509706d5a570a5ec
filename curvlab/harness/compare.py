"""Comparisons and ablations: :func:`compare`, :func:`ablate` and their :class:`Comparison`.

A comparison runs, for one problem, every requested optimizer under the
same settings (:class:`~curvlab.harness.settings.RunSettings`: budget,
device, dtype, seeds, ...):

1. **Tuning** (``tune=True``): for each optimizer, the grid is the product
   of the ``grid`` values declared in its hyper-parameter schema (an empty
   grid: not tuned; values the user fixed: not tuned), run with seed 0.
   The best point is picked by ``select``: ``"loss"`` = lowest final full
   train loss; ``"time"`` = shortest time to ``target`` (ties and misses
   broken by final loss). Diverged and failed runs rank last.
2. **Final runs**: the chosen hparams (the schema defaults without tuning)
   with seeds ``0 … seeds-1``; reported as mean ± std.
3. **Reference**: SGD with its defaults and the same seeds when ``sgd`` is
   not among the optimizers, for the step-time ratio.

Everything the caller gives is checked before the first run: the settings
when they are built, then the problem and optimizer names, the
hyper-parameters (each value once: text such as ``"0.1"`` from a command
line by :meth:`~curvlab.hparams.Schema.parse`, other values by the schema's
check) and the results store. Every run goes through the
:class:`~curvlab.harness.store.Store`; runs done before (same config hash)
are reused, so an interrupted comparison resumes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import curvlab
from curvlab.harness.config import RunConfig
from curvlab.harness.executor import run_configs
from curvlab.harness.metrics import summarize, time_to_target
from curvlab.harness.problems import Problem, load_problem
from curvlab.harness.results import RunResult
from curvlab.harness.settings import RunSettings
from curvlab.harness.store import Store
from curvlab.registry import PluginWarning, normalize

__all__ = ["SELECT", "Comparison", "ablate", "compare", "resolve_optimizers"]

#: Tuning criteria of :func:`compare` (``--select``).
SELECT = ("loss", "time")


@dataclass
class Comparison:
    """A comparison stored in a results store; read its rows with :meth:`summary`.

    Attributes:
        id: Comparison id (hash of its settings unless named).
        store: The results store.
        spec: Settings (problem, optimizers, budget, seeds, …).
    """

    id: str
    store: Store
    spec: dict[str, Any]

    def records(self, roles: tuple[str, ...] = ("final", "reference")) -> list[dict[str, Any]]:
        """Runs with the given roles: dicts with key, role, label, config, result (with curve)."""
        out = []
        for key, role, label in self.store.members(self.id):
            if role in roles:
                out.append({"key": key, "role": role, "label": label,
                            "config": self.store.config(key),
                            "result": self.store.result(key, curve=True)})
        return out

    @property
    def target(self) -> float:
        """Loss target for time-to-target (reported scale)."""
        return float(self.spec["target"])

    def groups(self) -> dict[str, list[tuple[dict[str, Any], RunResult]]]:
        """Final/reference runs grouped by label: ``label → [(shown hparams, result)]``."""
        shown = self.spec.get("shown", {})
        groups: dict[str, list[tuple[dict[str, Any], RunResult]]] = {}
        for rec in self.records():
            hp = {k: rec["config"].hparams[k] for k in shown.get(rec["label"], [])}
            groups.setdefault(rec["label"], []).append((hp, rec["result"]))
        return groups

    def summary(self) -> list[dict[str, Any]]:
        """One row per label (see :func:`curvlab.harness.metrics.summarize`)."""
        return summarize(self.groups(), self.target)

    def report(self, out_dir: str | Path) -> list[Path]:
        """Write markdown, CSV and PNG files to ``out_dir``; return their paths."""
        from curvlab.harness.report import write_report

        return write_report(self, out_dir)


def resolve_optimizers(names: str | list[str] | tuple[str, ...]) -> list[str]:
    """Normalised optimizer names; ``"all"`` = every plugin that loads (broken ones warn).

    Raises:
        ValueError: an explicitly named optimizer is unknown or fails to load.

    Example:
        >>> resolve_optimizers(["ADAM", "sgd", "adam"])
        ['adam', 'sgd']
        >>> {"sgd", "adam"} <= set(resolve_optimizers("all"))
        True
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise ValueError("no optimizer given; name some or pass 'all'")
    if [normalize(n) for n in names] == ["all"]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PluginWarning)
            found = curvlab.available(verify=True)
        for w in caught:
            warnings.warn(f"skipping: {w.message}", PluginWarning, stacklevel=2)
        return found
    out = []
    for n in names:
        key = curvlab.info(n).name  # raises for unknown/broken names
        if key not in out:
            out.append(key)
    return out


def _given_hparams(opt: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The hparams given for ``opt``, each checked once: text parsed by the schema, others validated."""
    schema = curvlab.info(opt).schema
    text = {k: schema.parse(k, v) for k, v in values.items() if isinstance(v, str)}
    typed = schema.validate({k: v for k, v in values.items() if k not in text}, partial=True)
    return {k: text[k] if k in text else typed[k] for k in values}


def _complete(opt: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every hparam of ``opt``: the (already checked) given values, the declared defaults elsewhere."""
    return {p.name: given.get(p.name, p.default) for p in curvlab.info(opt).schema}


def _grid(opt: str, fixed: Mapping[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    schema = curvlab.info(opt).schema
    knobs = [p for p in schema if p.grid and p.name not in fixed]
    points = [dict(zip([p.name for p in knobs], vals))
              for vals in itertools.product(*(p.grid for p in knobs))]
    return [p.name for p in knobs], points


def _rank(result: RunResult, select: str, target: float) -> tuple[float, float]:
    loss = result.ranked_loss
    if result.failed:
        return (loss, loss)
    if select == "time":
        hit = time_to_target(result.curve, target)
        return (hit[1] if hit else float("inf"), loss)
    return (loss, 0.0)


def _cid(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def _settings_and_problem(problem: str, settings: RunSettings | None,
                          options: dict[str, Any]) -> tuple[RunSettings, Problem]:
    """The checked settings and the problem instance they select (its data is not loaded here)."""
    run_settings = RunSettings.build(settings, **options)
    return run_settings, load_problem(problem, **run_settings.of_scope("problem"))


@dataclass(frozen=True)
class _Plan:
    """A checked comparison about to run: its settings, problem and open store."""

    settings: RunSettings
    problem: Problem
    store: Store

    @classmethod
    def open(cls, settings: RunSettings, problem: Problem) -> _Plan:
        """Open (and check) the store: the last step before anything is written."""
        store = settings.store
        return cls(settings, problem, store if isinstance(store, Store) else Store(store))

    @property
    def target(self) -> float:
        """The loss target: the settings' or else the problem's."""
        target = self.settings.target
        return float(self.problem.target_loss if target is None else target)

    def config(self, opt: str, hparams: dict[str, Any], seed: int) -> RunConfig:
        return RunConfig(self.problem.name, opt, hparams, seed, self.problem.options(),
                         **self.settings.run_options())

    def spec(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"kind": kind, "problem": self.problem.name, **fields, "seeds": self.settings.seeds,
                "target": self.target, **self.settings.run_options(),
                "problem_options": self.problem.options()}

    def references(self) -> list[tuple[RunConfig, str, str]]:
        """The SGD reference runs (defaults, every seed)."""
        return [(self.config("sgd", _complete("sgd", {}), s), "reference", "sgd")
                for s in range(self.settings.seeds)]

    def run(self, cid: str, rows: list[tuple[RunConfig, str, str]], desc: str) -> None:
        self.store.add_members(cid, [(c.key(), role, label) for c, role, label in rows])
        run_configs([c for c, _, _ in rows], self.store, self.settings, desc=desc)


def compare(
    problem: str,
    optimizers: str | list[str] = "all",
    *,
    tune: bool = False,
    select: str = "loss",
    hparams: Mapping[str, Mapping[str, Any]] | None = None,
    settings: RunSettings | None = None,
    **options: Any,
) -> Comparison:
    """Compare optimizers on one problem (see the module docstring for the protocol).

    Args:
        problem: Problem name (``curvlab list`` shows them).
        optimizers: Names, a comma-separated string, or ``"all"``.
        tune: Grid-search each optimizer's schema grid with seed 0 first.
        select: Tuning criterion (:data:`SELECT`): ``"loss"`` (final train
            loss) or ``"time"`` (time to the target).
        hparams: Fixed hyper-parameters per optimizer name (not tuned);
            values may be typed (``0.01``) or text as on a command line
            (``"0.01"``, ``"0.9,0.999"``).
        settings: The :class:`~curvlab.harness.settings.RunSettings`
            (default: all defaults).
        **options: Any field of :class:`~curvlab.harness.settings.RunSettings`
            (``steps=200``, ``seeds=3``, ``store=...``, ``executor=...``): a
            shorthand that overrides the same field of ``settings``.

    Returns:
        The :class:`Comparison` (call :meth:`Comparison.summary` or :meth:`Comparison.report`).

    Raises:
        TypeError: a keyword that is not a setting.
        ValueError: unknown problem or optimizer, an invalid setting, hparam,
            selection criterion, or a results store that cannot be used
            (nothing runs then); :class:`~curvlab.harness.runner.DataError`
            when the problem's data cannot be loaded.

    Example:
        >>> c = compare("quadratic", ["sgd", "adam"], steps=20, eval_every=10,
        ...             store=":memory:", executor="serial")
        >>> sorted(row["label"] for row in c.summary())
        ['adam', 'sgd']
        >>> s = RunSettings(steps=20, eval_every=10, store=":memory:", executor="serial")
        >>> compare("quadratic", "sgd", settings=s, hparams={"sgd": {"lr": "0.05"}}).spec["hparams"]
        {'sgd': {'lr': 0.05}}
    """
    if select not in SELECT:
        raise ValueError(f"select must be one of {SELECT}, got {select!r}")
    run_settings, prob = _settings_and_problem(problem, settings, options)
    names = resolve_optimizers(optimizers)
    raw = {normalize(k): v for k, v in (hparams or {}).items()}
    unknown = set(raw) - set(names)
    if unknown:
        raise ValueError(f"hparams given for {sorted(unknown)}, which are not compared: {names}")
    given = {n: _given_hparams(n, raw[n]) for n in raw}
    plan = _Plan.open(run_settings, prob)
    fixed = {n: _complete(n, given.get(n, {})) for n in names}
    spec = plan.spec("compare", optimizers=names, tune=tune, select=select, hparams=given)
    cid = plan.settings.name or _cid(spec)
    shown: dict[str, list[str]] = {}
    tune_cfgs: dict[str, list[RunConfig]] = {}
    for n in names:
        knobs, points = _grid(n, given.get(n, {})) if tune else ([], [])
        shown[n] = sorted(set(knobs) | set(given.get(n, {})))
        tune_cfgs[n] = [plan.config(n, {**fixed[n], **pt}, 0) for pt in points]
    spec["shown"] = shown
    plan.store.add_comparison(cid, spec)

    # 1. tuning
    plan.run(cid, [(c, "tune", c.optimizer) for cs in tune_cfgs.values() for c in cs], "tuning")
    best: dict[str, dict[str, Any]] = {}
    for n in names:
        cands = tune_cfgs[n]
        if not cands:
            best[n] = fixed[n]
            continue
        scored = [(_rank(plan.store.result(c.key(), curve=True), select, plan.target), i)
                  for i, c in enumerate(cands)]
        best[n] = cands[min(scored)[1]].hparams

    # 2. final runs (+ 3. SGD reference)
    finals = [(plan.config(n, best[n], s), "final", n) for n in names
              for s in range(plan.settings.seeds)]
    if "sgd" not in names:
        finals += plan.references()
    plan.run(cid, finals, "runs")
    return Comparison(cid, plan.store, spec)


def ablate(
    problem: str,
    optimizer: str,
    hparam: str,
    values: list[Any] | None = None,
    *,
    hparams: Mapping[str, Any] | None = None,
    settings: RunSettings | None = None,
    **options: Any,
) -> Comparison:
    """Vary one hyper-parameter of one optimizer, everything else fixed.

    Args:
        problem: Problem name.
        optimizer: Optimizer name.
        hparam: The hyper-parameter to vary.
        values: Its values (typed, or text parsed by the schema); default:
            the schema's ``grid``, else its ``choices``, else ``True/False``
            for booleans.
        hparams: Other fixed hyper-parameters (typed or text), not ``hparam``.
        settings: As in :func:`compare`.
        **options: As in :func:`compare`.

    Returns:
        A :class:`Comparison` whose labels are ``"<optimizer> <hparam>=<value>"``
        (plus the ``sgd`` reference).

    Raises:
        TypeError: a keyword that is not a setting.
        ValueError: unknown optimizer or hparam, invalid value, no values,
            ``hparam`` also fixed in ``hparams``, an invalid setting or store.

    Example:
        >>> c = ablate("quadratic", "sgd", "lr", ["0.1", "0.01"], steps=10, eval_every=5,
        ...            store=":memory:", executor="serial")
        >>> [row["label"] for row in c.summary()]
        ['sgd lr=0.1', 'sgd lr=0.01', 'sgd']
    """
    opt = curvlab.info(optimizer).name
    schema = curvlab.info(opt).schema
    if hparam not in schema:
        schema.validate({hparam: None})  # raises, naming the allowed hparams
    if hparams and hparam in hparams:
        raise ValueError(f"{opt}.{hparam} is the ablated hyper-parameter; do not also fix it "
                         f"(got {hparam}={hparams[hparam]!r})")
    if not values:
        p = schema[hparam]
        values = list(p.grid or p.choices or ((True, False) if p.type is bool else ()))
        if not values:
            raise ValueError(f"no values to ablate for {opt}.{hparam}; pass some")
    vals = [_given_hparams(opt, {hparam: v})[hparam] for v in values]
    fixed = _given_hparams(opt, hparams or {})
    run_settings, prob = _settings_and_problem(problem, settings, options)
    plan = _Plan.open(run_settings, prob)
    spec = plan.spec("ablate", optimizers=[opt], hparam=hparam, values=[repr(v) for v in vals],
                     hparams={opt: fixed}, shown={})
    cid = plan.settings.name or _cid(spec)
    plan.store.add_comparison(cid, spec)
    rows = []
    for v in vals:
        hp = _complete(opt, {**fixed, hparam: v})
        rows += [(plan.config(opt, hp, s), "final", f"{opt} {hparam}={v}")
                 for s in range(plan.settings.seeds)]
    plan.run(cid, rows + plan.references(), "ablation")
    return Comparison(cid, plan.store, spec)

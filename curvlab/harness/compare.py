"""Comparisons of optimizers on one problem: :func:`compare` and its :class:`Comparison`.

A comparison runs, for one problem, every requested optimizer under the
same settings (:class:`~curvlab.harness.settings.RunSettings`: budget,
schedule, device, dtype, seeds, ruleset, ...), with the protocol of
:mod:`curvlab.harness.protocol`:

- ruleset ``defaults``: every optimizer with its schema defaults (and the
  hyper-parameters you fix), run with the evaluation seeds ``0 … seeds-1``;
- ruleset ``tuned`` (external tuning, as AlgoPerf): ``trials``
  quasi-random configurations per optimizer and study, drawn from each
  optimizer's declared search space from the same unit-cube points
  (:mod:`curvlab.harness.search`), trained with the tuning seed; each study's
  best trial by ``select`` on the *validation* set is re-run with the
  evaluation seeds, and those runs alone are reported. An explicit grid
  (``grids``, ``--grid``) replaces an optimizer's trials.

Everything the caller gives is checked before the first run: the settings
when they are built, then the problem and optimizer names, the
hyper-parameters and grids (each value once: text such as ``"0.1"`` from a
command line by :meth:`~curvlab.hparams.Schema.parse`, other values by the
schema's check), the problem's data (loaded once; a missing dataset is one
line naming the command that installs it) and the results store. Every run
goes through the :class:`~curvlab.harness.store.Store`; runs done before
(same config hash) are reused, so an interrupted comparison resumes.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import curvlab
from curvlab.harness.metrics import summarize
from curvlab.harness.problems import Problem, load_problem
from curvlab.harness.protocol import (
    Plan,
    comparison_id,
    complete_hparams,
    given_hparams,
)
from curvlab.harness.provenance import environment_differences
from curvlab.harness.results import RunResult
from curvlab.harness.search import describe_space
from curvlab.harness.settings import SELECT, RunSettings
from curvlab.harness.store import Store
from curvlab.registry import PluginWarning, normalize

__all__ = ["SELECT", "Comparison", "compare", "resolve_optimizers", "settings_and_problem"]


@dataclass
class Comparison:
    """A comparison stored in a results store; read its rows with :meth:`summary`.

    Attributes:
        id: Comparison id (hash of its settings unless named).
        store: The results store.
        spec: Settings (problem, optimizers, budget, seeds, ruleset, what
            tuning selected, …).
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
        """Loss target for time-to-target (validation loss, reported scale)."""
        return float(self.spec["target"])

    def groups(self) -> dict[str, list[tuple[dict[str, Any], RunResult]]]:
        """Reported runs grouped by label: ``label → [(shown hparams, result)]``."""
        shown = self.spec.get("shown", {})
        groups: dict[str, list[tuple[dict[str, Any], RunResult]]] = {}
        for rec in self.records():
            cfg = rec["config"]
            hp = {k: cfg.hparams[k] for k in shown.get(rec["label"], []) if k in cfg.hparams}
            if self.spec.get("tune_schedule"):
                hp.update(schedule=cfg.schedule, warmup=cfg.warmup)
            groups.setdefault(rec["label"], []).append((hp, rec["result"]))
        return groups

    def trials(self) -> dict[str, int]:
        """Tuning trials per study of every label (0: not tuned)."""
        return {k: int(v) for k, v in self.spec.get("trial_counts", {}).items()}

    def summary(self) -> list[dict[str, Any]]:
        """One row per label (see :func:`curvlab.harness.metrics.summarize`)."""
        return summarize(self.groups(), self.target, self.trials())

    def environments(self) -> dict[str, list[str]]:
        """Environment entries on which this comparison's runs differ (empty: one environment).

        See :func:`curvlab.harness.provenance.environment_differences`; tuning
        runs count too.
        """
        keys = [k for k, role, _ in self.store.members(self.id)]
        return environment_differences(self.store.result(k).provenance for k in keys)

    def report(self, out_dir: str | Path, *, formats: Sequence[str] = ("markdown",)) -> list[Path]:
        """Write the report files (markdown/CSV tables and PNG plots; parquet when asked).

        Args:
            out_dir: The folder.
            formats: ``"markdown"`` (tables, CSV and plots) and/or ``"parquet"``.
        """
        from curvlab.harness.report import write_report

        return write_report(self, out_dir, formats=formats)


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


def settings_and_problem(problem: str, settings: RunSettings | None,
                         options: dict[str, Any]) -> tuple[RunSettings, Problem]:
    """The checked settings and the problem instance they select (its data is not loaded here)."""
    run_settings = RunSettings.build(settings, **options)
    return run_settings, load_problem(problem, **run_settings.of_scope("problem"))


def _grid_points(opt: str, grid: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The cartesian product of an explicit grid, every value checked by the schema."""
    points: dict[str, list[Any]] = {}
    for name, values in grid.items():
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if not values:
            raise ValueError(f"the grid of {opt}.{name} is empty")
        points[name] = [given_hparams(opt, {name: v})[name] for v in values]
    names = list(points)
    return [dict(zip(names, combo)) for combo in itertools.product(*(points[n] for n in names))]


def compare(
    problem: str,
    optimizers: str | list[str] = "all",
    *,
    tune: bool | None = None,
    hparams: Mapping[str, Mapping[str, Any]] | None = None,
    grids: Mapping[str, Mapping[str, Any]] | None = None,
    settings: RunSettings | None = None,
    **options: Any,
) -> Comparison:
    """Compare optimizers on one problem (see the module docstring for the protocol).

    Args:
        problem: Problem name (``curvlab list`` shows them).
        optimizers: Names, a comma-separated string, or ``"all"``.
        tune: Shorthand for the ruleset: ``True`` = ``"tuned"``, ``False`` =
            ``"defaults"``; ``None``: the settings' ``ruleset``.
        hparams: Fixed hyper-parameters per optimizer name (never tuned);
            values may be typed (``0.01``) or text as on a command line
            (``"0.01"``, ``"0.9,0.999"``).
        grids: Explicit grids per optimizer, ``{opt: {name: [values]}}``:
            that optimizer is tuned over their cartesian product instead of
            the quasi-random trials (its trial count is the grid's size).
        settings: The :class:`~curvlab.harness.settings.RunSettings`
            (default: all defaults).
        **options: Any field of :class:`~curvlab.harness.settings.RunSettings`
            (``steps=200``, ``seeds=3``, ``ruleset="tuned"``, ``trials=8``,
            ``select="time-to-target"``, ``store=...``): a shorthand that
            overrides the same field of ``settings``.

    Returns:
        The :class:`Comparison` (call :meth:`Comparison.summary` or :meth:`Comparison.report`).

    Raises:
        TypeError: a keyword that is not a setting.
        ValueError: unknown problem or optimizer, an invalid setting, hparam
            or grid, ``tune`` contradicting ``ruleset``, ``tune_schedule``
            without tuning, or a results store that cannot be used (nothing
            runs then); :class:`~curvlab.harness.runner.DataError` when the
            problem's data cannot be loaded.

    Example:
        >>> c = compare("quadratic", ["sgd", "adam"], steps=20, eval_every=10,
        ...             store=":memory:", executor="serial")
        >>> sorted(row["label"] for row in c.summary())
        ['adam', 'sgd']
        >>> s = RunSettings(steps=20, eval_every=10, store=":memory:", executor="serial")
        >>> compare("quadratic", "sgd", settings=s, hparams={"sgd": {"lr": "0.05"}}).spec["hparams"]
        {'sgd': {'lr': 0.05}}
        >>> c = compare("quadratic", ["sgd", "kfac"], settings=s, ruleset="tuned", trials=3)
        >>> c.trials(), [len(c.spec["selected"][n]) for n in ("sgd", "kfac")]
        ({'sgd': 3, 'kfac': 3}, [1, 1])
    """
    if tune is not None:
        wanted = "tuned" if tune else "defaults"
        if options.get("ruleset", wanted) != wanted:
            raise ValueError(f"tune={tune} contradicts ruleset={options['ruleset']!r}")
        options["ruleset"] = wanted
    run_settings, prob = settings_and_problem(problem, settings, options)
    names = resolve_optimizers(optimizers)
    raw = {normalize(k): v for k, v in (hparams or {}).items()}
    raw_grids = {normalize(k): v for k, v in (grids or {}).items()}
    for what, given_for in (("hparams", raw), ("grids", raw_grids)):
        unknown = set(given_for) - set(names)
        if unknown:
            raise ValueError(f"{what} given for {sorted(unknown)}, which are not compared: {names}")
    given = {n: given_hparams(n, raw[n]) for n in raw}
    grid_points = {n: _grid_points(n, raw_grids[n]) for n in raw_grids}
    for n, grid in raw_grids.items():
        both = sorted(set(grid) & set(given.get(n, {})))
        if both:
            raise ValueError(f"{n}: {', '.join(both)} both fixed (hparams) and in a grid")
    tuned = run_settings.ruleset == "tuned"
    if run_settings.tune_schedule and not tuned and not grid_points:
        raise ValueError("tune_schedule needs tuning: ruleset 'tuned' (--tune) or a grid")
    plan = Plan.open(run_settings, prob, names)
    spec = plan.spec("compare", optimizers=names, hparams=given,
                     grids={n: {k: [repr(v) for v in vals] for k, vals in g.items()}
                            for n, g in raw_grids.items()})
    cid = run_settings.name or comparison_id(spec)
    shown: dict[str, list[str]] = {}
    spaces: dict[str, dict[str, str]] = {}
    counts: dict[str, int] = {}
    base: dict[str, dict[str, Any]] = {}
    cands = {}
    for n in names:
        base[n] = complete_hparams(n, given.get(n, {}))
        fixed = set(given.get(n, {}))
        if n in grid_points:
            cands[n] = plan.candidates(n, n, base[n], grid=grid_points[n])
            knobs = list(raw_grids[n])
            spaces[n] = {k: "grid " + ", ".join(repr(v) for v in {p[k]: 0 for p in grid_points[n]})
                         for k in knobs}
        elif tuned:
            cands[n] = plan.candidates(n, n, base[n], fixed=fixed)
            spaces[n] = describe_space(n, fixed)
            knobs = list(spaces[n])
        else:
            cands[n], knobs = [], []
        counts[n] = sum(c.study == 0 for c in cands[n])
        shown[n] = [k for k in curvlab.info(n).schema.names if k in set(knobs) | fixed]
    spec.update(shown=shown, spaces=spaces, trial_counts=counts)
    # tuning trials (tuning seeds), selection on validation, evaluation seeds
    plan.execute(cid, spec, {n: cands[n] for n in names}, base, {n: n for n in names}, "runs")
    return Comparison(cid, plan.store, spec)

"""Comparisons and ablations: :func:`compare`, :func:`ablate` and their :class:`Comparison`.

A comparison runs, for one problem, every requested optimizer under the
same budget, device, dtype and seeds:

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

Every run goes through the :class:`~curvlab.harness.store.Store`; runs done
before (same config hash) are reused, so an interrupted comparison resumes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import curvlab
from curvlab.harness.config import RunConfig
from curvlab.harness.executor import check_executor, run_configs
from curvlab.harness.metrics import summarize, time_to_target
from curvlab.harness.problems import load_problem
from curvlab.harness.runner import RunResult
from curvlab.harness.store import Store
from curvlab.registry import PluginWarning, normalize

__all__ = ["DEFAULT_BUDGET", "Comparison", "ablate", "compare", "resolve_optimizers"]

#: Default budget: 500 steps (safety cap 15 s of training time per run), eval every 25.
#: ``compare --problem digits-mlp --optimizers all`` (13 optimizers) takes ~3 min on 2 cores.
DEFAULT_BUDGET = {"steps": 500, "seconds": 15.0, "eval_every": 25}
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


def _parse_hparams(opt: str, given: dict[str, Any]) -> dict[str, Any]:
    return curvlab.info(opt).schema.validate(given)


def _grid(opt: str, fixed: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    schema = curvlab.info(opt).schema
    knobs = [p for p in schema if p.grid and p.name not in fixed]
    points = [dict(zip([p.name for p in knobs], vals))
              for vals in itertools.product(*(p.grid for p in knobs))]
    return [p.name for p in knobs], points


def _rank(result: RunResult, select: str, target: float) -> tuple[float, float]:
    if result.status != "done" or result.metrics.get("diverged"):
        return (math.inf, math.inf)
    loss = result.metrics.get("final_loss", math.inf)
    loss = loss if math.isfinite(loss) else math.inf
    if select == "time":
        hit = time_to_target(result.curve, target)
        return (hit[1] if hit else math.inf, loss)
    return (loss, 0.0)


def _cid(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def _common(problem: str, *, steps: int | None, seconds: float | None, eval_every: int,
            device: str, dtype: str, threads: int, small: bool, data_dir: str | None,
            executor: str, jobs: int, seeds: int, target: float | None) -> tuple[Any, dict, float]:
    check_executor(executor, jobs)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive integer, got {seeds!r}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but torch sees no CUDA device")
    prob = load_problem(problem, small=small, data_dir=data_dir)
    prob.load_data()  # fail early (missing files) and fill in a computed optimum
    RunConfig(prob.name, "sgd", {}, 0, steps, seconds, eval_every, device, dtype, threads)
    base = {"steps": steps, "seconds": seconds, "eval_every": eval_every, "device": device,
            "dtype": dtype, "threads": threads, "problem_options": prob.options()}
    return prob, base, float(prob.target_loss if target is None else target)


def compare(
    problem: str,
    optimizers: str | list[str] = "all",
    *,
    steps: int | None = DEFAULT_BUDGET["steps"],
    seconds: float | None = DEFAULT_BUDGET["seconds"],
    eval_every: int = DEFAULT_BUDGET["eval_every"],
    seeds: int = 1,
    tune: bool = False,
    select: str = "loss",
    target: float | None = None,
    hparams: dict[str, dict[str, Any]] | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    threads: int = 1,
    small: bool = False,
    data_dir: str | None = None,
    store: str | Path | Store = "curvlab-results.sqlite",
    executor: str = "process",
    jobs: int = 1,
    progress: bool = False,
    name: str | None = None,
) -> Comparison:
    """Compare optimizers on one problem (see the module docstring for the protocol).

    Args:
        problem: Problem name (``curvlab list`` shows them).
        optimizers: Names, a comma-separated string, or ``"all"``.
        steps: Step budget per run (``None``: only ``seconds``).
        seconds: Training-time budget per run (``None``: only ``steps``).
        eval_every: Evaluation period in steps (not timed).
        seeds: Seeds of the final runs (``0 … seeds-1``).
        tune: Grid-search each optimizer's schema grid with seed 0 first.
        select: Tuning criterion, ``"loss"`` (final train loss) or ``"time"``
            (time to ``target``).
        target: Loss target (reported scale); default: the problem's.
        hparams: Fixed hyper-parameters per optimizer name (not tuned).
        device: ``"cpu"`` or ``"cuda"``.
        dtype: ``"float32"`` or ``"float64"``.
        threads: Torch threads per run.
        small: The problem's reduced variant.
        data_dir: Data folder (MNIST problems).
        store: Results-store path (or an open :class:`Store`).
        executor: ``"process"``, ``"serial"`` or ``"ray"``.
        jobs: Parallel runs (process pool workers).
        progress: Show tqdm progress bars.
        name: Comparison id (default: a hash of the settings).

    Returns:
        The :class:`Comparison` (call :meth:`Comparison.summary` or :meth:`Comparison.report`).

    Raises:
        ValueError: unknown problem or optimizer, invalid budget, hparam,
            selection criterion or executor, unwritable store.

    Example:
        >>> c = compare("quadratic", ["sgd", "adam"], steps=20, eval_every=10,
        ...             store=":memory:", executor="serial")
        >>> sorted(row["label"] for row in c.summary())
        ['adam', 'sgd']
    """
    if select not in SELECT:
        raise ValueError(f"select must be one of {SELECT}, got {select!r}")
    prob, base, tgt = _common(problem, steps=steps, seconds=seconds, eval_every=eval_every,
                              device=device, dtype=dtype, threads=threads, small=small,
                              data_dir=data_dir, executor=executor, jobs=jobs, seeds=seeds,
                              target=target)
    names = resolve_optimizers(optimizers)
    given = {normalize(k): v for k, v in (hparams or {}).items()}
    unknown = set(given) - set(names)
    if unknown:
        raise ValueError(f"hparams given for {sorted(unknown)}, which are not compared: {names}")
    fixed = {n: _parse_hparams(n, given.get(n, {})) for n in names}
    st = store if isinstance(store, Store) else Store(store)
    spec = {"kind": "compare", "problem": prob.name, "optimizers": names, "seeds": seeds,
            "tune": tune, "select": select, "target": tgt, "hparams": given, **base}
    cid = name or _cid(spec)
    shown: dict[str, list[str]] = {}
    tune_cfgs: dict[str, list[RunConfig]] = {}
    for n in names:
        knobs, points = _grid(n, given.get(n, {})) if tune else ([], [])
        shown[n] = sorted(set(knobs) | set(given.get(n, {})))
        tune_cfgs[n] = [RunConfig(prob.name, n, {**fixed[n], **pt}, 0, **base) for pt in points]
    spec["shown"] = shown
    st.add_comparison(cid, spec)

    # 1. tuning
    all_tune = [c for cs in tune_cfgs.values() for c in cs]
    st.add_members(cid, [(c.key(), "tune", c.optimizer) for c in all_tune])
    run_configs(all_tune, st, executor=executor, jobs=jobs, progress=progress, desc="tuning")
    best: dict[str, dict[str, Any]] = {}
    for n in names:
        cands = tune_cfgs.get(n)
        if not cands:
            best[n] = fixed[n]
            continue
        scored = [(_rank(st.result(c.key(), curve=True), select, tgt), i) for i, c in enumerate(cands)]
        best[n] = cands[min(scored)[1]].hparams

    # 2. final runs (+ 3. SGD reference)
    finals = [(RunConfig(prob.name, n, best[n], s, **base), "final", n)
              for n in names for s in range(seeds)]
    if "sgd" not in names:
        sgd = _parse_hparams("sgd", {})
        finals += [(RunConfig(prob.name, "sgd", sgd, s, **base), "reference", "sgd")
                   for s in range(seeds)]
    st.add_members(cid, [(c.key(), role, label) for c, role, label in finals])
    run_configs([c for c, _, _ in finals], st, executor=executor, jobs=jobs, progress=progress,
                desc="runs")
    return Comparison(cid, st, spec)


def _parse_value(opt: str, hparam: str, value: Any) -> Any:
    schema = curvlab.info(opt).schema
    if hparam not in schema:
        schema.validate({hparam: value})  # raises naming the allowed ones
    p = schema[hparam]
    if isinstance(value, str) and p.type is not str:
        text = value.strip()
        if p.optional and text.lower() == "none":
            return None
        if p.type is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"{hparam} must be true or false, got {value!r}")
            value = text.lower() in ("true", "1")
        elif p.type is tuple:
            value = tuple(float(v) for v in text.strip("()").split(","))
        else:
            try:
                value = p.type(float(text)) if p.type is int else float(text)
            except ValueError:
                raise ValueError(f"{hparam} must be a {p.type.__name__}, got {value!r}") from None
    return p.check(value)


def ablate(
    problem: str,
    optimizer: str,
    hparam: str,
    values: list[Any] | None = None,
    *,
    hparams: dict[str, Any] | None = None,
    steps: int | None = DEFAULT_BUDGET["steps"],
    seconds: float | None = DEFAULT_BUDGET["seconds"],
    eval_every: int = DEFAULT_BUDGET["eval_every"],
    seeds: int = 1,
    target: float | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    threads: int = 1,
    small: bool = False,
    data_dir: str | None = None,
    store: str | Path | Store = "curvlab-results.sqlite",
    executor: str = "process",
    jobs: int = 1,
    progress: bool = False,
    name: str | None = None,
) -> Comparison:
    """Vary one hyper-parameter of one optimizer, everything else fixed.

    Args:
        problem: Problem name.
        optimizer: Optimizer name.
        hparam: The hyper-parameter to vary.
        values: Its values (strings are parsed by the schema type); default:
            the schema's ``grid``, else its ``choices``, else ``True/False``
            for booleans.
        hparams: Other fixed hyper-parameters.
        steps, seconds, eval_every, seeds, target, device, dtype, threads, small, data_dir, store, executor, jobs, progress, name: As in :func:`compare`.

    Returns:
        A :class:`Comparison` whose labels are ``"<optimizer> <hparam>=<value>"``
        (plus the ``sgd`` reference).

    Raises:
        ValueError: unknown optimizer or hparam, invalid value, no values.

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
    if values is None or len(values) == 0:
        p = schema[hparam]
        values = list(p.grid or p.choices or ((True, False) if p.type is bool else ()))
        if not values:
            raise ValueError(f"no values to ablate for {opt}.{hparam}; pass some")
    vals = [_parse_value(opt, hparam, v) for v in values]
    prob, base, tgt = _common(problem, steps=steps, seconds=seconds, eval_every=eval_every,
                              device=device, dtype=dtype, threads=threads, small=small,
                              data_dir=data_dir, executor=executor, jobs=jobs, seeds=seeds,
                              target=target)
    fixed = dict(hparams or {})
    fixed.pop(hparam, None)
    st = store if isinstance(store, Store) else Store(store)
    spec = {"kind": "ablate", "problem": prob.name, "optimizers": [opt], "hparam": hparam,
            "values": [repr(v) for v in vals], "seeds": seeds, "target": tgt,
            "hparams": {opt: fixed}, **base, "shown": {}}
    cid = name or _cid(spec)
    st.add_comparison(cid, spec)
    rows = []
    for v in vals:
        hp = schema.validate({**fixed, hparam: v})
        label = f"{opt} {hparam}={v}"
        rows += [(RunConfig(prob.name, opt, hp, s, **base), "final", label) for s in range(seeds)]
    sgd = _parse_hparams("sgd", {})
    rows += [(RunConfig(prob.name, "sgd", sgd, s, **base), "reference", "sgd") for s in range(seeds)]
    st.add_members(cid, [(c.key(), role, label) for c, role, label in rows])
    run_configs([c for c, _, _ in rows], st, executor=executor, jobs=jobs, progress=progress,
                desc="ablation")
    return Comparison(cid, st, spec)

"""Ablation studies: vary hyper-parameters of one optimizer over a cartesian product, on several problems.

``ablate(["digits-mlp", "quadratic"], "kfac", {"damping_heuristic": ["pi", "equal"],
"inverse_every": [10, 50]}, retune=["lr"])`` runs every *cell* of the
product (here 2 × 2) on every problem. A variant that needs another
learning rate must not lose unfairly, so ``retune`` re-tunes the named
hyper-parameters in every cell with the same trial budget: each cell gets
``trials`` quasi-random configurations per study from the *same* unit-cube
points (:mod:`curvlab.harness.search`), trained with the tuning seed, and
its own winner by the validation criterion; the winners are run with the
evaluation seeds and reported (the protocol of
:mod:`curvlab.harness.protocol`). Without ``retune`` (and with ruleset
``defaults``) every other hyper-parameter keeps its default or the value you
fixed; with ruleset ``tuned`` and no ``retune``, every hyper-parameter with a
search space that is not varied or fixed is re-tuned.

Each problem is one stored comparison (kind ``"ablate"``) whose labels are
the cells, ``"<optimizer> A=a B=b"``. The :class:`Ablation` collects them and
reports a table per factor (each level pooled over the other factors' levels
and the seeds: median validation loss with its inter-quartile range and 95 %
bootstrap interval, per problem), the table of cells with their tuned
values, and for two factors a heat map of the median validation loss.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import curvlab
from curvlab.harness.compare import Comparison, settings_and_problem
from curvlab.harness.metrics import summarize
from curvlab.harness.protocol import (
    Plan,
    comparison_id,
    complete_hparams,
    given_hparams,
)
from curvlab.harness.settings import RunSettings

__all__ = ["Ablation", "ablate", "cell_label", "default_levels", "split_values"]


def split_values(text: str) -> list[str]:
    """Split ``v1,v2,...`` at the commas outside parentheses/brackets (tuple values stay whole).

    ``;`` also separates values. Empty entries are kept (the schema refuses them).

    Example:
        >>> split_values("0.1,0.03")
        ['0.1', '0.03']
        >>> split_values("(0.9,0.999),(0.95,0.95)")
        ['(0.9,0.999)', '(0.95,0.95)']
        >>> split_values("0.9,0.999;0.95,0.95")
        ['0.9,0.999', '0.95,0.95']
    """
    if not text.strip():
        return []
    if ";" in text:
        return [v.strip() for v in text.split(";")]
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (tuple, list)):
        return "(" + ",".join(_fmt(x) for x in v) + ")"
    return str(v)


def cell_label(optimizer: str, cell: Mapping[str, Any]) -> str:
    """``"<optimizer> A=a B=b"``.

    Example:
        >>> cell_label("adam", {"betas": (0.9, 0.999), "lr": 0.001})
        'adam betas=(0.9,0.999) lr=0.001'
    """
    return " ".join([optimizer] + [f"{k}={_fmt(v)}" for k, v in cell.items()])


def default_levels(opt: str, name: str) -> list[Any]:
    """Levels of ``opt.name`` when none are given: its choices, both booleans, or its Choice points.

    Raises:
        ValueError: none of those exists (a range space): pass levels.

    Example:
        >>> default_levels("kfac", "damping_heuristic")
        ['pi', 'equal']
    """
    p = curvlab.info(opt).schema[name]
    from curvlab.hparams import Choice

    space = p.search_space
    values = list(p.choices or ((True, False) if p.type is bool else ()))
    if not values and isinstance(space, Choice):
        values = list(space.points)
    if not values:
        raise ValueError(f"no values to ablate for {opt}.{name} (its space is "
                         f"{space.text if space else 'not declared'}); pass some")
    return values


@dataclass
class Ablation:
    """The comparisons of an ablation study, one per problem.

    Attributes:
        optimizer: The ablated optimizer.
        factors: ``name → levels`` (typed values), in the order varied.
        retune: Hyper-parameters re-tuned in every cell.
        comparisons: ``problem → Comparison``.
    """

    optimizer: str
    factors: dict[str, list[Any]]
    retune: list[str]
    comparisons: dict[str, Comparison]

    def cell_values(self, label: str) -> dict[str, Any]:
        """The factor levels of cell ``label``."""
        for cell in self.cells_levels():
            if cell_label(self.optimizer, cell) == label:
                return cell
        raise KeyError(label)

    def cells_levels(self) -> list[dict[str, Any]]:
        """Every cell of the product, as ``{factor: level}``."""
        names = list(self.factors)
        return [dict(zip(names, combo))
                for combo in itertools.product(*(self.factors[n] for n in names))]

    def cells(self) -> list[dict[str, Any]]:
        """One row per problem and cell: its levels, tuned values per study and its summary row."""
        out = []
        for problem, comp in self.comparisons.items():
            selected = comp.spec.get("selected", {})
            for row in comp.summary():
                tuned = [s["hparams"] for s in selected.get(row["label"], [])]
                out.append({"problem": problem, **self.cell_values(row["label"]),
                            "tuned": tuned, **row})
        return out

    def factor_table(self, factor: str) -> list[dict[str, Any]]:
        """The runs of every level of ``factor``, pooled over the other factors, per problem.

        Raises:
            KeyError: ``factor`` is not varied.
        """
        if factor not in self.factors:
            raise KeyError(f"{factor!r} is not a factor of this ablation; factors: "
                           f"{', '.join(self.factors)}")
        out = []
        for problem, comp in self.comparisons.items():
            groups = comp.groups()
            for level in self.factors[factor]:
                runs = [run for label, rs in groups.items()
                        if self.cell_values(label)[factor] == level for run in rs]
                row = summarize({f"{factor}={_fmt(level)}": runs}, comp.target)[0]
                out.append({"factor": factor, "level": _fmt(level), "problem": problem, **row})
        return out

    def report(self, out_dir: str | Path) -> list[Path]:
        """Write ``ablation.md``, ``cells.csv``, ``factors.csv`` (and ``heatmap.png`` for two factors)."""
        from curvlab.harness.report import write_ablation_report

        return write_ablation_report(self, out_dir)


def ablate(
    problems: str | Sequence[str],
    optimizer: str,
    vary: Mapping[str, Sequence[Any]] | str | None = None,
    values: Sequence[Any] | None = None,
    *,
    retune: Sequence[str] | str | None = None,
    hparams: Mapping[str, Any] | None = None,
    settings: RunSettings | None = None,
    **options: Any,
) -> Ablation:
    """Run an ablation study (see the module docstring).

    Args:
        problems: A problem name, comma-separated names, or a list.
        optimizer: The optimizer.
        vary: ``{hparam: levels}`` (typed values, or text as on a command
            line: ``"0.1"``, ``"(0.9,0.999)"``); the cells are their
            cartesian product. The old form ``ablate(problem, opt, "lr",
            [levels])`` (one hyper-parameter, its levels in ``values``) still
            works; levels default to the hparam's choices (or both booleans).
        values: The levels when ``vary`` is one name.
        retune: Hyper-parameters to re-tune in every cell (each needs a
            declared search space), as a list or ``"lr,damping"``.
        hparams: Other fixed hyper-parameters of the optimizer (typed or
            text), not varied and not re-tuned.
        settings: As in :func:`~curvlab.harness.compare.compare`.
        **options: As in :func:`~curvlab.harness.compare.compare`.

    Returns:
        The :class:`Ablation`.

    Raises:
        TypeError: a keyword that is not a setting.
        ValueError: unknown problem, optimizer or hparam, invalid level, no
            levels, an hparam both varied and fixed or re-tuned, a re-tuned
            hparam without a search space, an invalid setting or store.

    Example:
        >>> a = ablate("quadratic", "sgd", {"momentum": [0.0, 0.9]}, retune="lr", trials=2,
        ...            steps=10, eval_every=5, store=":memory:", executor="serial")
        >>> [r["label"] for r in a.cells()]
        ['sgd momentum=0', 'sgd momentum=0.9']
    """
    opt = curvlab.info(optimizer).name
    schema = curvlab.info(opt).schema
    if isinstance(vary, str):
        vary = {vary: list(values) if values else default_levels(opt, vary)}
    elif values is not None:
        raise ValueError("values goes with one hyper-parameter name in vary; with a mapping, "
                         "give the levels in it")
    if not vary:
        raise ValueError("nothing to vary: give vary={hparam: [levels, ...]}")
    factors: dict[str, list[Any]] = {}
    for name, levels in vary.items():
        if name not in schema:
            schema.validate({name: None})  # raises: unknown, close match, allowed names
        levels = list(levels) if not isinstance(levels, str) else split_values(levels)
        if not levels:
            raise ValueError(f"no levels given for {opt}.{name}")
        typed = [given_hparams(opt, {name: v})[name] for v in levels]
        if len({repr(v) for v in typed}) != len(typed):
            raise ValueError(f"{opt}.{name}: a level is given twice: {[_fmt(v) for v in typed]}")
        factors[name] = typed
    fixed = given_hparams(opt, hparams or {})
    for name in fixed:
        if name in factors:
            raise ValueError(f"{opt}.{name} is varied; do not also fix it (got "
                             f"{name}={fixed[name]!r})")
    names = [n.strip() for n in retune.split(",")] if isinstance(retune, str) else list(retune or [])
    names = [n for n in names if n]
    for name in names:
        if name in factors or name in fixed:
            raise ValueError(f"{opt}.{name} is {'varied' if name in factors else 'fixed'}; it "
                             "cannot also be re-tuned")
    problem_names = ([p.strip() for p in problems.split(",") if p.strip()]
                     if isinstance(problems, str) else list(problems))
    if not problem_names:
        raise ValueError("no problem given")
    run_settings = RunSettings.build(settings, **options)
    from curvlab.harness.search import tunable

    if names:
        tunable(opt, only=names)  # refuses unknown names and names without a search space
    elif run_settings.ruleset == "tuned":
        names = [p.name for p in tunable(opt, set(factors) | set(fixed))]
    if run_settings.tune_schedule and not names:
        raise ValueError("tune_schedule needs tuning: retune some hyper-parameters")
    levels = Ablation(opt, factors, names, {}).cells_levels()
    probs = [settings_and_problem(problem, run_settings, {})[1] for problem in problem_names]
    comparisons = {}
    for prob in probs:
        comparisons[prob.name] = _ablate_one(run_settings, prob, opt, factors, levels, fixed,
                                             names)
    return Ablation(opt, factors, names, comparisons)


def _ablate_one(settings: RunSettings, prob: Any, opt: str, factors: dict[str, list[Any]],
                cells: list[dict[str, Any]], fixed: dict[str, Any],
                retune: list[str]) -> Comparison:
    plan = Plan.open(settings, prob, [opt])
    spec = plan.spec("ablate", optimizers=[opt], factors={k: [repr(v) for v in vs]
                                                           for k, vs in factors.items()},
                     retune=retune, hparams={opt: fixed})
    cid = f"{settings.name}-{prob.name}" if settings.name else comparison_id(spec)
    base, cands, labels = {}, {}, []
    for cell in cells:
        label = cell_label(opt, cell)
        labels.append(label)
        base[label] = complete_hparams(opt, {**fixed, **cell})
        cands[label] = (plan.candidates(label, opt, base[label],
                                        fixed=set(fixed) | set(cell), only=retune)
                        if retune else [])
    schema_names = curvlab.info(opt).schema.names
    spec.update(shown={lb: [k for k in schema_names if k in set(factors) | set(retune)]
                       for lb in labels},
                trial_counts={lb: sum(c.study == 0 for c in cands[lb]) for lb in labels})
    plan.execute(cid, spec, {lb: cands[lb] for lb in labels}, base, dict.fromkeys(labels, opt),
                 "ablation")
    return Comparison(cid, plan.store, spec)

r"""Dolan–Moré performance profiles of optimizers across problems (comparisons in one store).

Each stored comparison is one problem ``p``; the solvers ``s`` are the
optimizer labels of the final runs that every selected comparison shares.
With a cost ``t_{p,s} > 0`` (lower is better) the performance ratio and the
profile are (Dolan & Moré, 2002)

.. math::

    r_{p,s} = \frac{t_{p,s}}{\min_{s'} t_{p,s'}}, \qquad
    \rho_s(\tau) = \frac{|\{p : r_{p,s} \le \tau\}|}{n_p},

so ``ρ_s(1)`` is the fraction of problems on which ``s`` is (jointly) best and
``ρ_s(τ → ∞)`` the fraction it solves at all. Conventions: ``t = ∞`` when the
target was not reached, the run diverged or errored, and then ``r = ∞``;
tied costs (``0 = 0`` included) give ``r = 1``; when the best cost is 0 every
positive cost gets ``r = ∞``; when no solver has a finite cost on a problem
every ``r`` there is ``∞``.

Cost measures of one run (its comparison's validation-loss target ``T``):

- ``"steps"``: the step of the first evaluation with validation loss ``≤ T``;
- ``"seconds"``: the training seconds at that evaluation (evaluation excluded);
- ``"ref-steps"``: the work to that evaluation in reference steps (its step
  × the run's step cost, :func:`~curvlab.harness.metrics.cost_to_target`):
  a time that survives a busy machine;
- ``"loss"``: the final full train loss; ``"val-loss"``: the final
  validation loss (both must be ``≥ 0``).

The cost of a solver on a problem is the *median* over its reported runs
(seeds and studies; AlgoPerf takes the median over studies), with failed
runs and missed targets at ``∞`` (so the median is ``∞`` when more than half
failed).

The **benchmark score** (AlgoPerf's integrated performance profile) of a
solver is

.. math::

    B_s = \frac{1}{r_{\max} - 1} \int_1^{r_{\max}} \rho_s(\tau)\, d\tau
        = \frac{1}{n_p} \sum_p \frac{\max\bigl(0,\, r_{\max} - r_{p,s}\bigr)}{r_{\max} - 1}
        \in [0, 1]

(the second form is the exact integral of the step function ``ρ_s``; an
``r ≥ r_max`` earns nothing), with ``r_max = 4`` by default
(:func:`profile_score`): 1 for a solver that is fastest on every problem.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curvlab.harness.metrics import cost_to_target, time_to_target
from curvlab.harness.report import prepare_folder, write_csv
from curvlab.harness.results import RunResult
from curvlab.harness.statistics import median_iqr

if TYPE_CHECKING:
    from curvlab.harness.store import Store

__all__ = ["DEFAULT_R_MAX", "DEFAULT_TAUS", "MEASURES", "Profile", "performance_profile",
           "performance_ratios", "profile_score", "profile_table", "rho", "run_cost",
           "score_table", "write_profile", "write_score"]

MEASURES = ("steps", "seconds", "ref-steps", "loss", "val-loss")
#: Upper integration limit of the benchmark score (AlgoPerf: 4).
DEFAULT_R_MAX = 4.0
#: τ values of the ρ table.
DEFAULT_TAUS = (1.0, 2.0, 4.0, 8.0, 16.0)


def run_cost(result: RunResult, measure: str, target: float) -> float:
    """Cost ``t`` of one run under ``measure`` (``∞``: target missed, diverged or error).

    Args:
        result: A stored run result with its curve.
        measure: One of :data:`MEASURES`.
        target: Validation-loss target of the run's comparison.

    Returns:
        The cost as a float (``math.inf`` when the run failed by the rule above).

    Raises:
        ValueError: unknown measure.

    Example:
        >>> from curvlab.harness.results import CurvePoint, RunMetrics
        >>> r = RunResult("k", "done", "steps", RunMetrics(final_loss=0.2, final_val_loss=0.3,
        ...               step_cost=5.0), {}, [CurvePoint("eval", 0, 0.0, 2.0, val_loss=2.1),
        ...               CurvePoint("eval", 10, 0.5, 0.2, val_loss=0.3)])
        >>> [run_cost(r, m, 1.0) for m in MEASURES]
        [10.0, 0.5, 50.0, 0.2, 0.3]
        >>> run_cost(r, "steps", 0.1)
        inf
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    if result.failed:
        return math.inf
    if measure == "loss":
        return result.ranked_loss
    if measure == "val-loss":
        return result.ranked_val_loss
    if measure == "ref-steps":
        return cost_to_target(result, target)
    hit = time_to_target(result.curve, target)
    if hit is None:
        return math.inf
    return float(hit[0] if measure == "steps" else hit[1])


def performance_ratios(costs: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Ratios ``r_{p,s} = t_{p,s} / min_{s'} t_{p,s'}`` from ``costs[problem][solver]``.

    NaN costs count as ``∞``; ties give 1; see the module docstring for the
    zero-cost and all-failed conventions.

    Args:
        costs: ``problem → solver → t`` (every problem with the same solvers).

    Returns:
        ``problem → solver → r`` (floats ``≥ 1`` or ``math.inf``).

    Raises:
        ValueError: a negative cost, or problems with different solver sets.

    Example:
        >>> performance_ratios({"p1": {"a": 10, "b": 20, "c": float("inf")},
        ...                     "p2": {"a": 6, "b": 3, "c": 3}})
        {'p1': {'a': 1.0, 'b': 2.0, 'c': inf}, 'p2': {'a': 2.0, 'b': 1.0, 'c': 1.0}}
    """
    solvers: set[str] | None = None
    out: dict[str, dict[str, float]] = {}
    for problem, row in costs.items():
        if solvers is None:
            solvers = set(row)
        elif set(row) != solvers:
            raise ValueError(f"problem {problem!r} has solvers {sorted(row)}, expected {sorted(solvers)}")
        clean = {}
        for s, t in row.items():
            t = float(t)
            if t < 0:
                raise ValueError(f"cost of {s!r} on {problem!r} must be >= 0, got {t}")
            clean[s] = math.inf if math.isnan(t) else t
        best = min(clean.values(), default=math.inf)
        ratios = {}
        for s, t in clean.items():
            if not math.isfinite(t):
                ratios[s] = math.inf
            elif t == best:
                ratios[s] = 1.0
            else:
                ratios[s] = t / best if best > 0 else math.inf
        out[problem] = ratios
    return out


def rho(ratios: Mapping[str, Mapping[str, float]], solver: str, tau: float) -> float:
    """``ρ_s(τ)``: fraction of problems with ``r_{p,s} ≤ τ``.

    Args:
        ratios: ``problem → solver → r`` from :func:`performance_ratios`.
        solver: The solver ``s``.
        tau: The factor ``τ ≥ 1``.

    Returns:
        A fraction in ``[0, 1]`` (NaN when there is no problem).

    Example:
        >>> r = {"p1": {"a": 1.0, "b": 2.0}, "p2": {"a": 3.0, "b": 1.0}}
        >>> rho(r, "a", 1), rho(r, "a", 2.5), rho(r, "a", 3), rho(r, "b", 2)
        (0.5, 0.5, 1.0, 1.0)
    """
    if not ratios:
        return math.nan
    return sum(row[solver] <= tau for row in ratios.values()) / len(ratios)


@dataclass
class Profile:
    """Costs and ratios of a set of problems and solvers.

    Attributes:
        measure: The cost measure (``"steps"``, ``"seconds"`` or ``"loss"``).
        costs: ``problem → solver → t``.
        ratios: ``problem → solver → r``.
        comparisons: ``problem → comparison id``.

    Example:
        >>> p = Profile.from_costs({"q": {"a": 2.0, "b": 4.0}}, "steps")
        >>> p.solvers, p.problems, p.rho("b", 2.0)
        (['a', 'b'], ['q'], 1.0)
    """

    measure: str
    costs: dict[str, dict[str, float]]
    ratios: dict[str, dict[str, float]]
    comparisons: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_costs(cls, costs: Mapping[str, Mapping[str, float]], measure: str,
                   comparisons: Mapping[str, str] | None = None) -> Profile:
        """Build from ``problem → solver → t`` (see :func:`performance_ratios`)."""
        return cls(measure, {p: dict(r) for p, r in costs.items()}, performance_ratios(costs),
                   dict(comparisons or {}))

    @property
    def problems(self) -> list[str]:
        """Problem names, in insertion order."""
        return list(self.costs)

    @property
    def solvers(self) -> list[str]:
        """Solver labels, in the order of the first problem."""
        return list(next(iter(self.costs.values()), {}))

    def rho(self, solver: str, tau: float) -> float:
        """``ρ_s(τ)`` (see :func:`rho`)."""
        return rho(self.ratios, solver, tau)


def _median_cost(values: Sequence[float]) -> float:
    if not values:
        return math.inf
    return median_iqr(values)[0]


def performance_profile(store: Store, comparisons: Iterable[str] | None = None,
                        measure: str = "steps") -> Profile:
    """The profile of the comparisons in ``store`` over the optimizers they share.

    Args:
        store: The results store.
        comparisons: Comparison ids (default: every comparison in the store).
        measure: One of :data:`MEASURES` (default ``"steps"``).

    Returns:
        A :class:`Profile` whose problems are the comparisons' problem names
        (suffixed with the id when a problem occurs twice) and whose solvers
        are the final-run labels common to all of them.

    Raises:
        ValueError: unknown measure or comparison id, an empty store, or no
            shared optimizer.

    Example:
        >>> from curvlab.harness.compare import compare
        >>> from curvlab.harness.store import Store
        >>> s = Store(":memory:")
        >>> _ = compare("quadratic", ["sgd", "adam"], steps=10, eval_every=5, store=s,
        ...             executor="serial", target=1e9)
        >>> p = performance_profile(s)
        >>> p.problems, sorted(p.solvers), p.rho("sgd", 1.0)
        (['quadratic'], ['adam', 'sgd'], 1.0)
    """
    from curvlab.harness.compare import Comparison

    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    ids = [store.comparison(c)[0] for c in comparisons] if comparisons is not None else \
        [cid for cid, _, _ in store.comparisons()]
    if not ids:
        raise ValueError(f"results store {store.path!r} holds no comparison")
    per: dict[str, dict[str, float]] = {}
    where: dict[str, str] = {}
    seen_problems = [store.comparison(c)[1].get("problem", c) for c in ids]
    for cid, problem in zip(ids, seen_problems):
        comp = Comparison(cid, store, store.comparison(cid)[1])
        name = problem if seen_problems.count(problem) == 1 else f"{problem}#{cid}"
        runs: dict[str, list[float]] = {}
        for rec in comp.records(("final",)):
            runs.setdefault(rec["label"], []).append(run_cost(rec["result"], measure, comp.target))
        per[name] = {label: _median_cost(v) for label, v in runs.items()}
        where[name] = cid
    shared = [s for s in next(iter(per.values())) if all(s in row for row in per.values())]
    if not shared:
        labels = "; ".join(f"{p}: {', '.join(sorted(r)) or 'none'}" for p, r in per.items())
        raise ValueError(f"the comparisons share no optimizer ({labels})")
    costs = {p: {s: row[s] for s in shared} for p, row in per.items()}
    return Profile.from_costs(costs, measure, where)


def _fmt(v: float) -> str:
    return "∞" if v == math.inf else f"{v:.4g}"


def profile_table(profile: Profile, taus: Sequence[float] = DEFAULT_TAUS) -> str:
    """Markdown table of ``ρ_s(τ)`` (one row per solver) and of the ratios per problem.

    Example:
        >>> p = Profile.from_costs({"p1": {"a": 1.0, "b": 3.0}, "p2": {"a": 5.0, "b": math.inf}},
        ...                        "steps")
        >>> print(profile_table(p, taus=(1, 4)).splitlines()[2])
        | a | 1 | 1 |
    """
    head = ["optimizer"] + [f"ρ(τ={t:g})" for t in taus]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in profile.solvers:
        lines.append("| " + " | ".join([s] + [f"{profile.rho(s, t):.3g}" for t in taus]) + " |")
    head = ["problem"] + [f"r({s})" for s in profile.solvers] + [f"t({s})" for s in profile.solvers]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in profile.problems:
        cells = [p] + [_fmt(profile.ratios[p][s]) for s in profile.solvers] + \
            [_fmt(profile.costs[p][s]) for s in profile.solvers]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(profile: Profile, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = [r for row in profile.ratios.values() for r in row.values() if math.isfinite(r)]
    tau_max = max(2.0, 2.0 * max(finite, default=1.0))
    n = len(profile.problems)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = ("-", "--", ":", "-.")
    for i, s in enumerate(profile.solvers):
        rs = sorted(row[s] for row in profile.ratios.values() if math.isfinite(row[s]))
        xs = [1.0] + rs + [tau_max]
        ys = [rho(profile.ratios, s, 1.0)] + [(k + 1) / n for k in range(len(rs))] + [len(rs) / n]
        ax.step(xs, ys, where="post", label=s, ls=styles[(i // 10) % 4], color=f"C{i % 10}")
    ax.set_xscale("log", base=2)
    ax.set_xlim(1.0, tau_max)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("τ (performance ratio)")
    ax.set_ylabel("ρ(τ): fraction of problems with r ≤ τ")
    ax.set_title(f"performance profile over {n} problem(s), cost: {profile.measure}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_profile(profile: Profile, out_dir: str | Path,
                  taus: Sequence[float] = DEFAULT_TAUS) -> list[Path]:
    """Write ``profile_<measure>.md``, ``.csv`` (ρ table), ``ratios_<measure>.csv`` and ``.png``.

    Args:
        profile: The profile.
        out_dir: Folder (created if missing).
        taus: τ values of the ρ table.

    Returns:
        The paths written (markdown, ρ CSV, ratio CSV, plot).

    Example:
        >>> import tempfile
        >>> p = Profile.from_costs({"p1": {"a": 1.0, "b": 2.0}}, "loss")
        >>> [f.name for f in write_profile(p, tempfile.mkdtemp())]
        ['profile_loss.md', 'profile_loss.csv', 'ratios_loss.csv', 'profile_loss.png']
    """
    out = prepare_folder(out_dir)
    m = profile.measure
    md, rho_csv, ratio_csv, png = (out / f"profile_{m}.md", out / f"profile_{m}.csv",
                                   out / f"ratios_{m}.csv", out / f"profile_{m}.png")
    md.write_text(f"# Performance profile (cost: {m})\n\n" + profile_table(profile, taus) + "\n")
    write_csv(rho_csv, [{"optimizer": s, **{f"tau={t:g}": profile.rho(s, t) for t in taus}}
                         for s in profile.solvers])
    rows: list[dict[str, Any]] = []
    for p in profile.problems:
        for s in profile.solvers:
            rows.append({"problem": p, "comparison": profile.comparisons.get(p, ""),
                         "optimizer": s, "cost": profile.costs[p][s],
                         "ratio": profile.ratios[p][s]})
    write_csv(ratio_csv, rows)
    _plot(profile, png)
    return [md, rho_csv, ratio_csv, png]


def profile_score(profile: Profile, r_max: float = DEFAULT_R_MAX) -> dict[str, float]:
    """The AlgoPerf benchmark score ``B_s`` of every solver (see the module docstring).

    Args:
        profile: The performance profile.
        r_max: Upper integration limit (``> 1``).

    Returns:
        ``solver → B_s`` in ``[0, 1]``.

    Raises:
        ValueError: ``r_max ≤ 1``.

    Example:
        >>> p = Profile.from_costs({"p1": {"a": 1.0, "b": 2.0}, "p2": {"a": 3.0, "b": 1.0}}, "steps")
        >>> profile_score(p)  # a: (3 + 1)/2/3, b: (2 + 3)/2/3
        {'a': 0.6666666666666666, 'b': 0.8333333333333334}
    """
    if not r_max > 1:
        raise ValueError(f"r_max must be > 1, got {r_max!r}")
    n = len(profile.problems)
    out = {}
    for s in profile.solvers:
        total = sum(max(0.0, r_max - profile.ratios[p][s]) for p in profile.problems
                    if math.isfinite(profile.ratios[p][s]))
        out[s] = total / (n * (r_max - 1.0)) if n else math.nan
    return out


def score_table(profile: Profile, r_max: float = DEFAULT_R_MAX) -> str:
    """Markdown table of the benchmark score, best first, with each solver's ratios.

    Example:
        >>> p = Profile.from_costs({"p1": {"a": 1.0, "b": 2.0}}, "steps")
        >>> print(score_table(p).splitlines()[2])
        | a | 1 | 1 |
    """
    scores = profile_score(profile, r_max)
    head = ["optimizer", f"score (r_max={r_max:g})"] + [f"r({p})" for p in profile.problems]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in sorted(scores, key=lambda k: (-scores[k], k)):
        cells = [s, f"{scores[s]:.3g}"] + [_fmt(profile.ratios[p][s]) for p in profile.problems]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_score(profile: Profile, out_dir: str | Path,
                r_max: float = DEFAULT_R_MAX) -> list[Path]:
    """Write ``score_<measure>.md`` and ``score_<measure>.csv`` (the benchmark score per solver).

    Example:
        >>> import tempfile
        >>> p = Profile.from_costs({"p1": {"a": 1.0, "b": 2.0}}, "steps")
        >>> [f.name for f in write_score(p, tempfile.mkdtemp())]
        ['score_steps.md', 'score_steps.csv']
    """
    out = prepare_folder(out_dir)
    m = profile.measure
    md, table = out / f"score_{m}.md", out / f"score_{m}.csv"
    md.write_text(f"# Benchmark score (integrated performance profile, cost: {m}, "
                  f"r_max = {r_max:g}, {len(profile.problems)} problem(s))\n\n"
                  + score_table(profile, r_max) + "\n")
    scores = profile_score(profile, r_max)
    write_csv(table, [{"optimizer": s, "score": v, "r_max": r_max, "measure": m,
                       "problems": len(profile.problems)} for s, v in scores.items()])
    return [md, table]

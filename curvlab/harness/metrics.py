r"""Summary metrics of a comparison: time-to-target, medians with spread and CIs, step costs.

Time-to-target of a run is read off its evaluation points: the first point
whose *validation* loss is ``≤ target`` gives ``(steps, seconds)`` of
training time (:func:`time_to_target`; runs stored before validation
existed fall back to the train loss); a run that never gets there has
``None``, and enters the statistics as :math:`+\infty`.

Per label (optimizer, or ablation cell) the runs (seeds, and studies when
there are several) are summarised by :func:`summarize` with
:mod:`curvlab.harness.statistics`: median, inter-quartile range and a 95 %
percentile-bootstrap interval of the median for the final validation loss
and the seconds to the target; medians and IQRs for the rest. The cost of a
step is given in *reference steps* (each run's mean step time divided by
the mean time of the problem's plain SGD step, timed interleaved in the
same run: see :mod:`curvlab.harness.timing`), which survives a busy
machine, and in counted gradient-equivalents (backward passes per step).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from curvlab.harness.results import CurvePoint, RunMetrics, RunResult
from curvlab.harness.statistics import bootstrap_ci, median_iqr

__all__ = ["cost_to_target", "mean_std", "summarize", "time_to_target"]


def time_to_target(curve: Sequence[CurvePoint], target: float, *,
                   on: str = "val") -> tuple[int, float] | None:
    """``(step, seconds)`` of the first evaluation with loss ≤ ``target``.

    Args:
        curve: A run's points.
        target: The loss target (reported scale).
        on: ``"val"`` (validation loss; a point without one uses its train
            loss, as stored before validation existed) or ``"train"``.

    Example:
        >>> pts = [CurvePoint("eval", 0, 0.0, 2.0, val_loss=2.1),
        ...        CurvePoint("eval", 10, 0.5, 0.4, val_loss=0.6)]
        >>> time_to_target(pts, 1.0), time_to_target(pts, 0.5), time_to_target(pts, 0.5, on="train")
        ((10, 0.5), None, (10, 0.5))
    """
    if on not in ("val", "train"):
        raise ValueError(f"on must be 'val' or 'train', got {on!r}")
    for p in curve:
        if p.kind != "eval":
            continue
        loss = p.val_loss if on == "val" and p.val_loss is not None else p.loss
        if loss is not None and math.isfinite(loss) and loss <= target:
            return p.step, p.time
    return None


def cost_to_target(result: RunResult, target: float) -> float:
    """Work to reach the validation target, in reference steps: steps to it × the step cost.

    The noise-robust counterpart of the seconds to the target (the step
    cost uses the CPU clock where it can: :mod:`curvlab.harness.timing`);
    ``inf`` for a failed run or a missed target.

    Example:
        >>> r = RunResult("k", "done", "steps", RunMetrics(step_cost=2.5),
        ...               curve=[CurvePoint("eval", 20, 0.5, 0.2, val_loss=0.25)])
        >>> cost_to_target(r, 0.3), cost_to_target(r, 0.1)
        (50.0, inf)
    """
    if result.failed or result.metrics is None:
        return math.inf
    hit = time_to_target(result.curve, target)
    cost = result.metrics.step_cost
    if hit is None or not (cost > 0):
        return math.inf
    return float(hit[0] * cost)


def mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and sample std of the finite values (NaN, NaN if none; std 0 for one value).

    Example:
        >>> mean_std([1.0, 3.0, None, float("inf")])
        (2.0, 1.4142135623730951)
    """
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _failed_as_inf(result: RunResult, value: float | None) -> float:
    """A final loss for statistics: ``inf`` for a failed run (error, timeout, divergence)."""
    if result.failed or value is None:
        return math.inf
    return float(value) if math.isfinite(float(value)) else math.inf


def _spread(row: dict[str, Any], col: str, values: list[float | None], ci: bool = False) -> None:
    row[col], row[col + "_q25"], row[col + "_q75"] = median_iqr(values)
    if ci:
        row[col + "_ci_low"], row[col + "_ci_high"] = bootstrap_ci(values)


def summarize(
    groups: dict[str, list[tuple[dict[str, Any], RunResult]]],
    target: float,
    trials: dict[str, int] | None = None,
) -> list[dict[str, Any]]:
    r"""One row per label from its runs ``(shown hparams, result-with-curve)``.

    Row keys: ``label``, ``hparams`` (the distinct shown hparams, one per
    study, joined by ``" | "``), ``trials`` (tuning trials per study),
    ``runs``, ``errors``, ``timeouts``, ``diverged``, ``warnings``;
    ``val_loss`` (final validation loss: median, ``_q25``, ``_q75``,
    ``_ci_low``, ``_ci_high``), ``final_loss`` (final full train loss),
    ``test_loss``, ``test_acc``, ``val_acc`` (median, ``_q25``, ``_q75``);
    ``reached`` (runs that hit the validation target), ``steps_to_target``,
    ``seconds_to_target`` (with CI) and ``ref_steps_to_target`` (medians,
    :math:`+\infty` for misses; :func:`cost_to_target`); ``step_time_ms``,
    ``ref_step_ms``, ``step_cost`` (reference steps per step, median and
    IQR), ``step_cost_wall`` (wall clock), ``backward_passes``,
    ``forward_passes`` (per step), ``peak_mem_mb``, ``mem_delta_mb``
    (medians); ``stat_<counter>`` (mean of every optimizer counter).
    Failed runs enter the losses as :math:`+\infty`; errors and timeouts
    have no step costs.

    Example:
        >>> r = RunResult("k", "done", "steps", RunMetrics(final_loss=1.0, final_val_loss=1.1,
        ...               step_time=0.002, ref_step_time=0.001, step_cost=2.0),
        ...               {"skipped_steps": 0.0}, [CurvePoint("eval", 5, 0.01, 0.5, val_loss=0.55)])
        >>> row = summarize({"sgd": [({"lr": 0.1}, r)]}, target=0.6)[0]
        >>> row["reached"], row["steps_to_target"], row["step_cost"], row["val_loss"]
        (1, 5.0, 2.0, 1.1)
    """
    rows = []
    for label, runs in groups.items():
        ok = [(h, r) for h, r in runs if r.status == "done" and r.metrics is not None]
        m: list[RunMetrics] = [r.metrics for _, r in ok]
        shown = []
        for h, _ in runs:
            text = _hp_text(h)
            if text not in shown:
                shown.append(text)
        row: dict[str, Any] = {
            "label": label,
            "hparams": " | ".join(shown),
            "trials": (trials or {}).get(label, 0),
            "runs": len(runs),
            "errors": sum(r.status == "error" for _, r in runs),
            "timeouts": sum(r.status == "timeout" for _, r in runs),
            "error": next((r.error for _, r in runs if r.status != "done"), ""),
            "diverged": sum(x.diverged for x in m),
            "warnings": sum(x.warnings for x in m),
        }
        metrics = [r.metrics for _, r in runs]
        _spread(row, "val_loss", [_failed_as_inf(r, x.final_val_loss if x else None)
                                  for (_, r), x in zip(runs, metrics)], ci=True)
        _spread(row, "final_loss", [_failed_as_inf(r, x.final_loss if x else None)
                                    for (_, r), x in zip(runs, metrics)])
        _spread(row, "test_loss", [_failed_as_inf(r, x.final_test_loss if x else None)
                                   for (_, r), x in zip(runs, metrics)])
        _spread(row, "test_acc", [x.final_test_acc for x in m])
        _spread(row, "val_acc", [x.final_val_acc for x in m])
        hits = [time_to_target(r.curve, target) if not r.failed else None for _, r in runs]
        row["reached"] = sum(h is not None for h in hits)
        row["steps_to_target"] = median_iqr([h[0] if h else math.inf for h in hits])[0]
        _spread(row, "seconds_to_target", [h[1] if h else math.inf for h in hits], ci=True)
        row["ref_steps_to_target"] = median_iqr([cost_to_target(r, target) for _, r in runs])[0]
        row["step_time_ms"] = median_iqr([x.step_time * 1e3 for x in m])[0]
        row["ref_step_ms"] = median_iqr([x.ref_step_time * 1e3 for x in m])[0]
        _spread(row, "step_cost", [x.step_cost for x in m])
        row["step_cost_wall"] = median_iqr([x.step_cost_wall for x in m])[0]
        row["cost_clock"] = ",".join(sorted({x.cost_clock for x in m if x.cost_clock}))
        row["backward_passes"] = median_iqr([x.backward_passes for x in m])[0]
        row["forward_passes"] = median_iqr([x.forward_passes for x in m])[0]
        row["peak_mem_mb"] = median_iqr([x.peak_mem_mb for x in m])[0]
        row["mem_delta_mb"] = median_iqr([x.mem_delta_mb for x in m])[0]
        for counter in sorted({c for _, r in ok for c in r.stats}):
            row[f"stat_{counter}"] = mean_std([r.stats.get(counter) for _, r in ok])[0]
        rows.append(row)
    return rows


def _hp_text(hp: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, (tuple, list)):
            return "(" + ",".join(fmt(x) for x in v) + ")"
        return str(v)

    return ", ".join(f"{k}={fmt(v)}" for k, v in hp.items())

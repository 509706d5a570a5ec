"""Summary metrics of a comparison: time-to-target, mean ± std, step-time ratio vs SGD.

Time-to-target of a run is read off its evaluation points (full train loss,
every ``eval_every`` steps): the first point with ``loss ≤ target`` gives
``(steps, seconds)`` of training time; a run that never gets there has
``None``. Per label (optimizer or ablation value) the seeds are aggregated
as mean and sample standard deviation (``ddof = 1``; 0 for one seed).
The step-time ratio is ``mean step time / mean step time of sgd`` measured
in the same comparison (same problem, device, dtype, threads, budget).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from curvlab.harness.results import CurvePoint, RunMetrics, RunResult

__all__ = ["mean_std", "summarize", "time_to_target"]


def time_to_target(curve: Sequence[CurvePoint], target: float) -> tuple[int, float] | None:
    """``(step, seconds)`` of the first evaluation with train loss ≤ ``target``.

    Example:
        >>> pts = [CurvePoint("eval", 0, 0.0, 2.0), CurvePoint("eval", 10, 0.5, 0.4)]
        >>> time_to_target(pts, 1.0), time_to_target(pts, 0.1)
        ((10, 0.5), None)
    """
    for p in curve:
        if p.kind == "eval" and math.isfinite(p.loss) and p.loss <= target:
            return p.step, p.time
    return None


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


def summarize(
    groups: dict[str, list[tuple[dict[str, Any], RunResult]]],
    target: float,
    reference: str = "sgd",
) -> list[dict[str, Any]]:
    """One row per label from its runs ``(hparams, result-with-curve)``.

    Row keys: ``label``, ``hparams``, ``runs``, ``errors``, ``diverged``,
    ``final_loss``/``final_loss_std``, ``best_loss``/…, ``test_loss``/…,
    ``test_acc``/…, ``reached`` (runs that hit the target),
    ``steps_to_target``, ``seconds_to_target`` (means over those runs),
    ``step_time_ms``, ``ratio_vs_sgd``, ``peak_mem_mb``, ``mem_delta_mb`` and
    ``stat_<counter>`` (mean of every optimizer counter).

    Example:
        >>> r = RunResult("k", "done", "steps", RunMetrics(final_loss=1.0, step_time=0.002),
        ...               {"skipped_steps": 0.0}, [CurvePoint("eval", 5, 0.01, 0.5)])
        >>> row = summarize({"sgd": [({"lr": 0.1}, r)]}, target=0.6)[0]
        >>> row["reached"], row["steps_to_target"], row["ratio_vs_sgd"], row["stat_skipped_steps"]
        (1, 5.0, 1.0, 0.0)
    """
    rows = []
    for label, runs in groups.items():
        ok = [(h, r) for h, r in runs if r.status == "done" and r.metrics is not None]
        m: list[RunMetrics] = [r.metrics for _, r in ok]
        row: dict[str, Any] = {
            "label": label,
            "hparams": _hp_text(runs[0][0]) if runs else "",
            "runs": len(runs),
            "errors": len(runs) - len(ok),
            "error": next((r.error for _, r in runs if r.status != "done"), ""),
            "diverged": sum(x.diverged for x in m),
            "warnings": sum(x.warnings for x in m),
        }
        for col, key in (("final_loss", "final_loss"), ("best_loss", "best_loss"),
                         ("test_loss", "final_test_loss"), ("test_acc", "final_test_acc")):
            row[col], row[col + "_std"] = mean_std([getattr(x, key) for x in m])
        hits = [time_to_target(r.curve, target) for _, r in ok]
        hits = [h for h in hits if h is not None]
        row["reached"] = len(hits)
        row["steps_to_target"] = mean_std([h[0] for h in hits])[0]
        row["seconds_to_target"] = mean_std([h[1] for h in hits])[0]
        row["step_time_ms"] = mean_std([x.step_time * 1e3 for x in m])[0]
        row["peak_mem_mb"] = mean_std([x.peak_mem_mb for x in m])[0]
        row["mem_delta_mb"] = mean_std([x.mem_delta_mb for x in m])[0]
        for counter in sorted({c for _, r in ok for c in r.stats}):
            row[f"stat_{counter}"] = mean_std([r.stats.get(counter) for _, r in ok])[0]
        rows.append(row)
    ref = next((r["step_time_ms"] for r in rows if r["label"] == reference), math.nan)
    for row in rows:
        row["ratio_vs_sgd"] = row["step_time_ms"] / ref if ref and math.isfinite(ref) else math.nan
    return rows


def _hp_text(hp: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in hp.items())

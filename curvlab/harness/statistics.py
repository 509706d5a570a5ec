r"""Robust statistics across seeds: medians, inter-quartile ranges, bootstrap confidence intervals.

A comparison reports, per optimizer, the *median* over its runs (seeds, and
studies when there are several) with the inter-quartile range
:math:`[q_{25}, q_{75}]` (linear interpolation between order statistics,
NumPy's default), and a 95 % bootstrap confidence interval of the median
(:func:`bootstrap_ci`, :func:`scipy.stats.bootstrap`, percentile method).

Failures and missed targets enter as :math:`+\infty`: a diverged run's
final loss, and the time-to-target of a run that never reached the target.
They stay in the sample, so they pull the median and the interval upwards
as they should: the median is :math:`+\infty` when more than half of the
runs missed the target, and a bound of the interval is :math:`+\infty` when
that bound's resamples are dominated by misses. (Internally :math:`+\infty`
is replaced by a value above every finite one; any quantile above the
largest finite value is reported as :math:`+\infty`, which is what the
interpolation with :math:`+\infty` gives.) NaN values (not measured) are
left out.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["BOOTSTRAP_RESAMPLES", "CONFIDENCE", "bootstrap_ci", "median_iqr"]

CONFIDENCE = 0.95
#: Resamples of :func:`bootstrap_ci` (scipy's default).
BOOTSTRAP_RESAMPLES = 9999


def _clean(values: Sequence[float | None]) -> tuple[np.ndarray, float]:
    """Values without NaN/None, +inf replaced by a sentinel; the largest finite value."""
    vals = np.array([float(v) for v in values if v is not None and not math.isnan(float(v))],
                    dtype=np.float64)
    if np.any(vals == -np.inf):
        raise ValueError("statistics of values containing -inf are not defined here")
    finite = vals[np.isfinite(vals)]
    top = float(finite.max()) if finite.size else 0.0
    sentinel = abs(top) * 2.0 + 1.0
    return np.where(np.isinf(vals), sentinel, vals), top


def _back(x: float, top: float, had_inf: bool) -> float:
    return math.inf if had_inf and x > top else float(x)


def median_iqr(values: Sequence[float | None]) -> tuple[float, float, float]:
    r"""``(median, q25, q75)`` with :math:`+\infty` for failures (NaN if there is no value).

    Example:
        >>> median_iqr([1.0, 2.0, 3.0, 4.0])
        (2.5, 1.75, 3.25)
        >>> median_iqr([1.0, float("inf"), float("inf")])
        (inf, inf, inf)
        >>> median_iqr([None, float("nan")])
        (nan, nan, nan)
    """
    vals, top = _clean(values)
    if vals.size == 0:
        return math.nan, math.nan, math.nan
    had_inf = any(v is not None and math.isinf(float(v)) for v in values)
    q = np.quantile(vals, [0.5, 0.25, 0.75])
    return tuple(_back(float(x), top, had_inf) for x in q)  # type: ignore[return-value]


def bootstrap_ci(values: Sequence[float | None], *, confidence: float = CONFIDENCE,
                 n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median (:func:`scipy.stats.bootstrap`).

    The resamples (``n_resamples``, drawn with ``numpy.random.default_rng(seed)``,
    so the interval is reproducible) are medians of samples of the same size
    drawn with replacement; the interval is their ``(1-c)/2`` and
    ``(1+c)/2`` quantiles. Infinite values as in the module docstring.

    Args:
        values: One value per run (``inf``: failed or missed; NaN/None: left out).
        confidence: The level ``c``.
        n_resamples: Bootstrap resamples.
        seed: Seed of the resampling.

    Returns:
        ``(low, high)``; ``(nan, nan)`` with fewer than two values.

    Example:
        >>> bootstrap_ci([1.0, 2.0])  # medians of resamples: 1, 1.5, 2 (probabilities 1/4, 1/2, 1/4)
        (1.0, 2.0)
        >>> bootstrap_ci([3.0])
        (nan, nan)
    """
    from scipy.stats import bootstrap

    vals, top = _clean(values)
    had_inf = any(v is not None and math.isinf(float(v)) for v in values)
    if vals.size < 2:
        return math.nan, math.nan
    if np.all(vals == vals[0]):  # every resample has this median
        v = _back(float(vals[0]), top, had_inf)
        return v, v
    generator = np.random.default_rng(seed)
    seeding = ({"rng": generator} if "rng" in inspect.signature(bootstrap).parameters
               else {"random_state": generator})  # scipy < 1.15
    res = bootstrap((vals,), np.median, confidence_level=confidence, n_resamples=n_resamples,
                    method="percentile", vectorized=True, **seeding)
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return _back(lo, top, had_inf), _back(hi, top, had_inf)

"""What a run produced: :class:`CurvePoint`, the typed :class:`RunMetrics` and :class:`RunResult`.

The runner (:mod:`curvlab.harness.runner`) fills these records; the store
writes and reads them, and the summaries (:mod:`curvlab.harness.metrics`),
performance profiles (:mod:`curvlab.harness.profiles`) and the tuning
selection of :func:`~curvlab.harness.compare.compare` read them by
attribute. In the store the metrics are one JSON object whose keys are the
field names of :class:`RunMetrics` (see :meth:`RunMetrics.to_dict`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["CurvePoint", "RunMetrics", "RunResult"]


@dataclass
class CurvePoint:
    """One recorded point: ``kind`` is ``"batch"`` (mini-batch loss) or ``"eval"``.

    ``time`` is training time (seconds, evaluation excluded) at ``step``; an
    ``"eval"`` point has the full train ``loss`` and, where the problem has
    them, ``test_loss`` and ``test_acc``. Losses are on the problem's
    reported scale.
    """

    kind: str
    step: int
    time: float
    loss: float
    test_loss: float | None = None
    test_acc: float | None = None


@dataclass(frozen=True)
class RunMetrics:
    """The scalar results of one finished run (losses on the reported scale).

    A field left at its default was not measured (NaN, or ``None`` where
    the quantity does not exist for the problem).

    Attributes:
        steps: Optimizer steps taken.
        train_time: Seconds spent in ``opt.step`` (evaluation excluded).
        step_time: ``train_time / steps``.
        initial_loss: Full train loss before the first step.
        final_loss: Full train loss at the end (``inf`` when diverged).
        best_loss: Lowest full train loss of the evaluations.
        final_test_loss: Test loss at the end (``inf`` when diverged).
        final_test_acc: Test accuracy at the end (classification), else ``None``.
        peak_mem_mb: Peak resident memory of the run's process (CPU) or peak
            allocated CUDA memory, MiB.
        mem_delta_mb: Peak minus the memory before the run started, MiB.
        diverged: The loss became non-finite or exploded.
        optimum: The problem's known optimal loss, if any.
        warnings: Number of warnings the run raised (they are not printed).
        warning_kinds: Their categories, sorted.

    Example:
        >>> m = RunMetrics(steps=3, final_loss=0.5)
        >>> RunMetrics.from_dict(m.to_dict()) == m, math.isnan(m.train_time)
        (True, True)
        >>> RunMetrics.from_dict({"final_los": 0.5})
        Traceback (most recent call last):
        ...
        ValueError: unknown run metric(s) final_los; known: steps, train_time, ...
    """

    steps: int = 0
    train_time: float = math.nan
    step_time: float = math.nan
    initial_loss: float = math.nan
    final_loss: float = math.nan
    best_loss: float = math.nan
    final_test_loss: float = math.nan
    final_test_acc: float | None = None
    peak_mem_mb: float = math.nan
    mem_delta_mb: float = math.nan
    diverged: bool = False
    optimum: float | None = None
    warnings: int = 0
    warning_kinds: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (tuples become lists): the store's JSON object."""
        out = asdict(self)
        out["warning_kinds"] = list(self.warning_kinds)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunMetrics:
        """Inverse of :meth:`to_dict`; missing keys keep their defaults.

        Raises:
            ValueError: a key that is not a field (a record written by
                another program or a newer format).
        """
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown run metric(s) {', '.join(unknown)}; known: {', '.join(known)}")
        values = dict(d)
        if "warning_kinds" in values:
            values["warning_kinds"] = tuple(values["warning_kinds"])
        return cls(**values)


@dataclass
class RunResult:
    """What a run produced.

    Attributes:
        key: The config's hash key.
        status: ``"done"`` or ``"error"`` (``error`` holds the message).
        stop_reason: ``"steps"``, ``"seconds"`` or ``"diverged"``.
        metrics: The :class:`RunMetrics` (``None`` for a failed run).
        stats: The optimizer's ``stats`` counters at the end.
        curve: Recorded points.
        error: ``"ExceptionType: message"`` of a failed run.

    Example:
        >>> r = RunResult("k", "done", "steps", RunMetrics(final_loss=0.5))
        >>> r.ranked_loss, RunResult("k", "error", error="boom").ranked_loss
        (0.5, inf)
    """

    key: str
    status: str
    stop_reason: str = ""
    metrics: RunMetrics | None = None
    stats: dict[str, float] = field(default_factory=dict)
    curve: list[CurvePoint] = field(default_factory=list)
    error: str = ""

    @property
    def failed(self) -> bool:
        """True for an error, a missing record or a divergence."""
        return self.status != "done" or self.metrics is None or self.metrics.diverged

    @property
    def ranked_loss(self) -> float:
        """Final train loss for rankings: ``inf`` when :attr:`failed` or the loss is not finite."""
        if self.failed:
            return math.inf
        loss = float(self.metrics.final_loss)
        return loss if math.isfinite(loss) else math.inf

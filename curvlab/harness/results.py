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

    ``time`` is training time (seconds, evaluation excluded) at ``step``. An
    ``"eval"`` point has the train ``loss`` on the problem's evaluation
    subset (:meth:`Problem.evaluation_subset
    <curvlab.harness.problems.Problem.evaluation_subset>`), the loss
    ``val_loss`` (and accuracy ``val_acc``) on the whole validation set, and,
    on the last point only, ``test_loss`` and ``test_acc`` on the test set.
    Losses are on the problem's reported scale; accuracies count target
    entries (bytes of the text problem), so they lie in ``[0, 1]``.
    """

    kind: str
    step: int
    time: float
    loss: float
    test_loss: float | None = None
    test_acc: float | None = None
    val_loss: float | None = None
    val_acc: float | None = None


@dataclass(frozen=True)
class RunMetrics:
    """The scalar results of one finished run (losses on the reported scale).

    A field left at its default was not measured (NaN, or ``None`` where
    the quantity does not exist for the problem).

    Attributes:
        steps: Optimizer steps taken.
        train_time: Seconds spent in ``opt.step`` (evaluation excluded).
        step_time: ``train_time / steps``.
        initial_loss: Train loss (evaluation subset) before the first step.
        final_loss: Full train loss at the end (``inf`` when diverged).
        best_loss: Lowest train loss (evaluation subset) of the evaluations.
        final_test_loss: Test loss at the end (``inf`` when diverged).
        final_test_acc: Test accuracy at the end (classification), else ``None``.
        final_val_loss: Validation loss at the end (``inf`` when diverged).
        best_val_loss: Lowest validation loss of the evaluations.
        final_val_acc: Validation accuracy at the end (classification), else ``None``.
        eval_size: Training rows of the evaluation subset.
        ref_step_time: Mean wall-clock seconds of the reference step (the
            problem's plain SGD step on a private copy of the model), timed
            interleaved with this run's steps in the same process.
        ref_samples: How many reference steps were timed.
        step_cost: The cost of one step in reference steps, on the cost clock
            (:mod:`curvlab.harness.timing`: the thread's CPU time on the CPU
            with one thread, so robust to a busy machine; else the wall clock).
        step_cost_wall: ``step_time / ref_step_time`` (wall clock).
        cost_clock: The clock of ``step_cost`` (``"thread-cpu"`` or ``"wall"``).
        forward_passes: Forward passes of the model per step (counted).
        backward_passes: Backward passes through the model per step
            (counted): gradient evaluations, extra backward passes of
            sampled losses, Hessian-vector products (SGD: 1).
        resumed_from: Step of the checkpoint the run resumed from (0: none).
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
    final_val_loss: float = math.nan
    best_val_loss: float = math.nan
    final_val_acc: float | None = None
    eval_size: int = 0
    ref_step_time: float = math.nan
    ref_samples: int = 0
    step_cost: float = math.nan
    step_cost_wall: float = math.nan
    cost_clock: str = ""
    forward_passes: float = math.nan
    backward_passes: float = math.nan
    resumed_from: int = 0
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
        status: ``"done"``, ``"error"`` (``error`` holds the message) or
            ``"timeout"`` (stopped after ``--run-timeout`` seconds; ``error``
            says after how long).
        stop_reason: ``"steps"``, ``"seconds"``, ``"diverged"`` or ``"timeout"``.
        metrics: The :class:`RunMetrics` (``None`` for a failed run).
        stats: The optimizer's ``stats`` counters at the end.
        curve: Recorded points.
        error: ``"ExceptionType: message"`` of a failed run.
        provenance: What produced the run (:mod:`curvlab.harness.provenance`).

    Example:
        >>> r = RunResult("k", "done", "steps", RunMetrics(final_loss=0.5, final_val_loss=0.6))
        >>> r.ranked_loss, r.ranked_val_loss, RunResult("k", "error", error="boom").ranked_loss
        (0.5, 0.6, inf)
    """

    key: str
    status: str
    stop_reason: str = ""
    metrics: RunMetrics | None = None
    stats: dict[str, float] = field(default_factory=dict)
    curve: list[CurvePoint] = field(default_factory=list)
    error: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """True for an error, a timeout, a missing record or a divergence."""
        return self.status != "done" or self.metrics is None or self.metrics.diverged

    def _ranked(self, value: float) -> float:
        if self.failed:
            return math.inf
        value = float(value)
        return value if math.isfinite(value) else math.inf

    @property
    def ranked_loss(self) -> float:
        """Final train loss for rankings: ``inf`` when :attr:`failed` or the loss is not finite."""
        return self._ranked(self.metrics.final_loss) if self.metrics is not None else math.inf

    @property
    def ranked_val_loss(self) -> float:
        """Final validation loss for rankings and selection (``inf`` when failed or not finite)."""
        return self._ranked(self.metrics.final_val_loss) if self.metrics is not None else math.inf

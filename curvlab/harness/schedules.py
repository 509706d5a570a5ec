r"""Learning-rate schedules of a run, built on :class:`torch.optim.lr_scheduler.LambdaLR`.

A schedule multiplies every param group's ``lr`` by a factor :math:`f(t)` at
step :math:`t = 0, 1, \dots, T-1` of a run with a budget of :math:`T` steps
and a warm-up of :math:`w = \mathrm{round}(\text{warmup} \cdot T)` steps:

``constant``
    :math:`f(t) = 1`.
``cosine``
    :math:`f(t) = \tfrac12 \bigl(1 + \cos(\pi t / T)\bigr)` (``CosineAnnealingLR``
    with ``T_max = T``, ``eta_min = 0``).
``warmup-cosine``
    :math:`f(t) = (t + 1)/(w + 1)` for :math:`t < w`, then
    :math:`\tfrac12 \bigl(1 + \cos(\pi (t - w) / (T - w))\bigr)`; the warm-up
    fraction defaults to 0.05 (AlgoPerf's ``warmup_factor``).
``linear-decay``
    the same warm-up (default none), then :math:`f(t) = 1 - (t - w)/(T - w)`,
    which reaches :math:`1/(T - w)` at the last step.

The scheduler is stepped once after every optimizer step (outside the timed
region), so step :math:`t` uses :math:`f(t)`. A schedule needs the step
budget :math:`T`: with a seconds-only budget the length of the schedule is
unknown, so anything but ``constant`` is refused (:func:`check_schedule`).
Schedules act on ``group["lr"]``, which every curvlab optimizer reads at each
step (see :doc:`/guide/schedulers`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = ["DEFAULT_WARMUP", "SCHEDULES", "WARMUP_SCHEDULES", "build_scheduler", "check_schedule",
           "lr_factor", "resolve_warmup"]

SCHEDULES = ("constant", "cosine", "warmup-cosine", "linear-decay")
#: Schedules that take a warm-up fraction.
WARMUP_SCHEDULES = ("warmup-cosine", "linear-decay")
#: Warm-up fraction when none is given.
DEFAULT_WARMUP = {"constant": 0.0, "cosine": 0.0, "warmup-cosine": 0.05, "linear-decay": 0.0}


def check_schedule(schedule: str, warmup: float | None, steps: int | None) -> None:
    """Refuse a schedule that cannot be honoured.

    Raises:
        ValueError: unknown schedule; a warm-up for a schedule without one; a
            schedule other than ``constant`` without a step budget.

    Example:
        >>> check_schedule("cosine", None, None)
        Traceback (most recent call last):
        ...
        ValueError: schedule 'cosine' needs a step budget (steps): its length is the number of steps, unknown with a seconds-only budget
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if warmup and schedule not in WARMUP_SCHEDULES:
        raise ValueError(f"warmup applies to the schedules {WARMUP_SCHEDULES}, not to "
                         f"{schedule!r} (got warmup={warmup!r})")
    if schedule != "constant" and steps is None:
        raise ValueError(f"schedule {schedule!r} needs a step budget (steps): its length is the "
                         "number of steps, unknown with a seconds-only budget")


def resolve_warmup(schedule: str, warmup: float | None) -> float:
    """The warm-up fraction in effect (:data:`DEFAULT_WARMUP` when ``warmup`` is ``None``).

    Example:
        >>> resolve_warmup("warmup-cosine", None), resolve_warmup("linear-decay", 0.1)
        (0.05, 0.1)
    """
    return DEFAULT_WARMUP[schedule] if warmup is None else float(warmup)


def lr_factor(schedule: str, warmup: float, steps: int) -> Callable[[int], float]:
    """The factor :math:`f(t)` of the module docstring for a budget of ``steps`` steps.

    Example:
        >>> f = lr_factor("warmup-cosine", 0.1, 100)
        >>> round(f(0), 4), round(f(9), 4), f(10), round(f(55), 4)
        (0.0909, 0.9091, 1.0, 0.5)
        >>> round(lr_factor("linear-decay", 0.0, 4)(3), 4)
        0.25
    """
    check_schedule(schedule, warmup, steps)
    if schedule == "constant":
        return lambda t: 1.0
    w = round(warmup * steps) if schedule in WARMUP_SCHEDULES else 0
    w = min(w, steps - 1)
    rest = steps - w

    def factor(t: int) -> float:
        if t < w:
            return (t + 1) / (w + 1)
        s = min(t - w, rest)
        if schedule == "linear-decay":
            return 1.0 - s / rest
        return 0.5 * (1.0 + math.cos(math.pi * s / rest))

    return factor


def build_scheduler(optimizer: Any, schedule: str, warmup: float, steps: int | None) -> Any:
    """A :class:`~torch.optim.lr_scheduler.LambdaLR` for ``optimizer``, or ``None`` for ``constant``.

    Args:
        optimizer: The run's optimizer (a :class:`torch.optim.Optimizer`).
        schedule: One of :data:`SCHEDULES`.
        warmup: Warm-up fraction in ``[0, 1)`` (see :func:`resolve_warmup`).
        steps: The run's step budget.

    Returns:
        The scheduler (step it once after every optimizer step), or ``None``.

    Raises:
        ValueError: see :func:`check_schedule`.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
        >>> sched = build_scheduler(opt, "cosine", 0.0, 4)
        >>> lrs = []
        >>> for _ in range(4):
        ...     lrs.append(round(opt.param_groups[0]["lr"], 4)); opt.step(); sched.step()
        >>> lrs
        [1.0, 0.8536, 0.5, 0.1464]
    """
    check_schedule(schedule, warmup, steps)
    if schedule == "constant":
        return None
    from torch.optim.lr_scheduler import LambdaLR

    assert steps is not None  # check_schedule refused None
    return LambdaLR(optimizer, lr_factor(schedule, warmup, steps))

r"""Quasi-random tuning trials from the search spaces declared in the schemas.

The external-tuning ruleset (``--ruleset tuned``) gives every optimizer the
same budget: ``trials`` configurations per study, drawn from its declared
search space (:attr:`HParam.space <curvlab.hparams.HParam>`), as AlgoPerf
does (quasi-random search, Bousquet et al. 2017). The draws come from one
scrambled quasi-random sequence of :mod:`scipy.stats.qmc` (``Halton`` or
``Sobol``) of dimension :data:`QMC_DIMENSIONS`, seeded with
``(tuning_seed, study)``:

.. math::

    u_i \in [0, 1)^{D}, \quad i = 0, \dots, n-1,

and an optimizer whose tuned hyper-parameters consume ``d`` coordinates
(in schema order; a tuple space consumes one per non-fixed entry) maps the
first ``d`` coordinates of the *same* points through its spaces
(:meth:`HParam.draw <curvlab.hparams.HParam.draw>`). Every optimizer therefore
gets exactly ``n`` trials, placed by the same low-discrepancy points, and a
trial's configuration does not depend on which other optimizers are
compared (so tuning runs are reused across comparisons). With
``tune_schedule`` the last two coordinates pick the schedule and its warm-up
fraction (:data:`SCHEDULE_SPACE`), so trial ``i`` has the same schedule for
every optimizer. Studies use independent scrambles: ``K`` studies are ``K``
independent searches of ``n`` trials each.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

import curvlab
from curvlab.harness.schedules import SCHEDULES, WARMUP_SCHEDULES
from curvlab.harness.settings import SAMPLERS
from curvlab.hparams import Choice, HParam, Uniform

__all__ = ["QMC_DIMENSIONS", "SCHEDULE_SPACE", "Trial", "describe_space", "trials", "tunable",
           "unit_points"]

#: Dimension of the quasi-random sequence (an optimizer uses its first coordinates; the
#: last two are reserved for the schedule).
QMC_DIMENSIONS = 16
#: The schedule's search space with ``tune_schedule``: the kind, and the warm-up fraction
#: (used by the schedules with a warm-up).
SCHEDULE_SPACE = {"schedule": Choice(SCHEDULES), "warmup": Uniform(0.0, 0.2)}


@dataclass(frozen=True)
class Trial:
    """One tuning configuration.

    Attributes:
        index: Position in the study's sequence.
        hparams: The drawn hyper-parameter values (only the tuned ones).
        options: Drawn run options (``schedule``, ``warmup``) with
            ``tune_schedule``, else empty.
    """

    index: int
    hparams: dict[str, Any]
    options: dict[str, Any]


def unit_points(n: int, *, seed: int, study: int = 0, sampler: str = "halton",
                dims: int = QMC_DIMENSIONS) -> np.ndarray:
    """``n`` points of a scrambled quasi-random sequence in ``[0, 1)^dims``.

    Args:
        n: Number of points.
        seed: The tuning seed.
        study: The study index (an independent scramble per study).
        sampler: ``"halton"`` or ``"sobol"`` (:data:`~curvlab.harness.settings.SAMPLERS`).
        dims: Dimension of the sequence.

    Returns:
        An ``(n, dims)`` float64 array, the same for the same arguments.

    Raises:
        ValueError: unknown sampler, ``n < 1``.

    Example:
        >>> a = unit_points(8, seed=0)
        >>> a.shape, bool((a >= 0).all() and (a < 1).all()), (a == unit_points(8, seed=0)).all()
        ((8, 16), True, np.True_)
    """
    from scipy.stats import qmc

    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if n < 1:
        raise ValueError(f"trials must be >= 1, got {n}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(study)]))
    engine = (qmc.Halton if sampler == "halton" else qmc.Sobol)(d=dims, scramble=True, seed=rng)
    with warnings.catch_warnings():  # Sobol's balance warning for n not a power of 2
        warnings.simplefilter("ignore", UserWarning)
        return engine.random(n)


def tunable(optimizer: str, fixed: Collection[str] = (),
            only: Collection[str] | None = None) -> list[HParam]:
    """The hyper-parameters of ``optimizer`` that are tuned: a declared space, not fixed.

    Args:
        optimizer: The optimizer's name.
        fixed: Names the user fixed (never tuned).
        only: Tune just these names (``--retune``); each must declare a space.

    Raises:
        ValueError: a name in ``only`` is unknown or declares no space.

    Example:
        >>> [p.name for p in tunable("kfac")]
        ['lr', 'damping']
        >>> [p.name for p in tunable("kfac", fixed=["damping"])]
        ['lr']
    """
    schema = curvlab.info(optimizer).schema
    if only is not None:
        for name in only:
            if name not in schema:
                schema.validate({name: None})  # raises: unknown, close match, allowed names
            if schema[name].search_space is None:
                spaced = [p.name for p in schema if p.search_space is not None]
                raise ValueError(f"{optimizer}.{name} declares no search space, so it cannot be "
                                 f"tuned; tunable: {', '.join(spaced) or 'none'}")
    return [p for p in schema if p.search_space is not None and p.name not in fixed
            and (only is None or p.name in only)]


def trials(optimizer: str, n: int, *, seed: int, study: int = 0, sampler: str = "halton",
           fixed: Collection[str] = (), only: Collection[str] | None = None,
           tune_schedule: bool = False) -> list[Trial]:
    """The ``n`` trials of ``optimizer`` in study ``study`` (see the module docstring).

    Args:
        optimizer: The optimizer's name.
        n: Trials per study.
        seed: The tuning seed.
        study: The study index.
        sampler: ``"halton"`` or ``"sobol"``.
        fixed: Hyper-parameters the user fixed (not tuned).
        only: Tune only these (``--retune``).
        tune_schedule: Also draw the schedule and warm-up.

    Returns:
        ``n`` :class:`Trial` objects (an optimizer with nothing to tune and
        no schedule tuning gets none).

    Example:
        >>> ts = trials("kfac", 4, seed=0)
        >>> len(ts), sorted(ts[0].hparams)
        (4, ['damping', 'lr'])
        >>> all(1e-3 <= t.hparams["lr"] <= 1.0 for t in ts)
        True
    """
    params = tunable(optimizer, fixed, only)
    need = sum(p.search_space.dims for p in params)
    if not params and not tune_schedule:
        return []
    dims = max(QMC_DIMENSIONS, need + 2)
    u = unit_points(n, seed=seed, study=study, sampler=sampler, dims=dims)
    out = []
    for i in range(n):
        hp: dict[str, Any] = {}
        col = 0
        for p in params:
            k = p.search_space.dims
            hp[p.name] = p.draw(u[i, col : col + k].tolist())
            col += k
        options: dict[str, Any] = {}
        if tune_schedule:
            schedule = SCHEDULE_SPACE["schedule"].value([u[i, dims - 2]])
            warmup = SCHEDULE_SPACE["warmup"].value([u[i, dims - 1]])
            options = {"schedule": schedule,
                       "warmup": warmup if schedule in WARMUP_SCHEDULES else 0.0}
        out.append(Trial(i, hp, options))
    return out


def describe_space(optimizer: str, fixed: Mapping[str, Any] | Collection[str] = ()) -> dict[str, str]:
    """``name → space text`` of the tuned hyper-parameters (for reports).

    Example:
        >>> describe_space("sgd")
        {'lr': 'log-uniform [0.001, 1]'}
    """
    return {p.name: p.search_space.text for p in tunable(optimizer, fixed)}

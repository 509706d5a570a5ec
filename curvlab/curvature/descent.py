r"""The guarded descent step :math:`\theta \leftarrow \theta - \alpha\, s`: finite, or nothing changes.

Every backend that ends its step with a linear update (SGD and its
momentum, K-FAC, FOOF, K-BFGS) applies it through :func:`descend_`. For
parameters :math:`\theta_i` with steps :math:`s_i` and step sizes
:math:`\alpha_i`, every entry of the result obeys
:math:`|\theta - \alpha s| \le \|\theta\|_2 + |\alpha|\,\|s\|_2`. When that bound
is finite and below the dtype's largest value for every parameter (one
fused norm computation, one sync), the step is applied in place with
``torch._foreach_add_(θ, s, alpha=-α)``, the arithmetic of torch's
optimizers. Otherwise (a huge ``lr``, an exploding direction, a NaN) the
candidates :math:`\theta - \alpha s` are computed out of place, checked
exactly with :func:`~curvlab.curvature.finite.all_finite`, and copied into
the parameters only if every one is finite. So an overflow never writes
``inf`` into the weights: the caller reports a skipped step and keeps its
state. A step size beyond the dtype's range (which ``alpha=`` cannot
represent) is applied as a saturating product ``s · α``, so it overflows to
``inf`` (and is refused) instead of raising.

A step with parts computed by different rules (K-FAC's preconditioned
directions and the fallback's Adam steps for the parameters no block
covers, :mod:`~curvlab.curvature.fallback`) is a list of
:class:`PlannedStep`: each part brings its parameters, steps and step sizes
plus the state it would commit (momentum buffers, Adam moments);
:func:`descend_all_` applies all parts through one :func:`descend_` and
commits every part's state only if the whole step was applied.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from curvlab.curvature.finite import all_finite

_MAX = {dt: torch.finfo(dt).max for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}

__all__ = ["PlannedStep", "descend_", "descend_all_", "descent_candidates"]


@dataclass
class PlannedStep:
    r"""One part of a descent step :math:`\theta \leftarrow \theta - \alpha s`, not applied yet.

    Attributes:
        params: Parameters :math:`\theta`.
        steps: Their steps :math:`s` (new tensors; nothing was modified yet).
        lrs: Their step sizes :math:`\alpha`.
        commit: Called after the whole step was applied (stores the state
            the part computed: momentum buffers, moments); ``None``: nothing.
        state: Tensors ``commit`` would store that must be finite too (e.g.
            Adam's second moments, which can overflow while the step does not).

    Example:
        >>> p = torch.ones(2)
        >>> part = PlannedStep([p], [torch.ones(2)], [0.5])
        >>> descend_all_([part]), p
        (True, tensor([0.5000, 0.5000]))
    """

    params: list[Tensor] = field(default_factory=list)
    steps: list[Tensor] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    commit: Callable[[], None] | None = None
    state: list[Tensor] = field(default_factory=list)


def _dense(t: Tensor) -> bool:
    return t.layout == torch.strided


def _max(dtype: torch.dtype) -> float:
    return _MAX.get(dtype) or torch.finfo(dtype).max


def descent_candidates(
    params: Sequence[Tensor], steps: Sequence[Tensor], lrs: Sequence[float]
) -> list[Tensor]:
    r"""The candidates :math:`\theta - \alpha s`, out of place (nothing is modified).

    Args:
        params: Parameters :math:`\theta` (dense).
        steps: Steps :math:`s`, one per parameter (dense or sparse, same shape).
        lrs: Step sizes :math:`\alpha`, one per parameter.

    Returns:
        New dense tensors, one per parameter.

    Example:
        >>> descent_candidates([torch.ones(2)], [torch.tensor([1.0, 2.0])], [0.5])
        [tensor([0.5000, 0.0000])]
    """
    out: list[Tensor | None] = [None] * len(params)
    by_lr: dict[float, list[int]] = {}
    for i, lr in enumerate(lrs):
        by_lr.setdefault(float(lr), []).append(i)
    for lr, idx in by_lr.items():
        dense = [i for i in idx if _dense(steps[i])]
        ps, ss = [params[i] for i in dense], [steps[i] for i in dense]
        if ps:
            representable = all(abs(lr) <= _max(p.dtype) for p in ps)
            if representable:
                new = torch._foreach_add(ps, ss, alpha=-lr)
            else:  # alpha= cannot hold the value: a saturating product overflows to inf
                new = torch._foreach_add(ps, torch._foreach_mul(ss, -lr))
            for i, c in zip(dense, new):
                out[i] = c
        for i in idx:
            if out[i] is None:  # sparse step: dense + sparse gives a dense candidate
                p, s = params[i], steps[i]
                out[i] = (torch.add(p, s, alpha=-lr) if abs(lr) <= _max(p.dtype)
                          else p + s * (-lr))
    return out  # type: ignore[return-value]


@torch.no_grad()
def descend_(params: Sequence[Tensor], steps: Sequence[Tensor], lrs: Sequence[float]) -> bool:
    r""":math:`\theta \leftarrow \theta - \alpha s` for every parameter, if every result is finite.

    Args:
        params: Parameters :math:`\theta`, updated in place.
        steps: Steps :math:`s` (dense or sparse), one per parameter.
        lrs: Step sizes :math:`\alpha`, one per parameter.

    Returns:
        ``True`` when the step was applied; ``False`` when a result would be
        NaN/Inf (then no parameter changed).

    Example:
        >>> p = torch.ones(2)
        >>> descend_([p], [torch.tensor([1.0, 2.0])], [0.5]), p
        (True, tensor([0.5000, 0.0000]))
        >>> descend_([p], [torch.tensor([1.0, 2.0])], [1e39]), p   # overflow: refused
        (False, tensor([0.5000, 0.0000]))
    """
    if not params:
        return True
    if _safe_in_place(params, steps, lrs):
        by_lr: dict[float, tuple[list[Tensor], list[Tensor]]] = {}
        for p, s, lr in zip(params, steps, lrs):
            ps, ss = by_lr.setdefault(float(lr), ([], []))
            ps.append(p)
            ss.append(s)
        for lr, (ps, ss) in by_lr.items():
            if all(_dense(s) for s in ss):
                torch._foreach_add_(ps, ss, alpha=-lr)
            else:
                for p, s in zip(ps, ss):
                    p.add_(s, alpha=-lr)
        return True
    candidates = descent_candidates(params, steps, lrs)
    if not all_finite(candidates):
        return False
    torch._foreach_copy_(list(params), candidates)
    return True


def _safe_in_place(params: Sequence[Tensor], steps: Sequence[Tensor], lrs: Sequence[float]) -> bool:
    """Whether ``‖θ‖ + |α|‖s‖`` is finite and representable for every parameter (one sync)."""
    if not all(_dense(s) for s in steps) or len({p.device for p in params}) > 1:
        return False
    norms = torch.stack(torch._foreach_norm([*params, *steps], 2)).tolist()
    n = len(params)
    for p, lr, np_, ns in zip(params, lrs, norms[:n], norms[n:]):
        top = _max(p.dtype)
        if not (abs(lr) <= top and np_ + abs(lr) * ns < top):  # NaN fails the comparison too
            return False
    return True


def descend_all_(parts: Sequence[PlannedStep]) -> bool:
    """Apply every part through one guarded :func:`descend_`; commit the parts' state only then.

    Args:
        parts: The parts of the step (parameters must not repeat across parts).

    Returns:
        ``True`` when the step was applied and every ``commit`` ran;
        ``False`` when a result or a part's ``state`` would be NaN/Inf
        (nothing changed, nothing committed).

    Example:
        >>> p, q, log = torch.ones(1), torch.ones(1), []
        >>> parts = [PlannedStep([p], [torch.ones(1)], [1.0], lambda: log.append("a")),
        ...          PlannedStep([q], [torch.ones(1)], [1e39], lambda: log.append("b"))]
        >>> descend_all_(parts), p, log            # q would overflow: nothing happens
        (False, tensor([1.]), [])
    """
    params = [p for part in parts for p in part.params]
    steps = [s for part in parts for s in part.steps]
    lrs = [lr for part in parts for lr in part.lrs]
    state = [t for part in parts for t in part.state]
    if state and not all_finite(state):
        return False
    if not descend_(params, steps, lrs):
        return False
    for part in parts:
        if part.commit is not None:
            part.commit()
    return True

r"""torch SGD's rule: weight decay, heavy-ball momentum with dampening, Nesterov.

For each parameter :math:`\theta` with direction :math:`v` (the gradient,
or a preconditioned gradient), momentum :math:`\mu`, dampening
:math:`\tau` and weight decay :math:`w`:

.. math::

    d = v + w\,\theta, \qquad
    b \leftarrow \mu b + (1-\tau)\, d \;\; (b_1 = d), \qquad
    s = \begin{cases} d + \mu b & \text{Nesterov} \\ b & \text{otherwise} \end{cases}

and with :math:`\mu = 0` no buffer, :math:`s = d` (exactly
:class:`torch.optim.SGD`; the decay of a preconditioned direction is added
after preconditioning, as common K-FAC code does by handing the
preconditioned gradient to SGD). :func:`heavy_ball` computes :math:`s` and
the new buffers *out of place*, with ``torch._foreach_*`` ops per list and
the same per-element arithmetic as torch's SGD, so a caller can still
abandon the step; :func:`momentum_step_` applies the rule to an optimizer's
param groups through the guarded :func:`~curvlab.curvature.descent.descend_`
(:math:`\theta \leftarrow \theta - \alpha s`, all or nothing) and commits
the buffers, kept in ``optimizer.state[p]["momentum_buffer"]``, only then.
Sparse directions (``nn.Embedding(sparse=True)``) follow torch's SGD
(sparse buffers; weight decay on them is refused, as torch does).

Users: the ``sgd`` baseline, K-FAC and FOOF (:func:`momentum_step_`),
GroupedNewton's ``"sgd-momentum"`` direction (:func:`heavy_ball`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch
from torch import Tensor

from curvlab.curvature.descent import PlannedStep, descend_all_

__all__ = ["heavy_ball", "momentum_plan", "momentum_step_"]


def _dense(ts: Sequence[Tensor]) -> bool:
    return all(t.layout == torch.strided for t in ts)


def _add(a: list[Tensor], b: list[Tensor], alpha: float) -> list[Tensor]:
    """``a + alpha · b`` out of place (foreach when dense, else per tensor)."""
    if _dense(a) and _dense(b):
        return list(torch._foreach_add(a, b, alpha=alpha))
    return [x.add(y, alpha=alpha) for x, y in zip(a, b)]


def heavy_ball(
    directions: Sequence[Tensor],
    params: Sequence[Tensor],
    buffers: Sequence[Tensor | None],
    *,
    momentum: float,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> tuple[list[Tensor], list[Tensor | None]]:
    r"""Steps :math:`s` and new buffers of torch SGD's rule (module docstring), out of place.

    Args:
        directions: :math:`v` per parameter (not modified).
        params: :math:`\theta` per parameter (for weight decay).
        buffers: Current momentum buffers (``None``: first step); not modified.
        momentum: :math:`\mu \ge 0` (0: no buffer).
        dampening: :math:`\tau`.
        nesterov: Nesterov's variant.
        weight_decay: :math:`w`.

    Returns:
        ``(steps, new_buffers)``; ``new_buffers`` are ``None`` when :math:`\mu = 0`.

    Raises:
        ValueError: weight decay on a sparse direction (torch's SGD cannot either).

    Example:
        >>> p, g = torch.zeros(2), torch.tensor([1.0, 2.0])
        >>> s, b = heavy_ball([g], [p], [None], momentum=0.9)
        >>> s, b = heavy_ball([g], [p], b, momentum=0.9, dampening=0.5)
        >>> s[0].tolist()   # 0.9 g + 0.5 g
        [1.399999976158142, 2.799999952316284]
    """
    d = list(directions)
    if weight_decay != 0:
        if not _dense(d):
            raise ValueError(
                "weight_decay must be 0 for parameters with sparse gradients (as in torch.optim.SGD)"
            )
        d = _add(d, list(params), weight_decay)
    if momentum == 0:
        return d, [None] * len(d)
    new: list[Tensor | None] = [None] * len(d)
    old = [i for i, b in enumerate(buffers) if b is not None]
    for i, b in enumerate(buffers):
        if b is None:
            new[i] = torch.clone(d[i]).detach()
    if old:
        bufs, ds = [buffers[i] for i in old], [d[i] for i in old]
        if _dense(bufs) and _dense(ds):
            scaled = torch._foreach_mul(bufs, momentum)  # type: ignore[arg-type]
            torch._foreach_add_(scaled, ds, alpha=1 - dampening)
        else:
            scaled = [b.mul(momentum).add_(x, alpha=1 - dampening) for b, x in zip(bufs, ds)]  # type: ignore[union-attr]
        for i, b in zip(old, scaled):
            new[i] = b
    steps = _add(d, new, momentum) if nesterov else list(new)  # type: ignore[arg-type]
    return steps, new


@torch.no_grad()
def momentum_plan(
    optimizer: torch.optim.Optimizer,
    directions: Mapping[Tensor, Tensor],
    *,
    params: Collection[Tensor] | None = None,
    lrs: Mapping[Tensor, float] | None = None,
) -> PlannedStep:
    r"""PyTorch SGD's rule for the parameters with a gradient, as a :class:`~curvlab.curvature.descent.PlannedStep`.

    Reads ``lr``, ``momentum`` and ``weight_decay`` (and, where declared,
    ``dampening`` and ``nesterov``) from each param group. Nothing is
    modified; the new momentum buffers are stored by the part's ``commit``.

    Args:
        optimizer: The optimizer whose ``param_groups`` and ``state`` are used.
        directions: ``{param: v}``; parameters missing from it use ``p.grad``.
        params: Only these parameters (default: every parameter with a gradient).
        lrs: Step sizes overriding the group's ``lr`` for some parameters.

    Example:
        >>> p = torch.nn.Parameter(torch.ones(2))
        >>> opt = torch.optim.SGD([p], lr=0.5, momentum=0.0, weight_decay=0.0)
        >>> p.grad = torch.ones(2)
        >>> part = momentum_plan(opt, {}, lrs={p: 0.25})
        >>> part.lrs, part.steps
        ([0.25], [tensor([1., 1.])])
    """
    out = PlannedStep()
    commits = []
    keep = None if params is None else {id(p) for p in params}
    for group in optimizer.param_groups:
        ps = [p for p in group["params"] if p.grad is not None and (keep is None or id(p) in keep)]
        if not ps:
            continue
        bufs = [optimizer.state[p].get("momentum_buffer") for p in ps]
        s, new = heavy_ball(
            [directions.get(p, p.grad) for p in ps], ps, bufs,
            momentum=group["momentum"], dampening=group.get("dampening", 0.0),
            nesterov=group.get("nesterov", False), weight_decay=group["weight_decay"],
        )
        out.params += ps
        out.steps += s
        out.lrs += [group["lr"] if lrs is None else lrs.get(p, group["lr"]) for p in ps]
        commits += [(p, b) for p, b in zip(ps, new) if b is not None]

    def commit() -> None:
        for p, b in commits:
            optimizer.state[p]["momentum_buffer"] = b

    out.commit = commit
    return out


@torch.no_grad()
def momentum_step_(optimizer: torch.optim.Optimizer, directions: Mapping[Tensor, Tensor]) -> bool:
    r"""Apply torch SGD's rule to every parameter with a gradient; all or nothing.

    :func:`momentum_plan` applied through :func:`~curvlab.curvature.descent.descend_all_`:
    the parameters and momentum buffers change only if every new parameter is finite.

    Args:
        optimizer: The optimizer whose ``param_groups`` and ``state`` are used.
        directions: ``{param: v}``; parameters missing from it use ``p.grad``.

    Returns:
        ``True`` if the step was applied, ``False`` if it would write NaN/Inf
        (nothing changed; the caller skips the step).

    Example:
        >>> p = torch.nn.Parameter(torch.ones(2))
        >>> opt = torch.optim.SGD([p], lr=0.5, momentum=0.0, weight_decay=0.0)
        >>> p.grad = torch.ones(2)
        >>> momentum_step_(opt, {p: torch.full((2,), 2.0)}), p.data
        (True, tensor([0., 0.]))
    """
    return descend_all_([momentum_plan(optimizer, directions)])

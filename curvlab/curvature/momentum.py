r"""Apply search directions with heavy-ball momentum and weight decay (torch SGD's rule).

For each parameter :math:`\theta` with direction :math:`v` (a
preconditioned gradient, or the raw gradient for parameters no curvature
block covers), learning rate :math:`\alpha`, momentum :math:`\mu` and
weight decay :math:`w`:

.. math::

    d = v + w\,\theta, \qquad b \leftarrow \mu b + d \;(b_1 = d), \qquad
    \theta \leftarrow \theta - \alpha\, b

(the decay is added after preconditioning, as common K-FAC code does by
handing the preconditioned gradient to SGD). The buffer lives in
``optimizer.state[p]["momentum_buffer"]``. Each group is updated with
``torch._foreach_*`` ops (one call per operation for all its parameters,
as torch's SGD with ``foreach=True``), with the same arithmetic per element.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["momentum_step_"]


@torch.no_grad()
def momentum_step_(optimizer: torch.optim.Optimizer, directions: Mapping[Tensor, Tensor]) -> None:
    """Update every parameter with a gradient in place (see the module docstring).

    Reads ``lr``, ``momentum`` and ``weight_decay`` from each param group.

    Args:
        optimizer: The optimizer whose ``param_groups`` and ``state`` are used.
        directions: ``{param: v}``; parameters missing from it use ``p.grad``.

    Example:
        >>> p = torch.nn.Parameter(torch.ones(2))
        >>> opt = torch.optim.SGD([p], lr=0.5, momentum=0.0, weight_decay=0.0)
        >>> p.grad = torch.ones(2)
        >>> momentum_step_(opt, {p: torch.full((2,), 2.0)})
        >>> p.data
        tensor([0., 0.])
    """
    for group in optimizer.param_groups:
        lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        steps = [directions.get(p, p.grad) for p in params]
        if wd != 0:
            steps = torch._foreach_add(steps, params, alpha=wd)
        if mu != 0:
            bufs = []
            old, new = [], []
            for p, d in zip(params, steps):
                state = optimizer.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = d.detach().clone()
                else:
                    old.append(buf)
                    new.append(d)
                bufs.append(buf)
            if old:
                torch._foreach_mul_(old, mu)
                torch._foreach_add_(old, new)
            steps = bufs
        torch._foreach_add_(params, steps, alpha=-lr)

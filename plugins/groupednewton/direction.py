r"""First-order directions u along which GroupedNewton chooses its step sizes.

Each direction is a first-order update with learning rate 1 (the step
sizes η scale it per subset). For gradient :math:`g_t`:

``"sgd-momentum"`` (default, momentum μ = 0.9, dampening τ = 0.9)
    :math:`b_1 = g_1`, :math:`b_t = \mu b_{t-1} + (1 - \tau) g_t`, :math:`u_t = b_t`
    (torch's SGD buffer, :func:`curvlab.curvature.momentum.heavy_ball`; with
    μ = 0 there is no buffer and :math:`u_t = g_t`).
``"adam"`` (β₁ = ``momentum``, β₂ = ``beta2``, ε = 1e-8)
    :math:`m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t`,
    :math:`v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2`,
    :math:`u_t = \hat m_t / (\sqrt{\hat v_t} + \varepsilon)` with bias correction.
``"gradient"``
    :math:`u_t = g_t`.

SGD momentum and the plain gradient are linear in the gradients, so a
per-subset rescaling :math:`\theta_s = a_s \theta'_s` maps :math:`u_s` to
:math:`a_s u_s` and the method's trajectory is invariant; Adam's direction
is not linear in g (the invariance does not hold for it).

Everything is out of place: :func:`direction_step` returns the direction
and the new state and changes nothing, so a step can still be abandoned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from curvlab.curvature.momentum import heavy_ball

__all__ = ["ADAM_EPS", "DIRECTIONS", "direction_step"]

DIRECTIONS = ("sgd-momentum", "adam", "gradient")
#: Adam's ε (fixed; only Adam uses it).
ADAM_EPS = 1e-8


def direction_step(
    kind: str,
    grads: Sequence[Tensor | None],
    states: Sequence[Mapping[str, Tensor]],
    *,
    momentum: float,
    dampening: float,
    beta2: float,
    step: int,
) -> tuple[list[Tensor | None], list[dict[str, Tensor]]]:
    """One direction update per parameter (see the module docstring).

    Args:
        kind: One of :data:`DIRECTIONS`.
        grads: Gradient of each parameter (``None``: no gradient, u = None, state kept).
        states: Current per-parameter state (``momentum_buffer`` or
            ``exp_avg``/``exp_avg_sq``); empty dicts at the start.
        momentum: μ (SGD) or β₁ (Adam).
        dampening: τ (SGD only).
        beta2: β₂ (Adam only).
        step: Index t ≥ 1 of this update (Adam's bias correction).

    Returns:
        ``(directions, new_states)``; inputs are not modified.

    Raises:
        ValueError: unknown ``kind``.

    Example:
        >>> g = [torch.tensor([1.0, 2.0])]
        >>> u, st = direction_step("sgd-momentum", g, [{}], momentum=0.9, dampening=0.9,
        ...                        beta2=0.999, step=1)
        >>> u, st = direction_step("sgd-momentum", g, st, momentum=0.9, dampening=0.9,
        ...                        beta2=0.999, step=2)
        >>> u[0].tolist()   # 0.9 * g + 0.1 * g
        [1.0, 2.0]
    """
    if kind not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {kind!r}")
    dirs: list[Tensor | None] = [None] * len(grads)
    new: list[dict[str, Any]] = [dict(st) for st in states]
    have = [i for i, g in enumerate(grads) if g is not None]
    if kind == "sgd-momentum" and have:
        gs = [grads[i].detach() for i in have]  # type: ignore[union-attr]
        steps, bufs = heavy_ball(gs, gs, [new[i].get("momentum_buffer") for i in have],
                                 momentum=momentum, dampening=dampening)
        for i, u, b in zip(have, steps, bufs):
            dirs[i] = u if b is not None else u.clone()
            if b is not None:
                new[i]["momentum_buffer"] = b
        return dirs, new
    for i in have:
        g = grads[i].detach()  # type: ignore[union-attr]
        st = new[i]
        if kind == "gradient":
            u = g.clone()
        else:
            m = st.get("exp_avg", torch.zeros_like(g)) * momentum + g * (1.0 - momentum)
            v = st.get("exp_avg_sq", torch.zeros_like(g)) * beta2 + g * g * (1.0 - beta2)
            st["exp_avg"], st["exp_avg_sq"] = m, v
            mhat = m / (1.0 - momentum**step)
            vhat = v / (1.0 - beta2**step)
            u = mhat / (vhat.sqrt() + ADAM_EPS)
        dirs[i] = u
    return dirs, new

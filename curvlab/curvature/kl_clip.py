r"""KL-clipping: rescale a preconditioned step so its predicted change stays bounded.

With :math:`v_l` the preconditioned gradient of block :math:`l`,
:math:`g_l` its gradient and :math:`\alpha` the learning rate, the
quadratic model predicts the step :math:`-\alpha v` to change the output
distribution by about :math:`\alpha^2 \sum_l \langle v_l, g_l \rangle`
(since :math:`v = F^{-1} g`, :math:`\alpha^2 v^\top F v = \alpha^2
\langle v, g\rangle`). Every :math:`v_l` is multiplied by

.. math::

    \nu = \min\Big(1, \sqrt{\frac{\kappa}{\alpha^2 \sum_l \langle v_l, g_l\rangle}}\Big)

(Ba, Grosse & Martens 2017; the rule used by common PyTorch K-FAC code).

:func:`inner_products` computes the :math:`\langle v_l, g_l\rangle` with one
device synchronisation; it doubles as a cheap NaN guard on the directions
(with finite :math:`g`, a non-finite entry of any :math:`v_l` makes its
inner product non-finite, since :math:`\pm\infty \cdot 0` is NaN).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

__all__ = ["inner_products", "kl_clip_factor", "kl_clip_scale"]


def inner_products(directions: Sequence[Tensor], grads: Sequence[Tensor]) -> list[float]:
    r""":math:`\langle v_l, g_l \rangle` for every pair, in float64, with a single device sync.

    Args:
        directions: Preconditioned gradients :math:`v_l`.
        grads: Gradients :math:`g_l`, same shapes, same order.

    Returns:
        One Python float per pair (``nan``/``inf`` when a :math:`v_l` is not finite).

    Example:
        >>> import torch
        >>> inner_products([torch.tensor([2.0, 0.0]), torch.ones(2)], [torch.tensor([2.0, 1.0]), torch.ones(2)])
        [4.0, 2.0]
        >>> inner_products([torch.tensor([float("inf")])], [torch.zeros(1)])
        [nan]
    """
    if not directions:
        return []
    dots = [torch.dot(v.reshape(-1), g.to(v.dtype).reshape(-1)) for v, g in zip(directions, grads)]
    return torch.stack(dots).double().tolist()


def kl_clip_scale(vg: float, bound: float) -> float:
    r""":math:`\nu = \min(1, \sqrt{\kappa / x})` from the predicted change :math:`x = \alpha^2 \sum_l \langle v_l, g_l\rangle`.

    Args:
        vg: :math:`x` (already multiplied by the squared learning rates).
        bound: :math:`\kappa > 0`.

    Returns:
        :math:`\nu \in (0, 1]`; ``1.0`` when :math:`x \le 0` or not finite.

    Raises:
        ValueError: ``bound`` not > 0.

    Example:
        >>> kl_clip_scale(4.0, 1.0)
        0.5
    """
    if not bound > 0:
        raise ValueError(f"KL-clip bound must be > 0, got {bound!r}")
    if not vg > 0 or not math.isfinite(vg):
        return 1.0
    return min(1.0, math.sqrt(bound / vg))


def kl_clip_factor(
    directions: Iterable[Tensor], grads: Iterable[Tensor], lr: float, bound: float
) -> float:
    r"""The scale :math:`\nu` of KL-clipping (see the module docstring).

    Args:
        directions: Preconditioned gradients :math:`v_l`.
        grads: Gradients :math:`g_l`, same shapes, same order.
        lr: Learning rate :math:`\alpha \ge 0`.
        bound: :math:`\kappa > 0`.

    Returns:
        :math:`\nu \in (0, 1]`; ``1.0`` when :math:`\alpha = 0` or
        :math:`\sum_l \langle v_l, g_l\rangle \le 0` (nothing to clip).

    Raises:
        ValueError: ``bound`` not > 0.

    Example:
        >>> import torch
        >>> v, g = [torch.tensor([2.0, 0.0])], [torch.tensor([2.0, 1.0])]
        >>> kl_clip_factor(v, g, lr=1.0, bound=1.0)  # sqrt(1 / 4)
        0.5
        >>> kl_clip_factor(v, g, lr=0.1, bound=1.0)
        1.0
    """
    return kl_clip_scale(sum(inner_products(list(directions), list(grads))) * lr * lr, bound)

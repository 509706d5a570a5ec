r"""Bias-corrected exponential moving averages of curvature factors.

A running estimate of a factor (K-FAC's ``A`` and ``G``, FOOF's ``Σ``) is
the exponential moving average with decay :math:`m` of the per-step
estimates :math:`x_1, \dots, x_t`, divided by the weight it has
accumulated so that early estimates are not shrunk towards zero (Adam's
bias correction):

.. math::

    \bar x_t = \frac{(1-m) \sum_{s \le t} m^{t-s} x_s}{1 - m^t}.

It is kept directly in its corrected form through the recursion
:math:`\bar x_t = \bar x_{t-1} + w_t (x_t - \bar x_{t-1})` with
:math:`w_t = (1-m)/(1-m^t)` (so :math:`w_1 = 1`: the first estimate is
taken as it is). Only the tensor and the count :math:`t` are stored.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ema_update", "ema_weight"]


def ema_weight(decay: float, count: int) -> float:
    r"""Weight :math:`w_t = (1-m)/(1-m^t)` of the ``count``-th estimate.

    Args:
        decay: EMA decay :math:`m \in [0, 1)`.
        count: Number of estimates including the new one (``t >= 1``).

    Returns:
        The weight in ``(0, 1]``; ``1`` for the first estimate or ``m = 0``.

    Raises:
        ValueError: ``decay`` outside ``[0, 1)`` or ``count < 1``.

    Example:
        >>> ema_weight(0.95, 1)
        1.0
        >>> round(ema_weight(0.5, 2), 6)
        0.666667
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay!r}")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count!r}")
    return (1.0 - decay) / (1.0 - decay**count)


def ema_update(avg: Tensor | None, new: Tensor, decay: float, count: int) -> Tensor:
    r"""Bias-corrected EMA after the ``count``-th estimate ``new`` (out of place).

    :math:`\bar x_t = \bar x_{t-1} + w_t (x_t - \bar x_{t-1})` (one
    ``torch.lerp``), computed in ``avg``'s dtype (the new estimate is cast to it).

    Args:
        avg: Previous corrected average :math:`\bar x_{t-1}` (``None`` when ``count == 1``).
        new: New estimate :math:`x_t`, same shape.
        decay: EMA decay :math:`m \in [0, 1)`.
        count: :math:`t`, number of estimates including ``new``.

    Returns:
        A new tensor :math:`\bar x_t` (``avg`` is not modified, so a caller
        can check it for NaN before committing it).

    Raises:
        ValueError: as :func:`ema_weight`; ``avg`` is ``None`` after the first estimate.

    Example:
        >>> import torch
        >>> a = ema_update(None, torch.tensor([2.0]), 0.5, 1)
        >>> ema_update(a, torch.tensor([5.0]), 0.5, 2)  # (0.5*2*0.5 + 0.5*5) / 0.75
        tensor([4.])
    """
    w = ema_weight(decay, count)
    if avg is None:
        if count != 1:
            raise ValueError(f"avg is None but count = {count}; pass the previous average")
        return new.clone()
    return torch.lerp(avg, new if new.dtype == avg.dtype else new.to(avg.dtype), w)

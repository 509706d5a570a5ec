r"""One-trial backtracking on the second evaluation: how much of a K-BFGS step to keep.

K-BFGS evaluates the same mini-batch at :math:`\theta^+ = \theta + \Delta` to
form its curvature pairs, so the objective's value there,
:math:`F(\theta^+)`, is known at no extra cost. With :math:`F(\theta)` and the
directional derivative :math:`F'(0) = \nabla F(\theta)^\top \Delta` (both
known before the step), the sufficient-decrease (Armijo) test

.. math::

    F(\theta + \Delta) \le F(\theta) + c_1\, F'(0), \qquad c_1 = 10^{-4},

tells whether the step is acceptable. When it fails, the step is cut to
the minimiser of the quadratic that interpolates :math:`F(\theta)`,
:math:`F'(0)` and :math:`F(\theta + \Delta)` (Nocedal & Wright, *Numerical
Optimization*, 2nd ed., eq. 3.58 with :math:`\alpha_0 = 1`),

.. math::

    t^\star = \frac{-F'(0)}{2\,\big(F(\theta+\Delta) - F(\theta) - F'(0)\big)}
    \;\in\; [t_\text{low}, t_\text{high}] = [0.1, 0.5],

the usual safeguarded interval (Armijo failing with :math:`F'(0) < 0` puts
:math:`t^\star` below :math:`1/(2(1-c_1)) \approx 0.5`). A non-finite
:math:`F(\theta+\Delta)`, or :math:`F'(0) \ge 0` (not a descent direction
for this batch, as a momentum step may be), gives :math:`t_\text{low}`.
No further trial is evaluated: the next step starts from
:math:`\theta + t\Delta`.

Why K-BFGS needs it is measured in ``docs/backends/kbfgs.rst``: each
layer's block-diagonal step is about right on its own, but the steps of
all layers together overshoot, the more the deeper the network.
"""

from __future__ import annotations

import math

__all__ = ["ARMIJO_C1", "step_fraction"]

#: Sufficient-decrease constant :math:`c_1` of the Armijo test.
ARMIJO_C1 = 1e-4


def step_fraction(f0: float, slope: float, f1: float, *, c1: float = ARMIJO_C1,
                  low: float = 0.1, high: float = 0.5) -> float:
    r"""The fraction :math:`t` of the step :math:`\Delta` to keep (module docstring).

    Args:
        f0: :math:`F(\theta)` (finite).
        slope: :math:`F'(0) = \nabla F(\theta)^\top \Delta`.
        f1: :math:`F(\theta + \Delta)`.
        c1: Armijo constant, in ``(0, 1)``.
        low: Smallest fraction returned when the test fails.
        high: Largest fraction returned when the test fails.

    Returns:
        ``1.0`` when the Armijo test holds, else
        :math:`\min(t_\text{high}, \max(t_\text{low}, t^\star))` (``low`` for a
        non-finite ``f1`` or a non-negative ``slope``).

    Example:
        >>> step_fraction(1.0, -1.0, 0.2)            # a good step is kept
        1.0
        >>> step_fraction(1.0, -1.0, 2.0)            # F(t) = 1 - t + 2 t², minimised at t = 1/4
        0.25
        >>> step_fraction(1.0, -1.0, float("nan")), step_fraction(1.0, 0.5, 2.0)
        (0.1, 0.1)
    """
    if not math.isfinite(f1) or not math.isfinite(slope):
        return low
    if f1 <= f0 + c1 * slope:
        return 1.0
    if slope >= 0.0:
        return low
    t = -slope / (2.0 * (f1 - f0 - slope))
    return min(high, max(low, t))

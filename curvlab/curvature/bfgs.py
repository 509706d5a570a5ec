r"""The BFGS update of an inverse-curvature matrix, guarded against unsafe pairs.

Given a symmetric positive definite :math:`H \approx B^{-1}` and a pair
:math:`(s, y)` with :math:`s^\top y > 0`, the BFGS inverse update is

.. math::

    H_+ = (I - \rho\, s y^\top)\, H\, (I - \rho\, y s^\top) + \rho\, s s^\top,
    \qquad \rho = 1 / (y^\top s),

the closest matrix to :math:`H` (in a weighted Frobenius norm) that is
symmetric and satisfies the secant equation :math:`H_+ y = s`. It keeps
:math:`H_+` positive definite exactly when :math:`s^\top y > 0`.

Expanded with :math:`u = H y` (one matrix-vector product, no matrix-matrix
product): :math:`H_+ = H - \rho (s u^\top + u s^\top) + (\rho^2\, y^\top u +
\rho)\, s s^\top`.

The update is *guarded*: when :math:`s^\top y` is not safely positive (zero
pair, negative curvature, values so small or large that :math:`\rho` or
:math:`H_+` is not finite), :math:`H` is returned unchanged and the returned
flag is false. The decision is made with :func:`torch.where` on 0-d tensors,
so no device synchronisation happens here; callers read the flags once per
step.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["bfgs_inverse_update", "safe_curvature"]


def safe_curvature(s: Tensor, y: Tensor, *, rtol: float | None = None) -> Tensor:
    r"""Whether :math:`s^\top y` is safely positive for a BFGS update (0-d bool tensor).

    The test is :math:`s^\top y > \text{rtol}\cdot\|s\|\,\|y\|` (a cosine
    threshold, scale-free) with every quantity finite. The default
    ``rtol`` is the dtype's machine epsilon.

    Args:
        s: Step, shape ``(d,)``.
        y: Gradient change, shape ``(d,)``.
        rtol: Smallest accepted cosine between ``s`` and ``y``.

    Returns:
        A 0-d ``torch.bool`` tensor.

    Example:
        >>> bool(safe_curvature(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 1.0])))
        True
        >>> bool(safe_curvature(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])))
        False
        >>> bool(safe_curvature(torch.zeros(2), torch.zeros(2)))
        False
    """
    eps = torch.finfo(s.dtype).eps if rtol is None else rtol
    sy = torch.dot(s, y)
    bound = eps * torch.linalg.vector_norm(s) * torch.linalg.vector_norm(y)
    return (sy > bound) & torch.isfinite(sy) & torch.isfinite(bound) & torch.isfinite(1.0 / sy)


def bfgs_inverse_update(
    H: Tensor, s: Tensor, y: Tensor, *, rtol: float | None = None
) -> tuple[Tensor, Tensor]:
    r"""One guarded BFGS update of the inverse approximation ``H``.

    :math:`H_+ = (I - \rho s y^\top) H (I - \rho y s^\top) + \rho s s^\top`,
    :math:`\rho = 1/(y^\top s)`; afterwards :math:`H_+ y = s` (secant
    equation). ``H`` must be symmetric (only then does the expanded form
    hold). If the pair fails :func:`safe_curvature` or the result is not
    finite, (a copy of) ``H`` is returned.

    Args:
        H: Symmetric positive definite matrix, shape ``(d, d)``.
        s: Step, shape ``(d,)``.
        y: Gradient change, shape ``(d,)``.
        rtol: Cosine threshold passed to :func:`safe_curvature`.

    Returns:
        ``(H_new, applied)``: the updated matrix (a new tensor, equal to
        ``H`` when skipped) and a 0-d bool tensor telling whether the update was
        applied.

    Raises:
        ValueError: shapes do not match (``H`` is ``(d, d)``, ``s`` and ``y``
            are ``(d,)``).

    Example:
        >>> H = torch.eye(2, dtype=torch.float64)
        >>> s, y = torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor(
        ...     [3.0, 1.0], dtype=torch.float64)
        >>> H1, applied = bfgs_inverse_update(H, s, y)
        >>> bool(applied), torch.allclose(H1 @ y, s)
        (True, True)
        >>> H2, applied = bfgs_inverse_update(H, s, -y)   # negative curvature: skipped
        >>> bool(applied), torch.equal(H2, H)
        (False, True)
    """
    d = H.shape[0]
    if H.shape != (d, d) or s.shape != (d,) or y.shape != (d,):
        raise ValueError(
            f"bfgs_inverse_update needs H (d, d), s (d,), y (d,); got "
            f"{tuple(H.shape)}, {tuple(s.shape)}, {tuple(y.shape)}"
        )
    ok = safe_curvature(s, y, rtol=rtol)
    # rho = 0 on rejected pairs keeps the arithmetic finite where possible;
    # torch.where below discards the candidate anyway.
    sy = torch.dot(s, y)
    rho = torch.where(ok, 1.0 / torch.where(ok, sy, torch.ones_like(sy)), torch.zeros_like(sy))
    u = H @ y
    # rho * (rho yᵀu + 1), not rho² yᵀu + rho: rho² underflows to subnormals in float32
    coef = rho * (rho * torch.dot(y, u) + 1.0)
    rs = rho * s
    cand = H - (torch.outer(rs, u) + torch.outer(u, rs)) + coef * torch.outer(s, s)
    # a sum is non-finite iff some entry is (or it overflows: then skipping is right too);
    # one reduction instead of an elementwise isfinite on the whole matrix
    ok = ok & torch.isfinite(cand.sum())
    return torch.where(ok, cand, H), ok

r"""The damped solve :math:`(D + U U^\top)^{-1} g` through the Gram matrix :math:`U^\top D^{-1} U`.

With :math:`U \in \mathbb R^{P \times M}` (:math:`M \ll P` columns) and a
positive diagonal damping :math:`D` (one value :math:`\lambda_i` per
parameter tensor), the Woodbury identity gives

.. math::

    (D + U U^\top)^{-1} g = D^{-1}\big(g - U z\big), \qquad
    (I_M + U^\top D^{-1} U)\, z = U^\top D^{-1} g,

and for a scalar :math:`D = \lambda I` the familiar
:math:`(F + \lambda I)^{-1} g = \frac1\lambda\big(g - U(\lambda I + U^\top U)^{-1} U^\top g\big)`.
Only the :math:`M \times M` system is solved; :math:`F = U U^\top` is never
formed. The system matrix has every eigenvalue :math:`\ge 1`, so its Cholesky
factorisation cannot fail for finite inputs and is well conditioned whenever
:math:`\|U\|^2/\lambda` is moderate. When the columns are at least as many
as the rows (:math:`M \ge P`, e.g. logistic regression on a large batch),
the :math:`P \times P` system :math:`(D + UU^\top)\,x = g` is smaller and is
solved instead (same result, cost :math:`P^2 M` instead of :math:`M^2 P`).

Numerics: the products :math:`U_i^\top U_i` and :math:`U_i^\top g_i` run in
the parameters' dtype (BLAS speed), are accumulated, symmetrised and solved in
float64; :math:`g - Uz` is formed in float64 and cast back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

import torch
from torch import Tensor

from curvlab.curvature.finite import all_finite

__all__ = ["damped_solve", "gram_trace"]

K = TypeVar("K")


def gram_trace(columns: Mapping[K, Tensor], keys: Sequence[K]) -> float:
    r""":math:`\operatorname{tr}(U^\top U) = \operatorname{tr} F` over the rows ``keys`` (float64).

    Example:
        >>> gram_trace({"w": torch.tensor([[1.0, 2.0], [0.0, 3.0]])}, ["w"])
        14.0
    """
    return float(sum(columns[k].double().pow(2).sum() for k in keys))


def damped_solve(
    columns: Mapping[K, Tensor], grads: Mapping[K, Tensor], damping: Mapping[K, float],
) -> dict[K, Tensor] | None:
    r""":math:`(D + U U^\top)^{-1} g` blockwise by rows (module docstring).

    Args:
        columns: ``{key: U_i}`` with ``U_i`` of shape ``(M, *shape_i)``: the
            rows of :math:`U^\top` that belong to tensor ``i`` (the same
            :math:`M` columns for every key).
        grads: ``{key: g_i}`` of shape ``shape_i``.
        damping: ``{key: λ_i > 0}``.

    Returns:
        ``{key: x_i}`` shaped like ``g_i`` in its dtype, or ``None`` when the
        solve failed or a result is not finite.

    Example:
        >>> u = torch.tensor([[1.0, 1.0]], dtype=torch.float64)       # F = u uᵀ, one column
        >>> x = damped_solve({"w": u}, {"w": torch.tensor([2.0, 0.0], dtype=torch.float64)},
        ...                  {"w": 1.0})
        >>> x["w"].mul(3).round(decimals=12).tolist()   # 3 (F + I)⁻¹ g, dense: [4, -2]
        [4.0, -2.0]
    """
    keys = list(grads)
    if not keys:
        return {}
    rows = {k: columns[k].reshape(columns[k].shape[0], -1) for k in keys}
    m = rows[keys[0]].shape[0]
    if m >= sum(r.shape[1] for r in rows.values()):
        return _primal_solve(rows, grads, damping)
    device = rows[keys[0]].device
    system = torch.eye(m, dtype=torch.float64, device=device)
    rhs = torch.zeros(m, dtype=torch.float64, device=device)
    for k in keys:
        u, g, lam = rows[k], grads[k].reshape(-1), float(damping[k])
        system += (u @ u.T).double() / lam
        rhs += (u @ g.to(u.dtype)).double() / lam
    system = 0.5 * (system + system.T)
    chol, info = torch.linalg.cholesky_ex(system)
    if int(info) != 0 or not all_finite([chol, rhs]):
        return None
    z = torch.cholesky_solve(rhs[:, None], chol)[:, 0]
    out = {}
    for k in keys:
        u, g, lam = rows[k], grads[k], float(damping[k])
        uz = (u.T @ z.to(u.dtype)).double()
        out[k] = ((g.reshape(-1).double() - uz) / lam).to(g.dtype).view_as(g)
    return out if all_finite(list(out.values())) else None


def _primal_solve(
    rows: Mapping[K, Tensor], grads: Mapping[K, Tensor], damping: Mapping[K, float]
) -> dict[K, Tensor] | None:
    r""":math:`(D + UU^\top)^{-1} g` by the :math:`P \times P` Cholesky factorisation (``M >= P``)."""
    keys = list(grads)
    u = torch.cat([rows[k] for k in keys], dim=1)
    lam = torch.cat([torch.full((rows[k].shape[1],), float(damping[k]), dtype=torch.float64,
                                device=u.device) for k in keys])
    g = torch.cat([grads[k].reshape(-1).double() for k in keys])
    system = (u.T @ u).double()
    system = 0.5 * (system + system.T) + torch.diag(lam)
    chol, info = torch.linalg.cholesky_ex(system)
    if int(info) != 0 or not all_finite([chol]):
        return None
    x = torch.cholesky_solve(g[:, None], chol)[:, 0]
    out, start = {}, 0
    for k in keys:
        n = grads[k].numel()
        out[k] = x[start:start + n].to(grads[k].dtype).view_as(grads[k])
        start += n
    return out if all_finite(list(out.values())) else None

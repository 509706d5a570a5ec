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

:math:`U` comes as one :class:`~curvlab_plugins.natgrad.columns.Columns` per
parameter tensor (dense, or Kronecker-structured for ``Linear`` weights).
Numerics: the products :math:`U_i^\top U_i / \lambda_i` and
:math:`U_i^\top g_i / \lambda_i` run and are summed in the parameters' dtype
(BLAS speed), then converted once, symmetrised and solved in float64;
:math:`g - Uz` is formed in float64 and cast back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

import torch
from torch import Tensor

from curvlab.curvature.finite import all_finite
from curvlab_plugins.natgrad.columns import Columns

__all__ = ["damped_solve", "gram_trace"]

K = TypeVar("K")


def gram_trace(columns: Mapping[K, Columns], keys: Sequence[K]) -> float:
    r""":math:`\operatorname{tr}(U^\top U) = \operatorname{tr} F` over the rows ``keys`` (float64).

    Example:
        >>> from curvlab_plugins.natgrad.columns import DenseColumns
        >>> gram_trace({"w": DenseColumns(torch.tensor([[1.0, 2.0], [0.0, 3.0]]))}, ["w"])
        14.0
    """
    return sum(columns[k].sq_norm() for k in keys)


def damped_solve(
    columns: Mapping[K, Columns], grads: Mapping[K, Tensor], damping: Mapping[K, float],
) -> dict[K, Tensor] | None:
    r""":math:`(D + U U^\top)^{-1} g` blockwise by rows (module docstring).

    Args:
        columns: ``{key: U_i}``: the rows of :math:`U^\top` that belong to
            tensor ``i`` (the same :math:`M` columns for every key).
        grads: ``{key: g_i}`` shaped like the parameter.
        damping: ``{key: λ_i > 0}``.

    Returns:
        ``{key: x_i}`` shaped like ``g_i`` in its dtype, or ``None`` when the
        solve failed or a result is not finite.

    Example:
        >>> from curvlab_plugins.natgrad.columns import DenseColumns
        >>> u = DenseColumns(torch.tensor([[1.0, 1.0]], dtype=torch.float64))  # F = u uᵀ, M = 1
        >>> x = damped_solve({"w": u}, {"w": torch.tensor([2.0, 0.0], dtype=torch.float64)},
        ...                  {"w": 1.0})
        >>> x["w"].mul(3).round(decimals=12).tolist()   # 3 (F + I)⁻¹ g, dense: [4, -2]
        [4.0, -2.0]
    """
    keys = list(grads)
    if not keys:
        return {}
    m = columns[keys[0]].size
    if m >= sum(grads[k].numel() for k in keys):
        return _primal_solve(columns, grads, damping)
    gram = rhs = None
    for k in keys:  # accumulated in the columns' dtype, converted once
        u, scale = columns[k], 1.0 / float(damping[k])
        term, proj = u.gram().mul_(scale), u.project(grads[k]).mul_(scale)
        gram = term if gram is None else gram.add_(term)
        rhs = proj if rhs is None else rhs.add_(proj)
    system = gram.double()
    system = 0.5 * (system + system.T)
    system.diagonal().add_(1.0)
    rhs = rhs.double()
    chol, info = torch.linalg.cholesky_ex(system)
    if int(info) != 0 or not all_finite([chol, rhs]):
        return None
    z = torch.cholesky_solve(rhs[:, None], chol)[:, 0]
    out = {}
    for k in keys:
        g, lam = grads[k], float(damping[k])
        uz = columns[k].expand(z).double()
        out[k] = ((g.double() - uz) / lam).to(g.dtype).view_as(g)
    return out if all_finite(list(out.values())) else None


def _primal_solve(
    columns: Mapping[K, Columns], grads: Mapping[K, Tensor], damping: Mapping[K, float]
) -> dict[K, Tensor] | None:
    r""":math:`(D + UU^\top)^{-1} g` by the :math:`P \times P` Cholesky factorisation (``M >= P``).

    :math:`F = UU^\top` is assembled block by block from
    :meth:`~curvlab_plugins.natgrad.columns.Columns.cross` (Kronecker-aware).
    """
    keys = list(grads)
    sizes = [grads[k].numel() for k in keys]
    starts = [sum(sizes[:i]) for i in range(len(keys))]
    device = grads[keys[0]].device
    system = torch.zeros(sum(sizes), sum(sizes), dtype=torch.float64, device=device)
    for a, ka in enumerate(keys):
        for b in range(a, len(keys)):
            block = columns[ka].cross(columns[keys[b]]).double()
            ra, rb = slice(starts[a], starts[a] + sizes[a]), slice(starts[b], starts[b] + sizes[b])
            system[ra, rb] = block
            if b != a:
                system[rb, ra] = block.T
    system = 0.5 * (system + system.T)
    lam = torch.cat([torch.full((n,), float(damping[k]), dtype=torch.float64, device=device)
                     for k, n in zip(keys, sizes)])
    system.diagonal().add_(lam)
    g = torch.cat([grads[k].reshape(-1).double() for k in keys])
    chol, info = torch.linalg.cholesky_ex(system)
    if int(info) != 0 or not all_finite([chol]):
        return None
    x = torch.cholesky_solve(g[:, None], chol)[:, 0]
    out = {k: x[s:s + n].to(grads[k].dtype).view_as(grads[k]) for k, s, n in zip(keys, starts, sizes)}
    return out if all_finite(list(out.values())) else None

r"""The rows of :math:`U^\top` that belong to one parameter tensor, dense or Kronecker-structured.

:math:`U = [u_1, \dots, u_M]` (:math:`M = NK` columns, one per example and
root) restricted to the entries of one parameter :math:`\theta_i` is
:math:`U_i \in \mathbb R^{P_i \times M}`. The Woodbury solve
(:mod:`~curvlab_plugins.natgrad.woodbury`) needs four things from it, all
:math:`O(M)`-sized except the Gram matrix:

* :meth:`gram`: :math:`U_i^\top U_i` (:math:`M \times M`);
* :meth:`project`: :math:`U_i^\top g_i` (:math:`M`);
* :meth:`expand`: :math:`U_i z` (shaped like :math:`\theta_i`);
* :meth:`sq_norm`: :math:`\|U_i\|_F^2 = \operatorname{tr} U_i^\top U_i`.

:class:`DenseColumns` stores :math:`U_i^\top` (``(M, *shape)``). For the
weight :math:`W \in \mathbb R^{d_o \times d_i}` of a ``Linear`` layer applied
once per example (2-D input), each column is an outer product,
:math:`u_r = \operatorname{vec}(g_r a_{n(r)}^\top)`, with :math:`a_n` the
layer's input for example :math:`n` and :math:`g_r = \partial (v_r^\top f_{n(r)})/\partial z_{n(r)}`
the root :math:`v_r` back-propagated to the layer's output :math:`z`.
:class:`KroneckerColumns` keeps only :math:`G = [g_r] \in \mathbb R^{M \times d_o}`,
:math:`A = [a_n] \in \mathbb R^{N \times d_i}` and the example index
:math:`n(r)`:

.. math::

    (U_W^\top U_W)_{rs} = (g_r^\top g_s)(a_{n(r)}^\top a_{n(s)}), \quad
    (U_W^\top g)_r = g_r^\top \nabla W\, a_{n(r)}, \quad
    U_W z = \textstyle\sum_r z_r g_r a_{n(r)}^\top,

which costs :math:`M^2 d_o + N^2 d_i` instead of :math:`M^2 d_o d_i` and
stores :math:`M d_o + N d_i` numbers instead of :math:`M d_o d_i` (the bias
of such a layer has the dense rows :math:`G` itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Columns", "DenseColumns", "KroneckerColumns"]


class Columns:
    """Interface of a parameter's column set (see the module docstring)."""

    #: Number of columns :math:`M`.
    size: int
    #: Shape of the parameter.
    shape: torch.Size

    def gram(self) -> Tensor:
        r""":math:`U_i^\top U_i`, ``(M, M)`` in the columns' dtype."""
        raise NotImplementedError

    def project(self, g: Tensor) -> Tensor:
        r""":math:`U_i^\top g`, ``(M,)``, for ``g`` shaped like the parameter."""
        raise NotImplementedError

    def expand(self, z: Tensor) -> Tensor:
        """:math:`U_i z`, shaped like the parameter, for ``z`` of shape ``(M,)``."""
        raise NotImplementedError

    def sq_norm(self) -> float:
        r""":math:`\|U_i\|_F^2` (float64)."""
        raise NotImplementedError

    def dense(self) -> Tensor:
        r""":math:`U_i^\top` materialised, ``(M, P_i)``."""
        raise NotImplementedError

    def cross(self, other: Columns) -> Tensor:
        r""":math:`U_i U_j^\top`, the ``(P_i, P_j)`` block of :math:`F = UU^\top` (flattened rows)."""
        if isinstance(other, KroneckerColumns) and not isinstance(self, KroneckerColumns):
            return other.cross(self).T
        return self.dense().T @ other.dense()


@dataclass(frozen=True)
class DenseColumns(Columns):
    r"""Columns stored as :math:`U_i^\top`, a ``(M, *shape)`` tensor.

    Example:
        >>> c = DenseColumns(torch.tensor([[1.0, 2.0], [0.0, 3.0]]))   # M = 2 columns, P_i = 2
        >>> c.gram().tolist(), c.project(torch.tensor([1.0, 1.0])).tolist(), c.sq_norm()
        ([[5.0, 6.0], [6.0, 9.0]], [3.0, 3.0], 14.0)
    """

    rows: Tensor

    @property
    def size(self) -> int:  # type: ignore[override]
        """Number of columns :math:`M`."""
        return int(self.rows.shape[0])

    @property
    def shape(self) -> torch.Size:  # type: ignore[override]
        """Shape of the parameter."""
        return self.rows.shape[1:]

    def dense(self) -> Tensor:
        """See :meth:`Columns.dense`."""
        return self.rows.reshape(self.size, -1)

    def gram(self) -> Tensor:
        """See :meth:`Columns.gram`."""
        u = self.dense()
        return u @ u.T

    def project(self, g: Tensor) -> Tensor:
        """See :meth:`Columns.project`."""
        return self.dense() @ g.reshape(-1).to(self.rows.dtype)

    def expand(self, z: Tensor) -> Tensor:
        """See :meth:`Columns.expand`."""
        return (self.dense().T @ z.to(self.rows.dtype)).view(self.shape)

    def sq_norm(self) -> float:
        """See :meth:`Columns.sq_norm`."""
        return float(self.rows.double().pow(2).sum())


@dataclass(frozen=True)
class KroneckerColumns(Columns):
    r"""Columns :math:`\operatorname{vec}(g_r a_{n(r)}^\top)` of a ``Linear`` weight ``(d_o, d_i)``.

    Args:
        G: :math:`[g_r]`, ``(M, d_o)``.
        A: :math:`[a_n]`, ``(N, d_i)``.
        example: :math:`n(r)`, ``(M,)`` long.

    Example:
        >>> G, A = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 1.0, 0.0]])
        >>> k = KroneckerColumns(G, A, torch.tensor([0, 0]))
        >>> torch.equal(k.gram(), DenseColumns(k.dense()).gram()), tuple(k.shape)
        (True, (2, 3))
    """

    G: Tensor
    A: Tensor
    example: Tensor

    @property
    def size(self) -> int:  # type: ignore[override]
        """Number of columns :math:`M`."""
        return int(self.G.shape[0])

    @property
    def shape(self) -> torch.Size:  # type: ignore[override]
        """Shape of the parameter."""
        return torch.Size((self.G.shape[1], self.A.shape[1]))

    def _a(self) -> Tensor:
        """:math:`a_{n(r)}` per column, ``(M, d_i)``."""
        return self.A[self.example]

    def dense(self) -> Tensor:
        """See :meth:`Columns.dense`."""
        return torch.einsum("ro,ri->roi", self.G, self._a()).reshape(self.size, -1)

    def gram(self) -> Tensor:
        """See :meth:`Columns.gram`."""
        inputs = self.A @ self.A.T
        return (self.G @ self.G.T) * inputs[self.example][:, self.example]

    def project(self, g: Tensor) -> Tensor:
        """See :meth:`Columns.project`."""
        ga = self.A @ g.to(self.A.dtype).T                      # (N, d_o): ∇W a_n
        return (self.G * ga[self.example]).sum(1)

    def expand(self, z: Tensor) -> Tensor:
        """See :meth:`Columns.expand`."""
        gz = self.G * z.to(self.G.dtype)[:, None]
        per_example = gz.new_zeros(self.A.shape[0], gz.shape[1]).index_add_(0, self.example, gz)
        return per_example.T @ self.A

    def sq_norm(self) -> float:
        """See :meth:`Columns.sq_norm`."""
        a2 = self.A.double().pow(2).sum(1)[self.example]
        return float((self.G.double().pow(2).sum(1) * a2).sum())

    def cross(self, other: Columns) -> Tensor:
        r"""See :meth:`Columns.cross`; one output row :math:`o` of :math:`W` at a time.

        With itself: :math:`F_{(o,i),(q,j)} = \sum_n S_{n,oq}\, a_{n,i} a_{n,j}`,
        :math:`S_n = \sum_{r: n(r)=n} g_r g_r^\top` (cost :math:`N d_o^2 d_i^2`
        instead of :math:`M d_o^2 d_i^2`); with another column set :math:`U_j`:
        :math:`F_{(o,i),p} = \sum_r g_{r,o}\, a_{n(r),i}\, (U_j^\top)_{r,p}`.
        """
        d_o, d_i = self.shape
        if other is self:
            outer = self.G[:, :, None] * self.G[:, None, :]
            S = outer.new_zeros(self.A.shape[0], d_o, d_o).index_add_(0, self.example, outer)
            rows = [self.A.T @ (S[:, o, :, None] * self.A[:, None, :]).reshape(-1, d_o * d_i)
                    for o in range(d_o)]
            return torch.stack(rows).reshape(d_o * d_i, d_o * d_i)
        u, a = other.dense(), self._a()
        return torch.stack([(a * self.G[:, o, None]).T @ u for o in range(d_o)]).reshape(
            d_o * d_i, -1)

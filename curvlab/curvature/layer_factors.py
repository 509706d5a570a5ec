r"""The result a factor engine hands a backend for one block: :class:`LayerFactors`.

Scaling convention (the same for every engine, layer type and loss; that of
Eschenhagen et al. 2023 and curvlinops): with :math:`N` samples, :math:`R`
weight-sharing positions per sample (1 for a ``Linear`` on 2-D inputs, the
output pixels of a ``Conv2d``, the tokens of a sequence; a module called
:math:`k` times contributes :math:`kR`), inputs :math:`\tilde a_{n,r}`
(with a trailing 1 when the bias is folded in) and back-propagated output
vectors :math:`g_{n,r}` of the columns :math:`v` of
:mod:`~curvlab.curvature.loss_curvature` (which carry the loss's reduction
factor :math:`c`),

.. math::

    \text{expand:}\quad A = \frac{1}{NR}\sum_{n,r}\tilde a_{n,r}\tilde a_{n,r}^\top,\quad
    G = \sum_v \sum_{n,r} g_{n,r} g_{n,r}^\top; \qquad
    \text{reduce:}\quad A = \frac1N \sum_n \bar a_n \bar a_n^\top,\quad
    G = \sum_v \sum_n \hat g_n \hat g_n^\top,

with :math:`\bar a_n = \frac1R\sum_r \tilde a_{n,r}` and
:math:`\hat g_n = \sum_r g_{n,r}`. Then :math:`G\otimes A` approximates the
GGN / Fisher block of the loss *as the loss module reduces it* (mean or
sum), with no further factor; it is exact for one ``Linear`` layer on 2-D
inputs with batch size 1, for deep linear networks with shared weights and
a loss summed over positions (expand), and for the same with the positions
mean-pooled before the loss (reduce). (BackPACK's ``Conv2d`` factor
:math:`A` lacks the :math:`1/R`; :class:`~curvlab.curvature.backpack_engine.BackpackEngine`
divides it out.)

Unit-wise blocks (norm layers): for unit :math:`i` the exact
:math:`k\times k` GGN/Fisher block of its :math:`k \le 2` trainable scalars
:math:`(\gamma_i, \beta_i)`, :math:`U_i = \sum_v \sum_n u_{n,i} u_{n,i}^\top`
with :math:`u_{n,i} = (\sum_r \hat x_{n,r,i}\, g_{n,r,i},\ \sum_r g_{n,r,i})`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["LayerFactors"]


@dataclass(frozen=True)
class LayerFactors:
    r"""Curvature factors of one block from one capture.

    Attributes:
        name: Block key (the :class:`~curvlab.curvature.block_plan.LayerGroup` name).
        kind: ``"kronecker-expand"``, ``"kronecker-reduce"``, ``"unit-wise"`` or ``"diagonal"``.
        params: Qualified names of the covered parameters, weight first.
        A: Input-side factor: ``(d, d)``; ``(V,)`` (its diagonal) for an
            ``Embedding`` with expand; ``None`` for unit-wise blocks.
        G: Output-side factor ``(out, out)``; ``None`` when the capture did not
            need it (FOOF) and for unit-wise blocks.
        unit: Unit-wise blocks ``(U, k, k)`` over ``(weight_i, bias_i)``: the
            curvature blocks, or (captured with ``need_G=False``) the input-side
            moments of :mod:`~curvlab.curvature.unit_blocks`; ``None`` for
            Kronecker blocks.
        homogeneous: ``A`` includes the bias as a last column (``[W | b]``);
            otherwise a bias (if trained) has the block :math:`G \otimes 1`.
        weight_view: ``"out_in"``: the weight's matrix view ``(out, d)``
            (Linear, Conv2d flattened) has the block :math:`G\otimes A`;
            ``"in_out"``: ``Embedding``, whose weight ``(V, D)`` has :math:`A \otimes G`.
        batch_size: :math:`N`.
        positions: :math:`R` of the convention (1 for reduce).

    Example:
        >>> f = LayerFactors("0", "kronecker-expand", ("0.weight",), torch.eye(2), 2 * torch.eye(1))
        >>> f.dense()
        tensor([[2., 0.],
                [0., 2.]])
    """

    name: str
    kind: str
    params: tuple[str, ...]
    A: Tensor | None = None
    G: Tensor | None = None
    unit: Tensor | None = None
    homogeneous: bool = False
    weight_view: str = "out_in"
    batch_size: int = 1
    positions: float = 1.0

    def dense(self) -> Tensor:
        r"""The block as a dense matrix in the reference layout (for tests and tiny layers).

        Kronecker blocks: :math:`G\otimes A` over the row-major matrix view
        (``homogeneous``: ``[W | b]`` row-major, as
        :func:`curvlab.reference.layer_block` with ``bias="folded"``;
        otherwise weight then bias, block-diagonal with :math:`G` for the bias).
        ``in_out``: :math:`A\otimes G`. Unit-wise: over ``(weight, bias)``
        concatenated (all :math:`\gamma`, then all :math:`\beta`).

        Raises:
            ValueError: a Kronecker block without ``G``.
        """
        if self.unit is not None:
            U, k, _ = self.unit.shape
            out = self.unit.new_zeros(k * U, k * U)
            idx = torch.arange(U)
            for i in range(k):
                for j in range(k):
                    out[i * U + idx, j * U + idx] = self.unit[:, i, j]
            return out
        if self.G is None:
            raise ValueError(f"block {self.name!r} has no G factor (captured with need_G=False)")
        if self.A is None:  # a bias on its own: G ⊗ 1
            return self.G.clone()
        A = torch.diag(self.A) if self.A.dim() == 1 else self.A
        if self.weight_view == "in_out":
            return torch.kron(A, self.G)
        if self.homogeneous or len(self.params) == 1:
            return torch.kron(self.G, A)
        return torch.block_diag(torch.kron(self.G, A), self.G)

r"""Unit-wise curvature of affine normalisation layers (LayerNorm, RMSNorm, BatchNorm1d/2d).

A normalisation layer computes :math:`z_{n,r,i} = \gamma_i \hat x_{n,r,i} + \beta_i`
for units :math:`i` (the ``normalized_shape`` entries of LayerNorm/RMSNorm,
the channels of BatchNorm) at positions :math:`r` (the other non-batch
dimensions). Its affine parameters have no Kronecker structure, so, as ASDL
does (Osawa et al., "ASDL: A Unified Interface for Gradient Preconditioning
in PyTorch", 2023, "unit-wise" Fisher), each unit gets the :math:`k\times k`
block (:math:`k = 2`: :math:`(\gamma_i, \beta_i)`; :math:`k = 1` when only one
of them trains, the *diagonal* case) of the GGN / Fisher:

.. math::

    U_i = \sum_v \sum_n u_{n,i} u_{n,i}^\top, \qquad
    u_{n,i} = \Big(\sum_r \hat x_{n,r,i}\, g_{n,r,i},\ \sum_r g_{n,r,i}\Big),

with :math:`g` the back-propagated output vectors of the columns :math:`v`
(:mod:`~curvlab.curvature.loss_curvature`). :math:`u_{n,i}` is sample
:math:`n`'s exact Jacobian-vector product for the unit's parameters, so
:math:`U_i` *equals* the diagonal 2×2 block of the exact GGN (exact columns)
or of the MC Fisher estimate — no approximation beyond dropping the
off-diagonal blocks (when samples do not interact through the model: BatchNorm
in training mode couples them, then the cross-sample terms are dropped too).

Why unit-wise rather than a plain diagonal: the :math:`\gamma_i`-:math:`\beta_i`
coupling :math:`\sum_n (\sum_r \hat x g)(\sum_r g)` is non-zero whenever a
unit's :math:`\hat x` does not average out against its gradients (BatchNorm
normalises over the batch, LayerNorm over the units, so neither makes it
vanish), costs nothing extra (the same two per-sample sums) and inverts
in closed form (2×2).

Input side only (``need_G=False``, FOOF's "gradient descent on neurons"):
unit :math:`i` is a ``Linear(1, 1)`` with weight :math:`\gamma_i`, bias
:math:`\beta_i` and input :math:`\tilde a_{n,r,i} = (\hat x_{n,r,i}, 1)` at
:math:`R` positions (restricted to the trainable ones), so its input-side
factor is the :math:`k\times k` second moment in the convention of
:mod:`~curvlab.curvature.layer_factors`: *expand*
:math:`A_i = \frac1{NR}\sum_{n,r}\tilde a\tilde a^\top`, *reduce*
:math:`A_i = \frac1N\sum_n \bar a_n \bar a_n^\top` with :math:`\bar a_n`
the mean over positions. (The curvature blocks above need no such choice:
they are exact per unit.)

:math:`\hat x` is recomputed from the layer input at forward time with the
layer's own ``eps`` (BatchNorm: batch statistics in training mode or without
running statistics, running statistics in eval mode, exactly as the layer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from curvlab.curvature.block_plan import LayerGroup, check_kfac_approx
from curvlab.curvature.layer_factors import LayerFactors

__all__ = ["UnitAccumulator", "normalized_input"]


def normalized_input(module: nn.Module, x: Tensor) -> Tensor:
    r""":math:`\hat x` of a norm layer as ``(N, R, U)`` (units last).

    Raises:
        ValueError: not a LayerNorm/RMSNorm/BatchNorm1d/BatchNorm2d.

    Example:
        >>> ln = nn.LayerNorm(3)
        >>> normalized_input(ln, torch.tensor([[[1.0, 2.0, 3.0]]])).round(decimals=3)
        tensor([[[-1.2250,  0.0000,  1.2250]]])
    """
    with torch.no_grad():
        if isinstance(module, nn.LayerNorm):
            xh = F.layer_norm(x, module.normalized_shape, None, None, module.eps)
            return xh.reshape(x.shape[0], -1, int(torch.Size(module.normalized_shape).numel()))
        if isinstance(module, nn.RMSNorm):
            xh = F.rms_norm(x, module.normalized_shape, None, module.eps)
            return xh.reshape(x.shape[0], -1, int(torch.Size(module.normalized_shape).numel()))
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            running = not module.training and module.running_mean is not None
            xh = F.batch_norm(
                x, module.running_mean if running else None, module.running_var if running else None,
                None, None, training=not running, momentum=0.0, eps=module.eps,
            )
            return unit_rows(xh)
    raise ValueError(f"normalized_input supports LayerNorm, RMSNorm, BatchNorm1d/2d; got {type(module).__name__}")


def unit_rows(t: Tensor) -> Tensor:
    """Channel-first ``(N, C, *)`` to ``(N, R, C)``.

    Example:
        >>> unit_rows(torch.zeros(2, 3, 4, 5)).shape
        torch.Size([2, 20, 3])
    """
    return t.reshape(t.shape[0], t.shape[1], -1).transpose(1, 2)


class UnitAccumulator:
    """Per-unit blocks of one norm-layer group over one capture.

    Args:
        group: A ``norm`` :class:`~curvlab.curvature.block_plan.LayerGroup`.
        kfac_approx: ``"expand"`` or ``"reduce"``: how positions enter the
            input-side moments of :meth:`result` with ``need_G=False``.

    Example:
        >>> ln = nn.LayerNorm(2)
        >>> group = LayerGroup("0", "norm", (ln,), ("model.0",), ln.weight, ln.bias, "0.weight", "0.bias")
        >>> acc = UnitAccumulator(group)
        >>> acc.add_input(ln, torch.tensor([[1.0, 3.0]]))
        0
        >>> acc.add_column([torch.tensor([[1.0, 1.0]])])
        >>> acc.result().unit.round(decimals=3).tolist()  # x̂ ≈ (-1, 1): u = (x̂·g, g) per unit
        [[[1.0, -1.0], [-1.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]]
    """

    def __init__(self, group: LayerGroup, kfac_approx: str = "expand") -> None:
        if group.family != "norm":
            raise ValueError(f"UnitAccumulator handles norm layers; got {group.family}")
        check_kfac_approx(kfac_approx)
        self.approx = kfac_approx
        self.group = group
        self.xhat: list[Tensor] = []
        self.unit: Tensor | None = None
        self.channel_first = isinstance(group.modules[0], (nn.BatchNorm1d, nn.BatchNorm2d))

    @property
    def uses(self) -> int:
        """Number of recorded calls."""
        return len(self.xhat)

    def add_input(self, module: nn.Module, x: Tensor) -> int:
        r"""Record :math:`\hat x` of one call; returns the index of this use.

        Raises:
            ValueError: a batch size different from an earlier call.
        """
        xh = normalized_input(module, x.detach())
        if self.xhat and xh.shape[0] != self.xhat[0].shape[0]:
            raise ValueError(
                f"layer {self.group.paths[0]} was called with batch sizes {self.xhat[0].shape[0]} "
                f"and {xh.shape[0]} in one capture"
            )
        self.xhat.append(xh)
        return len(self.xhat) - 1

    def add_column(self, grads: list[Tensor | None], weight: float = 1.0) -> None:
        """Add one column: per-sample sums over positions and uses, then the outer products."""
        with torch.no_grad():
            u: Tensor | None = None
            for xh, g in zip(self.xhat, grads):
                if g is None:
                    continue
                rows = unit_rows(g) if self.channel_first else g.reshape(xh.shape)
                parts = []
                if self.group.weight is not None:
                    parts.append((xh * rows).sum(dim=1))
                if self.group.bias is not None:
                    parts.append(rows.sum(dim=1))
                term = torch.stack(parts, dim=-1)  # (N, U, k)
                u = term if u is None else u + term
            if u is None:
                return
            block = torch.einsum("nuk,nul->ukl", u, u)
            if weight != 1.0:
                block = block * weight
            self.unit = block if self.unit is None else self.unit + block

    def input_moments(self) -> Tensor:
        r"""Per-unit input-side moments ``(U, k, k)`` of :math:`(\hat x, 1)` (module docstring).

        Example:
            >>> ln = nn.LayerNorm(2)
            >>> g = LayerGroup("0", "norm", (ln,), ("model.0",), ln.weight, ln.bias, "0.weight", "0.bias")
            >>> acc = UnitAccumulator(g)
            >>> _ = acc.add_input(ln, torch.tensor([[1.0, 3.0]]))
            >>> acc.input_moments().round(decimals=3).tolist()   # x̂ = (-1, 1)
            [[[1.0, -1.0], [-1.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]]
        """
        xh = torch.cat(self.xhat, dim=1)  # (N, R·uses, U)
        parts = []
        if self.group.weight is not None:
            parts.append(xh)
        if self.group.bias is not None:
            parts.append(torch.ones_like(xh))
        rows = torch.stack(parts, dim=-1)  # (N, R, U, k)
        if self.approx == "reduce":
            mean = rows.mean(dim=1)
            return torch.einsum("nuk,nul->ukl", mean, mean) / rows.shape[0]
        return torch.einsum("nruk,nrul->ukl", rows, rows) / (rows.shape[0] * rows.shape[1])

    def result(self, *, need_G: bool = True) -> LayerFactors:
        """The group's unit-wise (``k = 2``) or diagonal (``k = 1``) :class:`LayerFactors`.

        With ``need_G=False`` the blocks are the input-side moments
        (:meth:`input_moments`) instead of the curvature blocks.

        Raises:
            ValueError: the layer was never called during the capture.
        """
        g = self.group
        if not self.xhat:
            raise ValueError(
                f"layer {' / '.join(g.paths)} was not called during the capture (with autograd on); "
                "a covered module must run in every factor step"
            )
        k = len(g.params)
        unit = self.unit
        if not need_G:
            unit = self.input_moments()
        elif unit is None:
            U = self.xhat[0].shape[-1]
            unit = self.xhat[0].new_zeros(U, k, k)
        params = tuple(n for n in (g.weight_name, g.bias_name) if n is not None)
        return LayerFactors(
            name=g.name, kind=g.kind(), params=params, unit=unit,
            batch_size=self.xhat[0].shape[0],
        )

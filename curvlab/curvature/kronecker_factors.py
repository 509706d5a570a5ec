r"""Kronecker factors of ``Linear``, ``Conv2d`` and ``Embedding`` layers, expand or reduce.

:class:`KroneckerAccumulator` collects, for one
:class:`~curvlab.curvature.block_plan.LayerGroup`, the input side at each
call of its module(s) (forward) and the output side for each back-propagated
column (backward), and returns :class:`~curvlab.curvature.layer_factors.LayerFactors`
in the convention documented there. All work is batched matrix products
over the flattened positions (:math:`A \mathrel{+}= X^\top X` with
:math:`X` of shape :math:`(NR, d)`); nothing loops over samples.

Inputs :math:`a_{n,r}` per layer type (positions :math:`r`):

* ``Linear`` on ``(N, *, d_in)``: the rows of the middle dimensions;
* ``Conv2d``: the unfolded patches (:func:`~curvlab.curvature.statistics.layer_inputs`),
  :math:`R = H_\text{out} W_\text{out}`; output vectors are ``(N, C_out, H, W)``
  moved to channel-last;
* ``Embedding`` on token ids ``(N, *)``: one-hot vectors, so expand gives the
  diagonal :math:`A = \operatorname{diag}(\text{counts})/(NR)` (kept as a
  vector; ``padding_idx`` counts nothing: its row gets no gradient), reduce
  the dense :math:`\frac1N \sum_n \bar c_n \bar c_n^\top` of per-sample
  frequencies.

A module called :math:`k` times per forward pass (or several modules sharing
the same parameters in the same role) adds each call's positions: the
block is the expand/reduce approximation over the union of positions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from curvlab.curvature.block_plan import LayerGroup, check_kfac_approx
from curvlab.curvature.layer_factors import LayerFactors
from curvlab.curvature.statistics import layer_inputs

__all__ = ["KroneckerAccumulator", "output_rows"]


def output_rows(family: str, g: Tensor) -> Tensor:
    """Output-side vectors as ``(N, R, out)``: channel-last for ``conv2d``.

    Example:
        >>> output_rows("conv2d", torch.zeros(2, 3, 4, 5)).shape
        torch.Size([2, 20, 3])
    """
    if family == "conv2d":
        return g.flatten(2).transpose(1, 2)
    return g.reshape(g.shape[0], -1, g.shape[-1])


class KroneckerAccumulator:
    r"""Input and output statistics of one Kronecker block over one capture.

    Args:
        group: The layer group (``linear``, ``conv2d`` or ``embedding``).
        kfac_approx: ``"expand"`` or ``"reduce"``.
        homogeneous: Fold a trained bias into ``A`` (``[W | b]``) instead of a
            separate :math:`G \otimes 1` block.

    Raises:
        ValueError: an unknown ``kfac_approx`` or family.

    Example:
        >>> lin = nn.Linear(3, 2)
        >>> group = LayerGroup("0", "linear", (lin,), ("model.0",), lin.weight, lin.bias,
        ...                    "0.weight", "0.bias")
        >>> acc = KroneckerAccumulator(group, kfac_approx="expand", homogeneous=True)
        >>> acc.add_input(lin, torch.ones(4, 5, 3))
        0
        >>> acc.add_column([torch.ones(4, 5, 2)])
        >>> f = acc.result()
        >>> f.A.shape, f.G.tolist(), f.positions
        (torch.Size([4, 4]), [[20.0, 20.0], [20.0, 20.0]], 5.0)
    """

    def __init__(self, group: LayerGroup, *, kfac_approx: str, homogeneous: bool) -> None:
        check_kfac_approx(kfac_approx)
        if group.family not in ("linear", "conv2d", "embedding"):
            raise ValueError(f"KroneckerAccumulator handles linear, conv2d, embedding; got {group.family}")
        self.group = group
        self.approx = kfac_approx
        self.weight = group.weight is not None
        self.bias = group.bias is not None
        self.homogeneous = homogeneous and self.bias
        self.uses = 0
        self.batch: int | None = None
        self.rows = 0  # Σ_uses N·R
        self.A_sum: Tensor | None = None  # expand: Σ ã ãᵀ (or counts); reduce: Σ_r ã per sample
        self.G: Tensor | None = None
        self.columns = 0

    # ------------------------------------------------------------ forward side
    def _input_rows(self, module: nn.Module, x: Tensor) -> Tensor:
        """``(N, R, d)`` inputs incl. the homogeneous column; ``(N, R, 0)`` if only the bias trains."""
        if self.group.family == "conv2d":
            rows = layer_inputs(module, x)
        else:
            rows = x.reshape(x.shape[0], -1, x.shape[-1])
        if not self.weight:
            rows = rows[..., :0]
        if self.homogeneous or (self.bias and not self.weight):
            rows = torch.cat([rows, rows.new_ones(*rows.shape[:-1], 1)], dim=-1)
        return rows

    def _check_batch(self, n: int) -> None:
        if self.batch is None:
            self.batch = n
        elif n != self.batch:
            raise ValueError(
                f"layer {self.group.paths[0]} was called with batch sizes {self.batch} and {n} in one "
                "capture; weight sharing across calls needs the same samples in every call"
            )

    def add_input(self, module: nn.Module, x: Tensor) -> int:
        """Record one call's input (detached); returns the index of this use.

        Raises:
            ValueError: a 0-d/1-d input (no sample dimension) or a different
                batch size than an earlier call.
        """
        if x.dim() < (1 if self.group.family == "embedding" else 2):
            raise ValueError(
                f"layer {self.group.paths[0]} got an input of shape {tuple(x.shape)}; the factor "
                "engine needs a leading sample dimension"
            )
        self._check_batch(x.shape[0])
        use, self.uses = self.uses, self.uses + 1
        with torch.no_grad():
            if self.group.family == "embedding":
                self._add_tokens(module, x)
                return use
            rows = self._input_rows(module, x)
            self.rows += rows.shape[0] * rows.shape[1]
            if self.approx == "expand":
                flat = rows.reshape(-1, rows.shape[-1])
                stat = flat.T @ flat
            else:
                stat = rows.sum(dim=1)
            self.A_sum = stat if self.A_sum is None else self.A_sum + stat
        return use

    def _add_tokens(self, module: nn.Embedding, idx: Tensor) -> None:
        V = module.num_embeddings
        flat = idx.reshape(idx.shape[0], -1)
        self.rows += flat.numel()
        dtype = module.weight.dtype
        if self.approx == "expand":
            stat = torch.bincount(flat.reshape(-1), minlength=V).to(dtype)
        else:
            stat = torch.zeros(flat.shape[0], V, dtype=dtype, device=flat.device)
            stat.scatter_add_(1, flat, torch.ones_like(flat, dtype=dtype))
        if module.padding_idx is not None:
            stat[..., module.padding_idx] = 0
        self.A_sum = stat if self.A_sum is None else self.A_sum + stat

    # ----------------------------------------------------------- backward side
    def add_column(self, grads: list[Tensor | None], weight: float = 1.0) -> None:
        r"""Add one back-propagated column: ``grads[u]`` = output vector of use ``u`` (``None``: zero).

        Expand adds :math:`w \sum_{u,n,r} g g^\top`; reduce sums over
        positions and uses per sample first.
        """
        with torch.no_grad():
            total: Tensor | None = None
            for g in grads:
                if g is None:
                    continue
                rows = output_rows(self.group.family, g)
                if self.approx == "expand":
                    flat = rows.reshape(-1, rows.shape[-1])
                    term = flat.T @ flat
                else:
                    term = rows.sum(dim=1)
                total = term if total is None else total + term
            if total is None:
                return
            if self.approx == "reduce":
                total = total.T @ total
            if weight != 1.0:
                total = total * weight
            self.G = total if self.G is None else self.G + total
            self.columns += 1

    # ------------------------------------------------------------------ result
    def result(self, *, need_G: bool = True) -> LayerFactors:
        """The block's :class:`LayerFactors` (see the module docstring for the scaling).

        Raises:
            ValueError: the layer was never called, or ``need_G`` and no
                column reached it.
        """
        g = self.group
        if self.uses == 0:
            raise ValueError(
                f"layer {' / '.join(g.paths)} was not called during the capture (with autograd on); "
                "a covered module must run in every factor step"
            )
        n = self.batch
        positions = self.rows / n
        A: Tensor | None
        if not self.weight and not self.homogeneous:
            A = None  # bias only, separate layout: G ⊗ 1
        elif self.approx == "expand":
            A = self.A_sum / self.rows
        else:
            mean = self.A_sum / positions
            A = mean.T @ mean / n
        G = self.G
        if need_G and G is None:
            out = g.weight.shape[1] if g.family == "embedding" else (g.weight if g.weight is not None else g.bias).shape[0]
            ref = g.params[0]
            G = torch.zeros(out, out, dtype=ref.dtype, device=ref.device)
        params = tuple(n_ for n_ in (g.weight_name, g.bias_name) if n_ is not None)
        return LayerFactors(
            name=g.name, kind=f"kronecker-{self.approx}", params=params, A=A,
            G=G if need_G else None, homogeneous=self.homogeneous,
            weight_view="in_out" if g.family == "embedding" else "out_in",
            batch_size=n, positions=positions if self.approx == "expand" else 1.0,
        )

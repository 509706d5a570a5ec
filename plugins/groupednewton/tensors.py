r"""Exact partition tensors ḡ, H̄ and D by nested reverse-mode autodiff.

For parameters :math:`\theta` split into subsets :math:`\theta_1, \dots,
\theta_S` and a direction :math:`u = (u_1, \dots, u_S)`, let
:math:`f(t) = L(\theta + \sum_s t_s u_s)` for :math:`t \in \mathbb R^S`
(:math:`u_s` is zero outside subset :math:`s`). The partition tensors are
the derivatives of :math:`f` at :math:`t = 0`:

.. math::

    \bar g_s = \nabla_{\theta_s} L \cdot u_s, \qquad
    \bar H_{ij} = u_i^\top H_{ij} u_j, \qquad
    D_{ijk} = D^3 L[u_i, u_j, u_k].

They are computed exactly (no approximation) by differentiating the loss
graph again and again:

1. one reverse pass with ``create_graph`` gives :math:`g = \nabla L`, and
   :math:`\bar g_s = \sum_{p \in s} \langle g_p, u_p \rangle`;
2. for each :math:`j`, :math:`\nabla_\theta \bar g_j = H u_j` (one reverse
   pass), and :math:`\bar H_{ij} = \langle (H u_j)_i, u_i \rangle`;
3. for each :math:`j`, :math:`D_{jjj} = \nabla_{\theta_j} \bar H_{jj} \cdot
   u_j` (one reverse pass); the full tensor needs
   :math:`\nabla_\theta \bar H_{ij}` for every :math:`i \le j`
   (:math:`S(S+1)/2` passes instead of :math:`S`).

Cost: about :math:`2S + 1` reverse passes over the (growing) double-backward
graph for order 3, :math:`S + 1` for order 2. Results are returned in
float64 (the S×S algebra downstream is always float64) whatever the model's
dtype.

When the loss is exactly quadratic along the directions (e.g. least
squares with a linear model), :math:`\bar H` has no autograd graph and the
third derivative is exactly zero; this is detected (``requires_grad`` is
``False``) and D is set to 0 instead of raising.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["PartitionTensors", "partition_tensors"]


@dataclass(frozen=True)
class PartitionTensors:
    """The tensors of one computation, in float64.

    Attributes:
        gbar: ḡ, shape ``(S,)``.
        hbar: H̄, shape ``(S, S)``, symmetric.
        d: Third-order tensor: its diagonal ``D_sss`` (shape ``(S,)``), the
            full tensor (``(S, S, S)``), or ``None`` (order 2).

    Example:
        >>> t = PartitionTensors(torch.zeros(2), torch.eye(2), None)
        >>> t.num_subsets
        2
    """

    gbar: Tensor
    hbar: Tensor
    d: Tensor | None

    @property
    def num_subsets(self) -> int:
        """S, the number of subsets."""
        return int(self.gbar.shape[0])

    @property
    def d_diag(self) -> Tensor | None:
        """The diagonal ``D_sss`` whether the full tensor or only the diagonal was computed."""
        if self.d is None or self.d.dim() == 1:
            return self.d
        idx = torch.arange(self.num_subsets)
        return self.d[idx, idx, idx]


def _grad(out: Tensor, inputs: Sequence[Tensor], *, create_graph: bool) -> list[Tensor]:
    """∂out/∂inputs with zeros for unused inputs or a graph-less ``out``."""
    if not out.requires_grad:
        return [torch.zeros_like(x) for x in inputs]
    grads = torch.autograd.grad(
        out, list(inputs), retain_graph=True, create_graph=create_graph, allow_unused=True
    )
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def _dot(a: Sequence[Tensor], b: Sequence[Tensor], idx: Sequence[int]) -> Tensor:
    """Σ_{k ∈ idx} ⟨a_k, b_k⟩ as a 0-dim tensor (graph kept)."""
    terms = [(a[k] * b[k]).sum() for k in idx]
    return torch.stack(terms).sum() if terms else a[0].new_zeros(())


def partition_tensors(
    loss: Tensor,
    params: Sequence[Tensor],
    directions: Sequence[Tensor],
    subsets: Sequence[Sequence[int]],
    *,
    order: int = 3,
    full: bool = False,
) -> PartitionTensors:
    r"""Compute ḡ, H̄ and (order 3) D of ``loss`` along ``directions``.

    See the module docstring for the formulas and the cost.

    Args:
        loss: Scalar loss WITH its autograd graph (e.g. a closure called
            with ``backward=False``).
        params: Parameters (leaves requiring grad) the loss depends on.
        directions: One detached tensor per parameter, same shapes
            (:math:`u`).
        subsets: The partition: for each subset the indices into ``params``.
        order: 2 (ḡ, H̄) or 3 (also the third-order tensor).
        full: With order 3, compute the full ``(S, S, S)`` tensor instead
            of its diagonal (S(S+1)/2 reverse passes instead of S).

    Returns:
        :class:`PartitionTensors` in float64.

    Raises:
        ValueError: ``order`` not in {2, 3}, ``loss`` not scalar, or
            ``params``/``directions`` of different lengths.

    Example:
        >>> w = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
        >>> loss = (w ** 3).sum() / 6          # g = w²/2, H = diag(w), D_iii = 1
        >>> t = partition_tensors(loss, [w], [torch.ones(2, dtype=torch.float64)], [[0]])
        >>> t.gbar.tolist(), t.hbar.tolist(), t.d.tolist()
        ([2.5], [[3.0]], [2.0])
    """
    if order not in (2, 3):
        raise ValueError(f"order must be 2 or 3, got {order!r}")
    if loss.dim() != 0:
        raise ValueError(f"loss must be a scalar, got shape {tuple(loss.shape)}")
    if len(params) != len(directions):
        raise ValueError(
            f"params and directions must have equal lengths, got {len(params)} and {len(directions)}"
        )
    S = len(subsets)
    third = order == 3
    grads = _grad(loss, params, create_graph=True)
    gbar = [_dot(grads, directions, s) for s in subsets]

    hbar = torch.zeros(S, S, dtype=torch.float64)
    keep: dict[tuple[int, int], Tensor] = {}  # H̄ entries with graph, for D
    for j in range(S):
        hu = _grad(gbar[j], params, create_graph=third)
        for i in range(S):
            hij = _dot(hu, directions, subsets[i])
            hbar[i, j] = hij.detach().to(torch.float64)
            if third and (i == j or (full and i < j)):
                keep[(i, j)] = hij
    hbar = 0.5 * (hbar + hbar.T)
    gvec = torch.stack([x.detach().to(torch.float64) for x in gbar])
    if not third:
        return PartitionTensors(gvec, hbar, None)

    if not full:
        d = torch.zeros(S, dtype=torch.float64)
        for j in range(S):
            idx = list(subsets[j])
            sub = [params[k] for k in idx]
            dj = _grad(keep[(j, j)], sub, create_graph=False)
            d[j] = sum(float((dj[n] * directions[k]).sum(dtype=torch.float64)) for n, k in enumerate(idx))
        return PartitionTensors(gvec, hbar, d)

    d = torch.zeros(S, S, S, dtype=torch.float64)
    for (i, j), hij in keep.items():
        dh = _grad(hij, params, create_graph=False)
        for k in range(S):
            v = float(_dot(dh, directions, subsets[k]).detach().to(torch.float64))
            for a, b, c in {(i, j, k), (j, i, k), (i, k, j), (k, i, j), (j, k, i), (k, j, i)}:
                d[a, b, c] = v
    return PartitionTensors(gvec, hbar, d)

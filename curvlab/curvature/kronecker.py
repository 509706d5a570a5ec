r"""Kronecker-factored curvature blocks: :math:`G \otimes A` and the matrix view of a gradient.

A layer's parameters (weight ``(out, in, *kernel)``, optionally the bias)
are viewed as one matrix :math:`M` of shape ``(out, d)``: the weight
flattened to ``(out, in·k)``, the bias a column ``(out, 1)``. A curvature
block over :math:`\operatorname{vec}(M)` (row-major, torch's layout) is
approximated as :math:`G \otimes A` with :math:`G` ``(out, out)`` the
output-side and :math:`A` ``(d, d)`` the input-side factor, so that

.. math::

    (G \otimes A)\operatorname{vec}(M) = \operatorname{vec}(G M A^\top),
    \qquad (G \otimes A)^{-1} \operatorname{vec}(M) = \operatorname{vec}(G^{-1} M A^{-1})

(symmetric factors). Either factor may be the identity (``None``): a bias
on its own is :math:`G \otimes 1`; FOOF is K-FAC with :math:`G = I`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["KroneckerBlock", "block_matrix", "kron_dense", "kron_precondition", "split_matrix"]


@dataclass(frozen=True)
class KroneckerBlock:
    r"""One Kronecker-factored block :math:`G \otimes A` over some parameters of a layer.

    Args:
        name: Key of the block's state (e.g. ``"0.weight"``, ``"0.bias"``,
            or the layer name ``"0"`` when the bias is folded into ``A``).
        params: The parameters whose matrix view the block acts on, in
            column order (weight first, then bias).
        factors: Which factors the block has: ``("G", "A")``, ``("G",)``
            (a bias block) or ``("A",)`` (FOOF: :math:`G = I`).

    Example:
        >>> lin = torch.nn.Linear(3, 2)
        >>> KroneckerBlock("0", (lin.weight, lin.bias), ("A",)).factors
        ('A',)
    """

    name: str
    params: tuple[Tensor, ...]
    factors: tuple[str, ...]


def block_matrix(tensors: Sequence[Tensor]) -> Tensor:
    """Matrix view ``(out, d)`` of per-parameter tensors (weight, bias, ...) side by side.

    Args:
        tensors: Tensors with the same leading size ``out`` (e.g. gradients
            of a weight ``(out, in, kh, kw)`` and a bias ``(out,)``).

    Returns:
        ``torch.cat([t.reshape(out, -1) for t in tensors], dim=1)``; for a
        single tensor its reshape (a view where possible, no copy).

    Example:
        >>> block_matrix([torch.ones(2, 3), torch.zeros(2)])
        tensor([[1., 1., 1., 0.],
                [1., 1., 1., 0.]])
    """
    out = tensors[0].shape[0]
    if len(tensors) == 1:
        return tensors[0].reshape(out, -1)
    return torch.cat([t.reshape(out, -1) for t in tensors], dim=1)


def split_matrix(M: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Inverse of :func:`block_matrix`: cut ``M`` into tensors shaped like ``like``.

    Example:
        >>> w, b = split_matrix(torch.arange(8.0).reshape(2, 4), [torch.ones(2, 3), torch.ones(2)])
        >>> b
        tensor([3., 7.])
    """
    out = M.shape[0]
    if len(like) == 1:
        return [M.reshape(like[0].shape)]
    sizes = [t.numel() // out for t in like]
    return [c.reshape(t.shape) for c, t in zip(torch.split(M, sizes, dim=1), like)]


def kron_precondition(M: Tensor, G_inv: Tensor | None, A_inv: Tensor | None) -> Tensor:
    r""":math:`G^{-1} M A^{-1}`, i.e. :math:`(G \otimes A)^{-1}\operatorname{vec}(M)` reshaped.

    Args:
        M: Matrix view ``(out, d)`` of a gradient.
        G_inv: ``(out, out)`` or ``None`` (identity).
        A_inv: ``(d, d)`` or ``None`` (identity).

    Returns:
        The preconditioned matrix, ``(out, d)``, in ``M``'s dtype; always a
        new tensor (never ``M`` itself), so callers may scale it in place.

    Example:
        >>> kron_precondition(torch.ones(2, 2), 2 * torch.eye(2), None)
        tensor([[2., 2.],
                [2., 2.]])
    """
    if G_inv is None and A_inv is None:
        return M.clone()
    out = M
    if G_inv is not None:
        out = (G_inv if G_inv.dtype == M.dtype else G_inv.to(M.dtype)) @ out
    if A_inv is not None:
        out = out @ (A_inv if A_inv.dtype == M.dtype else A_inv.to(M.dtype))
    return out


def kron_dense(G: Tensor | None, A: Tensor | None, out: int = 1, d: int = 1) -> Tensor:
    r"""Dense :math:`G \otimes A` (row-major vec convention), for tests and small blocks.

    Args:
        G: ``(out, out)`` or ``None`` (identity of size ``out``).
        A: ``(d, d)`` or ``None`` (identity of size ``d``).
        out: Size of the identity standing in for ``G``.
        d: Size of the identity standing in for ``A``.

    Returns:
        ``torch.kron(G, A)``, shape ``(out·d, out·d)``.

    Example:
        >>> kron_dense(torch.eye(2), torch.tensor([[2.0]])).diagonal()
        tensor([2., 2.])
    """
    ref = G if G is not None else A
    kw = {"dtype": ref.dtype, "device": ref.device} if ref is not None else {}
    G = G if G is not None else torch.eye(out, **kw)
    A = A if A is not None else torch.eye(d, **kw)
    return torch.kron(G, A)

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

Three views (:data:`VIEWS`) cover the block types of
:mod:`~curvlab.curvature.block_plan`:

* ``"out_in"`` (``Linear``, ``Conv2d``): the matrix above, left factor
  :math:`G`, right factor :math:`A`;
* ``"in_out"`` (``Embedding``): the weight ``(V, D)`` itself, whose rows are
  indexed by the *input* (token) side, so the block is :math:`A \otimes G`
  with left factor :math:`A` (``(V,)``, a diagonal kept as a vector, for
  *expand*; ``(V, V)`` for *reduce*) and right factor :math:`G` ``(D, D)``:
  :math:`(A \otimes G)^{-1}\operatorname{vec}(M) = \operatorname{vec}(A^{-1} M G^{-1})`;
* ``"unit"`` (affine norm layers): the ``k ≤ 2`` trainable vectors
  (:math:`\gamma`, :math:`\beta`) side by side, ``(U, k)``, and one
  ``k × k`` block per unit (row): factor ``"U"`` of shape ``(U, k, k)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "VIEWS",
    "KroneckerBlock",
    "block_matrix",
    "kron_dense",
    "kron_precondition",
    "split_matrix",
    "unit_precondition",
]

#: The matrix views of a block (see the module docstring).
VIEWS = ("out_in", "in_out", "unit")


@dataclass(frozen=True)
class KroneckerBlock:
    r"""One Kronecker-factored block :math:`G \otimes A` over some parameters of a layer.

    Args:
        name: Key of the block's state (e.g. ``"0.weight"``, ``"0.bias"``,
            or the layer name ``"0"`` when the bias is folded into ``A``).
        params: The parameters whose matrix view the block acts on, in
            column order (weight first, then bias).
        factors: Which factors the block has: ``("G", "A")``, ``("G",)``
            (a bias block) or ``("A",)`` (FOOF: :math:`G = I`); ``("U",)``
            for the ``"unit"`` view.
        view: ``"out_in"`` (default), ``"in_out"`` or ``"unit"`` (module docstring).

    Raises:
        ValueError: an unknown ``view``, or factors that do not fit it.

    Example:
        >>> lin = torch.nn.Linear(3, 2)
        >>> KroneckerBlock("0", (lin.weight, lin.bias), ("A",)).factors
        ('A',)
        >>> KroneckerBlock("1", (lin.bias,), ("U",), view="unit").view
        'unit'
    """

    name: str
    params: tuple[Tensor, ...]
    factors: tuple[str, ...]
    view: str = "out_in"

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {self.view!r}")
        allowed = {"U"} if self.view == "unit" else {"A", "G"}
        if not self.factors or not set(self.factors) <= allowed:
            raise ValueError(f"block {self.name!r}: view {self.view!r} takes factors from "
                             f"{sorted(allowed)}, got {self.factors}")

    @property
    def sides(self) -> tuple[str, str]:
        """``(left, right)`` factor names of a Kronecker view (``("G", "A")`` for ``out_in``)."""
        return ("A", "G") if self.view == "in_out" else ("G", "A")


def block_matrix(tensors: Sequence[Tensor], view: str = "out_in") -> Tensor:
    """Matrix view ``(out, d)`` of per-parameter tensors (weight, bias, ...) side by side.

    Args:
        tensors: Tensors with the same leading size ``out`` (e.g. gradients
            of a weight ``(out, in, kh, kw)`` and a bias ``(out,)``); for
            ``view="unit"`` tensors with the same number of entries ``U``.
        view: ``"out_in"``/``"in_out"`` (the same layout) or ``"unit"``.

    Returns:
        ``torch.cat([t.reshape(out, -1) for t in tensors], dim=1)``; for a
        single tensor its reshape (a view where possible, no copy);
        ``"unit"``: ``(U, k)``, column ``j`` the flattened ``tensors[j]``.

    Example:
        >>> block_matrix([torch.ones(2, 3), torch.zeros(2)])
        tensor([[1., 1., 1., 0.],
                [1., 1., 1., 0.]])
        >>> block_matrix([torch.ones(3), torch.zeros(3)], view="unit").shape
        torch.Size([3, 2])
    """
    if view == "unit":
        return torch.stack([t.reshape(-1) for t in tensors], dim=1)
    out = tensors[0].shape[0]
    if len(tensors) == 1:
        return tensors[0].reshape(out, -1)
    return torch.cat([t.reshape(out, -1) for t in tensors], dim=1)


def split_matrix(M: Tensor, like: Sequence[Tensor], view: str = "out_in") -> list[Tensor]:
    """Inverse of :func:`block_matrix`: cut ``M`` into tensors shaped like ``like``.

    Example:
        >>> w, b = split_matrix(torch.arange(8.0).reshape(2, 4), [torch.ones(2, 3), torch.ones(2)])
        >>> b
        tensor([3., 7.])
    """
    if view == "unit":
        return [c.reshape(t.shape) for c, t in zip(M.unbind(1), like)]
    out = M.shape[0]
    if len(like) == 1:
        return [M.reshape(like[0].shape)]
    sizes = [t.numel() // out for t in like]
    return [c.reshape(t.shape) for c, t in zip(torch.split(M, sizes, dim=1), like)]


def kron_precondition(M: Tensor, G_inv: Tensor | None, A_inv: Tensor | None) -> Tensor:
    r""":math:`G^{-1} M A^{-1}`, i.e. :math:`(G \otimes A)^{-1}\operatorname{vec}(M)` reshaped.

    Args:
        M: Matrix view ``(out, d)`` of a gradient.
        G_inv: Left factor's inverse ``(out, out)``, its diagonal ``(out,)``,
            or ``None`` (identity).
        A_inv: Right factor's inverse ``(d, d)``, its diagonal ``(d,)``, or ``None``.

    Returns:
        The preconditioned matrix, ``(out, d)``, in ``M``'s dtype; always a
        new tensor (never ``M`` itself), so callers may scale it in place.

    Example:
        >>> kron_precondition(torch.ones(2, 2), 2 * torch.eye(2), None)
        tensor([[2., 2.],
                [2., 2.]])
        >>> kron_precondition(torch.ones(2, 2), torch.tensor([1.0, 3.0]), None)
        tensor([[1., 1.],
                [3., 3.]])
    """
    if G_inv is None and A_inv is None:
        return M.clone()
    out = M
    if G_inv is not None:
        G_inv = G_inv if G_inv.dtype == M.dtype else G_inv.to(M.dtype)
        out = G_inv[:, None] * out if G_inv.dim() == 1 else G_inv @ out
    if A_inv is not None:
        A_inv = A_inv if A_inv.dtype == M.dtype else A_inv.to(M.dtype)
        out = out * A_inv if A_inv.dim() == 1 else out @ A_inv
    return out


def unit_precondition(M: Tensor, U_inv: Tensor) -> Tensor:
    r"""Row :math:`i` of ``M`` times its block's inverse: :math:`V_i = U_i^{-1} M_i`.

    Args:
        M: ``(U, k)`` unit view of a gradient (:func:`block_matrix` with ``view="unit"``).
        U_inv: ``(U, k, k)`` inverses of the unit blocks.

    Returns:
        ``(U, k)``, a new tensor in ``M``'s dtype.

    Example:
        >>> unit_precondition(torch.ones(2, 1), torch.tensor([[[2.0]], [[0.5]]]))
        tensor([[2.0000],
                [0.5000]])
    """
    U_inv = U_inv if U_inv.dtype == M.dtype else U_inv.to(M.dtype)
    return torch.einsum("ukl,ul->uk", U_inv, M)


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

r"""Per-layer vectors of different lengths handled as one concatenated vector.

K-BFGS keeps, for every layer :math:`b`, vectors :math:`s_b, y_b` of the
layer's own width. Their scalar algebra (inner products, damping factors)
is tiny; done layer by layer it costs dozens of small tensor operations per
layer and step. :class:`Blocks` concatenates the vectors into one of length
:math:`D = \sum_b d_b` and computes the per-layer inner products as segment
sums, :math:`(u^\top v)_b = \sum_{j \in b} u_j v_j` (one ``index_add`` for any
number of pairs), so the algebra runs as a few operations for all layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["Blocks"]


class Blocks:
    """The layout of ``n`` blocks of lengths ``dims`` in one concatenated vector.

    Args:
        dims: Length of each block.
        device: Device of the index tensor.

    Raises:
        ValueError: no block, or a block of length < 1.

    Example:
        >>> blocks = Blocks([2, 1])
        >>> u, v = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 1.0, 2.0])
        >>> blocks.dots([(u, v), (u, u)]).tolist()
        [[3.0, 5.0], [6.0, 9.0]]
        >>> [t.tolist() for t in blocks.split(u)], blocks.expand(torch.tensor([1.0, 0.0])).tolist()
        ([[1.0, 2.0], [3.0]], [1.0, 1.0, 0.0])
    """

    def __init__(self, dims: Sequence[int], device: torch.device | str | None = None) -> None:
        if not dims or min(dims) < 1:
            raise ValueError(f"Blocks needs at least one block, each of length >= 1; got {list(dims)}")
        self.dims = [int(d) for d in dims]
        self.n = len(self.dims)
        self.index = torch.repeat_interleave(
            torch.arange(self.n, device=device), torch.tensor(self.dims, device=device)
        )

    def dots(self, pairs: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
        r"""Inner products within each block, ``(n, len(pairs))``.

        Args:
            pairs: ``(u, v)`` pairs of concatenated vectors, each ``(D,)``.

        Returns:
            Entry ``[b, i]`` is :math:`u_b^\top v_b` for pair ``i``.
        """
        prods = torch.stack([u * v for u, v in pairs], dim=1)
        out = torch.zeros(self.n, len(pairs), dtype=prods.dtype, device=prods.device)
        return out.index_add_(0, self.index, prods)

    def expand(self, values: Tensor) -> Tensor:
        """One value per block ``(n,)`` repeated over the block's entries, ``(D,)``."""
        return values[self.index]

    def split(self, flat: Tensor) -> list[Tensor]:
        """Views of the blocks of a concatenated vector."""
        return list(torch.split(flat, self.dims))

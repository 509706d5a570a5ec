r"""Tikhonov damping of a Kronecker product: how to split λ between the factors.

Damping a Kronecker-factored block :math:`G \otimes A` by :math:`\lambda I`
exactly would destroy the Kronecker structure; K-FAC instead damps each
factor, :math:`(G + \lambda_G I) \otimes (A + \lambda_A I)`, with
:math:`\lambda_A \lambda_G = \lambda` (Martens & Grosse 2015, §6.3):

* ``"pi"`` (the π-heuristic): :math:`\pi = \sqrt{\frac{\operatorname{tr} A / \dim A}
  {\operatorname{tr} G / \dim G}}`, :math:`\lambda_A = \pi \sqrt\lambda`,
  :math:`\lambda_G = \sqrt\lambda / \pi` (it balances the factors' scales;
  the product of the damped factors then contains :math:`\lambda I` with the
  same weight as the cross terms);
* ``"equal"``: :math:`\lambda_A = \lambda_G = \sqrt\lambda`.

A block with a single factor (the other one is the identity, e.g. a bias
block :math:`G \otimes 1`, or FOOF, which is K-FAC with :math:`G = I`) is
damped exactly: the lone factor gets all of :math:`\lambda`. A factor kept
as a vector (an ``Embedding``'s diagonal :math:`A`) has
:math:`\operatorname{tr}A/\dim A` = the mean of the vector
(:func:`mean_trace`), so π is defined the same way for every block type.
"""

from __future__ import annotations

import math

from torch import Tensor

__all__ = ["HEURISTICS", "mean_trace", "pi_factor", "split_damping"]

HEURISTICS = ("pi", "equal")


def mean_trace(F: Tensor) -> float:
    r""":math:`\operatorname{tr}F/\dim F`: the mean eigenvalue of a factor.

    ``F`` is a matrix ``(n, n)``, a vector ``(n,)`` (the diagonal of a
    diagonal matrix) or a stack ``(b, k, k)`` of blocks (the block-diagonal
    matrix they form).

    Example:
        >>> import torch
        >>> mean_trace(torch.diag(torch.tensor([1.0, 3.0]))), mean_trace(torch.tensor([1.0, 3.0]))
        (2.0, 2.0)
    """
    diag = F if F.dim() == 1 else F.diagonal(dim1=-2, dim2=-1)
    return float(diag.sum()) / diag.numel()


def pi_factor(A: Tensor, G: Tensor) -> float:
    r"""The π of the π-heuristic, :math:`\sqrt{(\operatorname{tr}A/\dim A) / (\operatorname{tr}G/\dim G)}`.

    Args:
        A: Input-side factor, shape ``(a, a)`` or its diagonal ``(a,)``.
        G: Output-side factor, shape ``(g, g)`` or its diagonal ``(g,)``.

    Returns:
        π as a float; ``1.0`` when either mean trace is not positive and
        finite (a dead layer, an all-zero factor), so damping stays defined.

    Example:
        >>> import torch
        >>> pi_factor(4 * torch.eye(2), torch.eye(3))
        2.0
    """
    ta, tg = mean_trace(A), mean_trace(G)
    if not (ta > 0 and tg > 0 and math.isfinite(ta) and math.isfinite(tg)):
        return 1.0
    return math.sqrt(ta / tg)


def split_damping(
    damping: float, A: Tensor | None, G: Tensor | None, heuristic: str = "pi"
) -> tuple[float, float]:
    r"""Split :math:`\lambda` into :math:`(\lambda_A, \lambda_G)` for :math:`(G+\lambda_G I) \otimes (A+\lambda_A I)`.

    Args:
        damping: :math:`\lambda > 0`.
        A: Input-side factor or ``None`` (identity, undamped).
        G: Output-side factor or ``None`` (identity, undamped).
        heuristic: ``"pi"`` or ``"equal"`` (ignored for single-factor blocks).

    Returns:
        ``(λ_A, λ_G)``; the side that is the identity gets ``0.0`` and the
        other side all of :math:`\lambda`.

    Raises:
        ValueError: ``damping`` not > 0, unknown ``heuristic``, or both factors ``None``.

    Example:
        >>> import torch
        >>> split_damping(0.01, 4 * torch.eye(2), torch.eye(3))
        (0.2, 0.05)
        >>> split_damping(0.01, 4 * torch.eye(2), None)
        (0.01, 0.0)
        >>> split_damping(0.01, torch.eye(2), torch.eye(2), "equal")
        (0.1, 0.1)
    """
    if not damping > 0:
        raise ValueError(f"damping must be > 0, got {damping!r}")
    if heuristic not in HEURISTICS:
        raise ValueError(f"damping heuristic must be one of {HEURISTICS}, got {heuristic!r}")
    if A is None and G is None:
        raise ValueError("split_damping needs at least one factor, got A = G = None")
    if G is None:
        return damping, 0.0
    if A is None:
        return 0.0, damping
    root = math.sqrt(damping)
    if heuristic == "equal":
        return root, root
    pi = pi_factor(A, G)
    return pi * root, root / pi

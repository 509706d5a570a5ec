r"""Exact Tikhonov damping of a Kronecker block through the factors' eigenbases.

K-FAC's usual damping adds :math:`\lambda_L I` and :math:`\lambda_R I` to
the two factors (:mod:`~curvlab.curvature.tikhonov`), which damps the
block :math:`L \otimes R` by :math:`\lambda_L R + \lambda_R L + \lambda_L\lambda_R`,
not by :math:`\lambda I`. *Standard* damping (Martens & Grosse 2015, Sec. 6.3;
Benzing 2022, Sec. 4) solves with :math:`L \otimes R + \lambda I` itself.
With eigendecompositions :math:`L = Q_L \operatorname{diag}(l) Q_L^\top`,
:math:`R = Q_R \operatorname{diag}(r) Q_R^\top` the block is
:math:`(Q_L \otimes Q_R)\operatorname{diag}(l \otimes r + \lambda)(Q_L \otimes Q_R)^\top`, so
for the row-major matrix view :math:`M` of the gradient
(:mod:`~curvlab.curvature.kronecker`)

.. math::

    (L \otimes R + \lambda I)^{-1}\operatorname{vec}(M)
    = \operatorname{vec}\Big(Q_L \big[(Q_L^\top M Q_R) \oslash (l\, r^\top + \lambda)\big] Q_R^\top\Big),

with :math:`\oslash` elementwise division: two eigendecompositions per
inversion, four matrix products per step. A factor given as a vector is a
diagonal (an ``Embedding``'s token frequencies): its eigenbasis is the
identity. Eigenvalues are clamped at 0 (round-off can make a PSD factor's
smallest ones slightly negative), so :math:`l r^\top + \lambda \ge \lambda > 0`.

Example:
    >>> L, R = torch.diag(torch.tensor([1.0, 2.0])), torch.tensor([3.0])
    >>> damped_kron_solve(torch.ones(2, 1), eigen_factor(L), eigen_factor(R), 1.0)
    tensor([[0.2500],
            [0.1429]])
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["EigenFactor", "damped_kron_solve", "eigen_factor"]

#: ``(eigenvalues, eigenvectors or None for a diagonal factor)``.
EigenFactor = tuple[Tensor, Tensor | None]


def eigen_factor(F: Tensor, compute_dtype: torch.dtype | None = None) -> EigenFactor:
    """``(eigenvalues ≥ 0, eigenvectors)`` of a symmetric PSD factor (``None`` vectors for a diagonal vector).

    Args:
        F: ``(n, n)`` symmetric PSD matrix, or ``(n,)`` its diagonal.
        compute_dtype: Dtype of the eigendecomposition (``None``: ``F``'s);
            the results are cast back to ``F``'s dtype.

    Raises:
        torch.linalg.LinAlgError: the eigendecomposition did not converge.

    Example:
        >>> vals, vecs = eigen_factor(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
        >>> vals
        tensor([1., 2.])
    """
    if F.dim() == 1:
        return F.clamp(min=0), None
    X = F if compute_dtype is None else F.to(compute_dtype)
    vals, vecs = torch.linalg.eigh((X + X.T) / 2)
    return vals.clamp(min=0).to(F.dtype), vecs.to(F.dtype)


def damped_kron_solve(M: Tensor, left: EigenFactor, right: EigenFactor, damping: float) -> Tensor:
    r""":math:`V` with :math:`\operatorname{vec}(V) = (L \otimes R + \lambda I)^{-1}\operatorname{vec}(M)` (module docstring).

    Args:
        M: ``(n_L, n_R)`` matrix view of the gradient.
        left: :func:`eigen_factor` of :math:`L` (``n_L``).
        right: :func:`eigen_factor` of :math:`R` (``n_R``).
        damping: :math:`\lambda > 0`.

    Returns:
        ``V``, shaped like ``M`` (a new tensor).

    Example:
        >>> A = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
        >>> V = damped_kron_solve(torch.eye(2), eigen_factor(A), eigen_factor(torch.eye(2)), 1.0)
        >>> torch.allclose(V, torch.linalg.inv(A + torch.eye(2)))
        True
    """
    (l_vals, l_vecs), (r_vals, r_vecs) = left, right
    X = M if l_vecs is None else l_vecs.T @ M
    X = X if r_vecs is None else X @ r_vecs
    X = X / (l_vals[:, None] * r_vals[None, :] + damping)
    X = X if l_vecs is None else l_vecs @ X
    return X if r_vecs is None else X @ r_vecs.T

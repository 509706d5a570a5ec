r"""Safe inverses of damped symmetric PSD matrices, :math:`(M + \lambda I)^{-1}`.

Curvature factors are symmetric positive semi-definite in exact arithmetic
but, accumulated in float32, can be slightly indefinite. Two methods:

* ``"cholesky"``: :math:`M + \lambda I = L L^\top`,
  :math:`(M+\lambda I)^{-1} = L^{-\top} L^{-1}` (fast);
* ``"eigh"``: :math:`M = Q \operatorname{diag}(e) Q^\top`, negative
  eigenvalues clipped to 0 (projection onto the PSD cone), then
  :math:`Q \operatorname{diag}(1/(e_+ + \lambda)) Q^\top` (robust).

A vector ``M`` stands for the diagonal matrix :math:`\operatorname{diag}(M)`
(an ``Embedding``'s token counts): :math:`1/(\max(M, 0) + \lambda)` entry by
entry. A stack ``(..., n, n)`` (unit-wise blocks of a norm layer) is inverted
block by block in one batched call.

Numerics: the factorisation runs in ``compute_dtype`` (default: the
matrix's own dtype). If it fails (not positive definite, non-finite result)
and it did not already run in float64, it is retried in float64 with a
:class:`InverseFallbackWarning`; the result is returned in the input's
dtype. The result is symmetrised, :math:`(X + X^\top)/2`.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

__all__ = ["METHODS", "InverseFallbackWarning", "damped_inverse"]

METHODS = ("cholesky", "eigh")


class InverseFallbackWarning(RuntimeWarning):
    """A damped inverse failed in the working precision and was recomputed in float64."""


def _inverse(M: Tensor, damping: float, method: str) -> Tensor:
    if M.dim() == 1:
        inv = 1.0 / (M.clamp(min=0) + damping)
        if not bool(torch.isfinite(inv).all()):
            raise torch.linalg.LinAlgError("non-finite inverse")
        return inv
    eye = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)
    sym = 0.5 * (M + M.mT)
    if method == "cholesky":
        L, info = torch.linalg.cholesky_ex(sym + damping * eye)
        if bool((info != 0).any()):
            raise torch.linalg.LinAlgError(f"Cholesky failed (leading minor {int(info.max())})")
        inv = torch.cholesky_inverse(L)
    else:
        evals, evecs = torch.linalg.eigh(sym)
        inv = (evecs / (evals.clamp(min=0) + damping).unsqueeze(-2)) @ evecs.mT
    inv = 0.5 * (inv + inv.mT)
    if not bool(torch.isfinite(inv).all()):
        raise torch.linalg.LinAlgError("non-finite inverse")
    return inv


def damped_inverse(
    M: Tensor,
    damping: float,
    *,
    method: str = "cholesky",
    compute_dtype: torch.dtype | None = None,
) -> Tensor:
    r""":math:`(M + \lambda I)^{-1}` of a symmetric PSD matrix, with a float64 retry.

    Args:
        M: Square matrix ``(n, n)``, symmetric PSD up to round-off; a stack
            ``(b, n, n)`` of them; or a vector ``(n,)`` (a diagonal matrix).
        damping: :math:`\lambda \ge 0` (``0`` needs ``M`` positive definite).
        method: ``"cholesky"`` or ``"eigh"`` (see the module docstring).
        compute_dtype: Dtype of the factorisation (e.g. ``torch.float64``
            for float32 factors); default ``M.dtype``.

    Returns:
        The inverse, shaped like ``M`` (a vector for a vector), in ``M``'s dtype.

    Raises:
        ValueError: ``M`` not square (or a stack of squares, or a vector),
            negative ``damping``, unknown ``method``.
        torch.linalg.LinAlgError: the inverse fails even in float64 (e.g. NaN in ``M``).

    Example:
        >>> import torch
        >>> damped_inverse(torch.tensor([[3.0, 0.0], [0.0, 1.0]]), 1.0).diagonal()
        tensor([0.2500, 0.5000])
        >>> damped_inverse(torch.diag(torch.tensor([-1e-9, 1.0])), 0.5, method="eigh")
        tensor([[2.0000, 0.0000],
                [0.0000, 0.6667]])
        >>> damped_inverse(torch.tensor([3.0, 0.0]), 1.0)
        tensor([0.2500, 1.0000])
        >>> damped_inverse(torch.eye(2).expand(3, 2, 2), 1.0).shape
        torch.Size([3, 2, 2])
    """
    if M.dim() == 0 or (M.dim() >= 2 and M.shape[-1] != M.shape[-2]) or M.dim() > 3:
        raise ValueError(f"M must be a square matrix, a stack of them or a vector, got shape {tuple(M.shape)}")
    if not damping >= 0:
        raise ValueError(f"damping must be >= 0, got {damping!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    dtype = compute_dtype or M.dtype
    try:
        return _inverse(M.to(dtype), damping, method).to(M.dtype)
    except torch.linalg.LinAlgError as err:
        if dtype == torch.float64:
            raise
        warnings.warn(
            f"damped_inverse: {method} in {dtype} failed ({err}); retrying in float64",
            InverseFallbackWarning,
            stacklevel=2,
        )
        return _inverse(M.to(torch.float64), damping, method).to(M.dtype)

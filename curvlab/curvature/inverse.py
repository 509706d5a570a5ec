r"""Safe inverses of damped symmetric PSD matrices, :math:`(M + \lambda I)^{-1}`.

Curvature factors are symmetric positive semi-definite in exact arithmetic
but, accumulated in float32, can be slightly indefinite. Two methods:

* ``"cholesky"``: :math:`M + \lambda I = L L^\top`,
  :math:`(M+\lambda I)^{-1} = L^{-\top} L^{-1}` (fast);
* ``"eigh"``: :math:`M = Q \operatorname{diag}(e) Q^\top`, negative
  eigenvalues clipped to 0 (projection onto the PSD cone), then
  :math:`Q \operatorname{diag}(1/(e_+ + \lambda)) Q^\top` (robust).

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
    eye = torch.eye(M.shape[0], dtype=M.dtype, device=M.device)
    sym = 0.5 * (M + M.T)
    if method == "cholesky":
        L, info = torch.linalg.cholesky_ex(sym + damping * eye)
        if int(info) != 0:
            raise torch.linalg.LinAlgError(f"Cholesky failed (leading minor {int(info)})")
        inv = torch.cholesky_inverse(L)
    else:
        evals, evecs = torch.linalg.eigh(sym)
        inv = (evecs / (evals.clamp(min=0) + damping)) @ evecs.T
    inv = 0.5 * (inv + inv.T)
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
        M: Square matrix, shape ``(n, n)``, symmetric PSD up to round-off.
        damping: :math:`\lambda \ge 0` (``0`` needs ``M`` positive definite).
        method: ``"cholesky"`` or ``"eigh"`` (see the module docstring).
        compute_dtype: Dtype of the factorisation (e.g. ``torch.float64``
            for float32 factors); default ``M.dtype``.

    Returns:
        The inverse, shape ``(n, n)``, in ``M``'s dtype.

    Raises:
        ValueError: ``M`` not square, negative ``damping``, unknown ``method``.
        torch.linalg.LinAlgError: the inverse fails even in float64 (e.g. NaN in ``M``).

    Example:
        >>> import torch
        >>> damped_inverse(torch.tensor([[3.0, 0.0], [0.0, 1.0]]), 1.0).diagonal()
        tensor([0.2500, 0.5000])
        >>> damped_inverse(torch.diag(torch.tensor([-1e-9, 1.0])), 0.5, method="eigh")
        tensor([[2.0000, 0.0000],
                [0.0000, 0.6667]])
    """
    if M.dim() != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"M must be a square matrix, got shape {tuple(M.shape)}")
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

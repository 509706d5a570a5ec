r"""The BFGS update of an inverse-curvature matrix, guarded against unsafe pairs.

Given a symmetric positive definite :math:`H \approx B^{-1}` and a pair
:math:`(s, y)` with :math:`s^\top y > 0`, the BFGS inverse update is

.. math::

    H_+ = (I - \rho\, s y^\top)\, H\, (I - \rho\, y s^\top) + \rho\, s s^\top,
    \qquad \rho = 1 / (y^\top s),

the closest matrix to :math:`H` (in a weighted Frobenius norm) that is
symmetric and satisfies the secant equation :math:`H_+ y = s`. It keeps
:math:`H_+` positive definite exactly when :math:`s^\top y > 0`.

Expanded with :math:`u = H y` (one matrix-vector product, no matrix-matrix
product): :math:`H_+ = H - \rho (s u^\top + u s^\top) + (\rho^2\, y^\top u +
\rho)\, s s^\top`. With :math:`V = [s; y; u]` (rows) this is
:math:`H_+ = H + V^\top C V` for the symmetric :math:`3 \times 3`

.. math::

    C = \begin{pmatrix} \rho(\rho\, y^\top u + 1) & 0 & -\rho \\
        0 & 0 & 0 \\ -\rho & 0 & 0 \end{pmatrix},

which depends only on the Gram matrix :math:`V V^\top`
(:func:`bfgs_gram_coefficients`): many blocks' scalar algebra can then run
as one batched computation, and each block's update is one ``addmm``.

The update is *guarded*: when :math:`s^\top y` is not safely positive (zero
pair, negative curvature, values so small or large that :math:`\rho` or
:math:`H_+` is not finite), :math:`H` is returned unchanged and the returned
flag is false. The decision is made with :func:`torch.where` on 0-d tensors,
so no device synchronisation happens here; callers read the flags once per
step.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["bfgs_gram_coefficients", "bfgs_inverse_update", "safe_curvature"]


def safe_curvature(s: Tensor, y: Tensor, *, rtol: float | None = None) -> Tensor:
    r"""Whether :math:`s^\top y` is safely positive for a BFGS update (0-d bool tensor).

    The test is :math:`s^\top y > \text{rtol}\cdot\|s\|\,\|y\|` (a cosine
    threshold, scale-free) with every quantity finite. The default
    ``rtol`` is the dtype's machine epsilon.

    Args:
        s: Step, shape ``(d,)``.
        y: Gradient change, shape ``(d,)``.
        rtol: Smallest accepted cosine between ``s`` and ``y``.

    Returns:
        A 0-d ``torch.bool`` tensor.

    Example:
        >>> bool(safe_curvature(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 1.0])))
        True
        >>> bool(safe_curvature(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])))
        False
        >>> bool(safe_curvature(torch.zeros(2), torch.zeros(2)))
        False
    """
    eps = torch.finfo(s.dtype).eps if rtol is None else rtol
    sy = torch.dot(s, y)
    bound = eps * torch.linalg.vector_norm(s) * torch.linalg.vector_norm(y)
    return (sy > bound) & torch.isfinite(sy) & torch.isfinite(bound) & torch.isfinite(1.0 / sy)


def bfgs_inverse_update(
    H: Tensor, s: Tensor, y: Tensor, *, rtol: float | None = None
) -> tuple[Tensor, Tensor]:
    r"""One guarded BFGS update of the inverse approximation ``H``.

    :math:`H_+ = (I - \rho s y^\top) H (I - \rho y s^\top) + \rho s s^\top`,
    :math:`\rho = 1/(y^\top s)`; afterwards :math:`H_+ y = s` (secant
    equation). ``H`` must be symmetric (only then does the expanded form
    hold); the result is exactly symmetric (it is symmetrised, which changes
    nothing for an exactly symmetric candidate and removes the round-off
    asymmetry a BLAS product may have left in ``H``). If the pair fails :func:`safe_curvature` or the result is not
    finite, (a copy of) ``H`` is returned.

    Args:
        H: Symmetric positive definite matrix, shape ``(d, d)``.
        s: Step, shape ``(d,)``.
        y: Gradient change, shape ``(d,)``.
        rtol: Cosine threshold passed to :func:`safe_curvature`.

    Returns:
        ``(H_new, applied)``: the updated matrix (a new tensor, equal to
        ``H`` when skipped) and a 0-d bool tensor telling whether the update was
        applied.

    Raises:
        ValueError: shapes do not match (``H`` is ``(d, d)``, ``s`` and ``y``
            are ``(d,)``).

    Example:
        >>> H = torch.eye(2, dtype=torch.float64)
        >>> s, y = torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor(
        ...     [3.0, 1.0], dtype=torch.float64)
        >>> H1, applied = bfgs_inverse_update(H, s, y)
        >>> bool(applied), torch.allclose(H1 @ y, s)
        (True, True)
        >>> H2, applied = bfgs_inverse_update(H, s, -y)   # negative curvature: skipped
        >>> bool(applied), torch.equal(H2, H)
        (False, True)
    """
    d = H.shape[0]
    if H.shape != (d, d) or s.shape != (d,) or y.shape != (d,):
        raise ValueError(
            f"bfgs_inverse_update needs H (d, d), s (d,), y (d,); got "
            f"{tuple(H.shape)}, {tuple(s.shape)}, {tuple(y.shape)}"
        )
    ok = safe_curvature(s, y, rtol=rtol)
    # rho = 0 on rejected pairs keeps the arithmetic finite where possible;
    # torch.where below discards the candidate anyway.
    sy = torch.dot(s, y)
    rho = torch.where(ok, 1.0 / torch.where(ok, sy, torch.ones_like(sy)), torch.zeros_like(sy))
    u = H @ y
    # rho * (rho yᵀu + 1), not rho² yᵀu + rho: rho² underflows to subnormals in float32
    coef = rho * (rho * torch.dot(y, u) + 1.0)
    rs = rho * s
    cand = H - (torch.outer(rs, u) + torch.outer(u, rs)) + coef * torch.outer(s, s)
    # exact symmetry by construction, whatever the BLAS kernel did to H upstream
    # ((a + a) / 2 == a: a symmetric candidate is returned bit for bit)
    cand = (cand + cand.T) / 2
    # a sum is non-finite iff some entry is (or it overflows: then skipping is right too);
    # one reduction instead of an elementwise isfinite on the whole matrix
    ok = ok & torch.isfinite(cand.sum())
    return torch.where(ok, cand, H), ok


def bfgs_gram_coefficients(G: Tensor, *, rtol: float | None = None) -> tuple[Tensor, Tensor]:
    r"""The :math:`C` of :math:`H_+ = H + V^\top C V` from the Gram matrix of :math:`V = [s; y; Hy]`.

    ``G`` holds :math:`V V^\top` (entries :math:`s^\top s, s^\top y, \dots`),
    optionally batched over leading dimensions (one Gram matrix per block).
    The pair is accepted where :math:`s^\top y > \text{rtol}\,\sqrt{s^\top
    s}\sqrt{y^\top y}` with every quantity finite (as :func:`safe_curvature`,
    ``rtol`` defaults to the dtype's machine epsilon); rejected blocks get
    :math:`C = 0`, so :math:`H + V^\top C V = H` exactly when :math:`V` is
    finite. No device synchronisation.

    Args:
        G: Gram matrices, shape ``(..., 3, 3)``.
        rtol: Smallest accepted cosine between ``s`` and ``y``.

    Returns:
        ``(C, ok)``: ``C`` of shape ``(..., 3, 3)`` and the bool acceptance
        flags of shape ``(...)``.

    Raises:
        ValueError: ``G`` is not ``(..., 3, 3)``.

    Example:
        >>> H = torch.eye(2, dtype=torch.float64)
        >>> s, y = torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor(
        ...     [3.0, 1.0], dtype=torch.float64)
        >>> V = torch.stack([s, y, H @ y])
        >>> C, ok = bfgs_gram_coefficients(V @ V.T)
        >>> H1 = H + V.T @ C @ V
        >>> bool(ok), torch.allclose(H1 @ y, s), torch.allclose(H1, bfgs_inverse_update(H, s, y)[0])
        (True, True, True)
    """
    if G.shape[-2:] != (3, 3):
        raise ValueError(f"bfgs_gram_coefficients needs G of shape (..., 3, 3); got {tuple(G.shape)}")
    eps = torch.finfo(G.dtype).eps if rtol is None else rtol
    ss, sy, yy, yu = G[..., 0, 0], G[..., 0, 1], G[..., 1, 1], G[..., 1, 2]
    bound = eps * ss.sqrt() * yy.sqrt()
    ok = (sy > bound) & torch.isfinite(sy) & torch.isfinite(bound)
    rho = torch.where(ok, 1.0 / torch.where(ok, sy, torch.ones_like(sy)), torch.zeros_like(sy))
    ok = ok & torch.isfinite(rho)
    rho = torch.where(ok, rho, torch.zeros_like(rho))
    # rho * (rho yᵀu + 1), not rho² yᵀu + rho: rho² underflows to subnormals in float32
    coef = torch.where(ok, rho * (rho * yu + 1.0), torch.zeros_like(rho))
    zero = torch.zeros_like(rho)
    C = torch.stack([coef, zero, -rho, zero, zero, zero, -rho, zero, zero], dim=-1)
    return C.reshape(*G.shape[:-2], 3, 3), ok

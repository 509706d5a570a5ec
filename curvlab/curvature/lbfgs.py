r"""Limited-memory BFGS: the two-loop recursion and a pair memory kept as tensors.

With pairs :math:`(s_i, y_i)_{i=1}^{k}` (oldest first), :math:`\rho_i =
1/(y_i^\top s_i)` and initial matrix :math:`H_0 = \gamma I`, the L-BFGS
matrix is the result of :math:`k` BFGS inverse updates of :math:`H_0`
(:func:`~curvlab.curvature.bfgs.bfgs_inverse_update`). It is applied to
:math:`v` without being formed (Nocedal 1980, two-loop recursion):

.. math::

    q \leftarrow v;\quad \text{for } i = k..1:\ \alpha_i = \rho_i s_i^\top q,\
    q \leftarrow q - \alpha_i y_i; \\
    r \leftarrow \gamma q;\quad \text{for } i = 1..k:\ \beta_i = \rho_i y_i^\top r,\
    r \leftarrow r + (\alpha_i - \beta_i) s_i; \qquad H v = r.

Cost :math:`O(k d)` per vector. ``v`` may also be a matrix ``(d, c)``: the
recursion then acts on every column at once (:math:`\alpha_i` becomes a row).

The same matrix in compact form (Byrd, Nocedal & Schnabel 1994), with the
pairs as rows of :math:`S, Y` (``(k, d)``), :math:`R = \operatorname{triu}(S
Y^\top)` (:math:`R_{ij} = s_i^\top y_j`, :math:`i \le j`) and :math:`D =
\operatorname{diag}(S Y^\top)`:

.. math::

    w = R^{-1} S v,\qquad
    z = R^{-\top}\big((D + \gamma Y Y^\top) w - \gamma Y v\big),\qquad
    H v = \gamma v + S^\top z - \gamma Y^\top w

(:func:`compact_apply`): a handful of matrix products and two triangular
solves instead of :math:`2k` sequential steps, which is much faster for
:math:`k = 100` on small layers. The :math:`k \times k` part runs in float64.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["LBFGSMemory", "compact_apply", "compact_factors", "two_loop"]


def _check_shapes(who: str, S: Tensor, Y: Tensor, v: Tensor) -> None:
    """Raise unless S, Y are (k, d) and v is (d,) or (d, c)."""
    if S.shape != Y.shape or S.dim() != 2 or v.shape[0] != S.shape[1] or v.dim() > 2:
        raise ValueError(
            f"{who} needs S, Y of shape (k, d) and v of shape (d,) or (d, c); got "
            f"{tuple(S.shape)}, {tuple(Y.shape)}, {tuple(v.shape)}"
        )


def two_loop(S: Tensor, Y: Tensor, v: Tensor, gamma: float = 1.0) -> Tensor:
    r"""Apply the L-BFGS inverse approximation built from ``(S, Y)`` to ``v``.

    Equals :math:`H_k v` with :math:`H_k` from :math:`k` BFGS updates of
    :math:`\gamma I` with the rows of ``S`` and ``Y`` in order (see the module
    docstring). The pairs must have :math:`s_i^\top y_i > 0` (callers push
    only safe pairs).

    Args:
        S: Steps, shape ``(k, d)``, oldest first (``k`` may be 0).
        Y: Gradient changes, shape ``(k, d)``.
        v: Vector ``(d,)`` or matrix ``(d, c)``.
        gamma: Initial scaling :math:`H_0 = \gamma I`.

    Returns:
        :math:`H_k v`, same shape as ``v``.

    Raises:
        ValueError: shapes do not match.

    Example:
        >>> S = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
        >>> Y = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
        >>> two_loop(S, Y, Y[0])   # secant equation: H y = s
        tensor([1., 0.], dtype=torch.float64)
    """
    _check_shapes("two_loop", S, Y, v)
    k = S.shape[0]
    if k == 0:
        return gamma * v
    rho = 1.0 / (S * Y).sum(1)
    q = v.clone()
    alphas = []
    for i in range(k - 1, -1, -1):
        a = rho[i] * (S[i] @ q)
        q = q - (torch.outer(Y[i], a) if q.dim() == 2 else a * Y[i])
        alphas.append(a)
    r = gamma * q
    for i in range(k):
        b = rho[i] * (Y[i] @ r)
        c = alphas[k - 1 - i] - b
        r = r + (torch.outer(S[i], c) if r.dim() == 2 else c * S[i])
    return r


def compact_factors(S: Tensor, Y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""The parts of the compact form that depend on the memory only.

    A caller that applies the same memory to several vectors (or matrices)
    computes them once and passes them to :func:`compact_apply`.

    Args:
        S: Steps, shape ``(k, d)``, oldest first.
        Y: Gradient changes, shape ``(k, d)``.

    Returns:
        ``(R, diag, YY, SY)``: :math:`R = \operatorname{triu}(S Y^\top)`
        ``(k, k)``, its diagonal ``(k,)`` and :math:`Y Y^\top` ``(k, k)``, all
        float64, and the rows of ``S`` and ``Y`` stacked, ``(2k, d)``.

    Example:
        >>> S = torch.tensor([[1.0, 0.0]])
        >>> R, diag, YY, SY = compact_factors(S, 2 * S)
        >>> R.tolist(), diag.tolist(), YY.dtype, SY.shape
        ([[2.0]], [2.0], torch.float64, torch.Size([2, 2]))
    """
    SY = torch.cat([S, Y])
    k = S.shape[0]
    SY64 = SY.double()
    G = SY64 @ SY64[k:].T
    SYt = G[:k]
    return SYt.triu(), SYt.diagonal(), G[k:], SY


def compact_apply(
    S: Tensor,
    Y: Tensor,
    v: Tensor,
    gamma: float = 1.0,
    factors: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
) -> Tensor:
    r"""The L-BFGS matrix applied to ``v`` through the compact representation.

    Equal to :func:`two_loop` in exact arithmetic (see the module docstring
    for the formula, written here as :math:`H v = \gamma v + [S; Y]^\top [z;
    -\gamma w]`); the :math:`k \times k` triangular solves run in float64 and
    the result is returned in ``v``'s dtype.

    Args:
        S: Steps, shape ``(k, d)``, oldest first.
        Y: Gradient changes, shape ``(k, d)``, with :math:`s_i^\top y_i > 0`.
        v: Vector ``(d,)`` or matrix ``(d, c)``.
        gamma: Initial scaling :math:`H_0 = \gamma I`.
        factors: :func:`compact_factors` of ``(S, Y)`` if already computed.

    Returns:
        :math:`H_k v`, same shape and dtype as ``v``.

    Raises:
        ValueError: shapes do not match.

    Example:
        >>> S = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
        >>> Y = torch.tensor([[2.0, 0.0], [1.0, 3.0]], dtype=torch.float64)
        >>> v = torch.tensor([0.5, -1.0], dtype=torch.float64)
        >>> torch.allclose(compact_apply(S, Y, v), two_loop(S, Y, v))
        True
    """
    _check_shapes("compact_apply", S, Y, v)
    k = S.shape[0]
    if k == 0:
        return gamma * v
    R, diag, YY, SY = compact_factors(S, Y) if factors is None else factors
    V = v[:, None] if v.dim() == 1 else v
    ab = (SY @ V).double()
    a, b = ab[:k], ab[k:]
    w = torch.linalg.solve_triangular(R, a, upper=True)
    if gamma == 1.0:
        inner = torch.addmm(diag[:, None] * w - b, YY, w)
    else:
        inner = torch.addmm(diag[:, None] * w - gamma * b, YY, w, alpha=gamma)
    z = torch.linalg.solve_triangular(R.T, inner, upper=False)
    zw = torch.cat([z, w.neg_() if gamma == 1.0 else w.mul_(-gamma)]).to(V.dtype)
    out = torch.addmm(V, SY.T, zw, beta=gamma)
    return out[:, 0] if v.dim() == 1 else out


class LBFGSMemory:
    r"""The last ``size`` pairs of an L-BFGS approximation, stored as two tensors.

    The state is ``{"S": (k, d), "Y": (k, d)}`` (oldest first, :math:`k \le`
    ``size``), so it round-trips through ``state_dict`` verbatim. Pushing a
    pair beyond ``size`` drops the oldest.

    Args:
        dim: Vector dimension ``d``.
        size: Memory length (number of pairs kept), ``>= 1``.
        dtype: Dtype of the stored pairs.
        device: Device of the stored pairs.
        gamma: Initial scaling of :math:`H_0 = \gamma I`.

    Raises:
        ValueError: ``size < 1`` or ``dim < 1``.

    Example:
        >>> mem = LBFGSMemory(2, size=1)
        >>> mem.push(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0]))
        >>> mem.push(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 4.0]))
        >>> len(mem), mem.apply(torch.tensor([0.0, 4.0]))
        (1, tensor([0., 1.]))
    """

    def __init__(
        self,
        dim: int,
        size: int,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        gamma: float = 1.0,
    ) -> None:
        if size < 1:
            raise ValueError(f"L-BFGS memory size must be >= 1, got {size!r}")
        if dim < 1:
            raise ValueError(f"L-BFGS dimension must be >= 1, got {dim!r}")
        self.size = size
        self.gamma = gamma
        self.S = torch.zeros(0, dim, dtype=dtype, device=device)
        self.Y = torch.zeros(0, dim, dtype=dtype, device=device)

    def __len__(self) -> int:
        return self.S.shape[0]

    def push(self, s: Tensor, y: Tensor) -> None:
        r"""Append the pair ``(s, y)`` (needs :math:`s^\top y > 0`), dropping the oldest if full."""
        self.S = torch.cat([self.S, s[None]])[-self.size :]
        self.Y = torch.cat([self.Y, y[None]])[-self.size :]

    def apply(self, v: Tensor) -> Tensor:
        """:math:`H v` by :func:`compact_apply` (``v`` of shape ``(d,)`` or ``(d, c)``)."""
        return compact_apply(self.S, self.Y, v, self.gamma)

    def dense(self) -> Tensor:
        """The matrix :math:`H` itself, ``(d, d)`` (for tests and small ``d``)."""
        d = self.S.shape[1]
        return self.apply(torch.eye(d, dtype=self.S.dtype, device=self.S.device))

    def state_dict(self) -> dict[str, Tensor]:
        """The stored pairs, ``{"S": (k, d), "Y": (k, d)}`` (the tensors themselves)."""
        return {"S": self.S, "Y": self.Y}

    @classmethod
    def from_state(cls, state: Mapping[str, Tensor], size: int, gamma: float = 1.0) -> LBFGSMemory:
        """Rebuild a memory from :meth:`state_dict` output (tensors are shared, not copied).

        Example:
            >>> mem = LBFGSMemory(3, size=5)
            >>> LBFGSMemory.from_state(mem.state_dict(), size=5).S.shape
            torch.Size([0, 3])
        """
        S, Y = state["S"], state["Y"]
        mem = cls(S.shape[1], size, dtype=S.dtype, device=S.device, gamma=gamma)
        mem.S, mem.Y = S[-size:], Y[-size:]
        return mem

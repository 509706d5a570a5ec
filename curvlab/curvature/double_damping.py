r"""Double damping (Powell, then Levenberg–Marquardt) of a quasi-Newton pair.

Stochastic pairs :math:`(s, y)` often have :math:`s^\top y \le 0`, which
would destroy the positive definiteness of a BFGS matrix. Goldfarb, Ren and
Bahamou (NeurIPS 2020, "double damping", DD) repair the pair in two stages,
with :math:`H` the current inverse approximation and :math:`u = H y`:

1. **Powell** (:math:`0 < \mu_1 < 1`): if :math:`s^\top y < \mu_1 y^\top H y`,
   :math:`\theta_1 = (1-\mu_1)\, y^\top H y / (y^\top H y - s^\top y)`, else
   :math:`\theta_1 = 1`; :math:`\tilde s = \theta_1 s + (1-\theta_1) H y`.
   Then :math:`\tilde s^\top y \ge \mu_1 y^\top H y`.
2. **Levenberg–Marquardt** (:math:`0 < \mu_2 \le 1`): if
   :math:`\tilde s^\top y < \mu_2 \tilde s^\top \tilde s`,
   :math:`\theta_2 = (1-\mu_2)\, \tilde s^\top \tilde s / (\tilde s^\top
   \tilde s - \tilde s^\top y)`, else :math:`\theta_2 = 1`;
   :math:`\tilde y = \theta_2 y + (1-\theta_2) \tilde s`. Then
   :math:`\tilde s^\top \tilde y \ge \mu_2 \tilde s^\top \tilde s > 0`.

Guards: a zero pair stays zero and is marked invalid; non-finite inputs or
intermediate values give a zero pair marked invalid (never NaN/Inf). All
decisions use :func:`torch.where` on 0-d tensors (no device sync).

:func:`double_damping_blocks` damps many pairs at once: the vectors of all
blocks are concatenated, block inner products are segment sums
(``index_add``), and the :math:`\theta`'s are broadcast back to the entries;
a few dozen tensor operations in total instead of a few dozen per block.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["DampedPair", "double_damping", "double_damping_blocks", "lm_damping", "powell_damping"]


class DampedPair(NamedTuple):
    r"""Result of :func:`double_damping`.

    Attributes:
        s: Damped step :math:`\tilde s` (zero when invalid).
        y: Damped gradient change :math:`\tilde y` (zero when invalid).
        powell: 0-d bool, Powell damping fired (:math:`\theta_1 < 1`).
        lm: 0-d bool, Levenberg–Marquardt damping fired (:math:`\theta_2 < 1`).
        valid: 0-d bool, the pair is finite with :math:`\tilde s^\top\tilde y > 0`
            and :math:`\tilde s \ne 0` (safe for a BFGS update).
    """

    s: Tensor
    y: Tensor
    powell: Tensor
    lm: Tensor
    valid: Tensor


def _check(name: str, value: float, high: float, high_open: bool) -> None:
    ok = 0.0 < value < high if high_open else 0.0 < value <= high
    if not ok:
        right = ")" if high_open else "]"
        raise ValueError(f"{name} must be in (0, {high}{right}, got {value!r}")


def _theta(fire: Tensor, num: Tensor, den: Tensor) -> Tensor:
    one = torch.ones_like(num)
    return torch.where(fire, num / torch.where(fire, den, one), one)


def powell_damping(s: Tensor, y: Tensor, Hy: Tensor, mu1: float = 0.2) -> tuple[Tensor, Tensor]:
    r"""Powell's damping of the step: :math:`\tilde s = \theta_1 s + (1-\theta_1) H y`.

    :math:`\theta_1 = (1-\mu_1)\,y^\top H y / (y^\top H y - s^\top y)` if
    :math:`s^\top y < \mu_1 y^\top H y`, else 1; afterwards
    :math:`\tilde s^\top y \ge \mu_1 y^\top H y` (equality when it fired).

    Args:
        s: Step, shape ``(d,)``.
        y: Gradient change, shape ``(d,)``.
        Hy: The current inverse approximation applied to ``y``, shape ``(d,)``.
        mu1: Threshold :math:`\mu_1 \in (0, 1)`.

    Returns:
        ``(s_tilde, fired)`` with ``fired`` a 0-d bool tensor.

    Raises:
        ValueError: ``mu1`` outside (0, 1).

    Example:
        >>> s, y = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])  # s^T y < 0
        >>> st, fired = powell_damping(s, y, y.clone(), mu1=0.2)
        >>> bool(fired), round(float(st @ y), 6)
        (True, 0.2)
    """
    _check("mu1", mu1, 1.0, True)
    return _blend(torch.dot(s, y), torch.dot(y, Hy), mu1, s, Hy)


def _blend(t: Tensor, q: Tensor, mu: float, x: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """Both dampings: if t < μq, θx + (1−θ)z with θ = (1−μ)q/(q−t) (else x); and whether it fired."""
    # θ in float64: in float32 it can be subnormal (|s| ~ 1e30 against |y| ~ 1e-10 gives
    # θ ~ 1e-42) and lose the digits the guarantee s̃ᵀy ≥ μ yᵀHy rests on.
    t64, q64 = t.double(), q.double()
    fire = t64 < mu * q64
    theta = _theta(fire, (1.0 - mu) * q64, q64 - t64)
    return (theta * x.double() + (1.0 - theta) * z.double()).to(x.dtype), fire


def lm_damping(s: Tensor, y: Tensor, mu2: float) -> tuple[Tensor, Tensor]:
    r"""Levenberg–Marquardt damping of the gradient change: :math:`\tilde y = \theta_2 y + (1-\theta_2) s`.

    :math:`\theta_2 = (1-\mu_2)\,s^\top s / (s^\top s - s^\top y)` if
    :math:`s^\top y < \mu_2 s^\top s`, else 1; afterwards
    :math:`s^\top \tilde y \ge \mu_2 s^\top s` (equality when it fired).
    This equals adding :math:`(1-\theta_2)/\theta_2\, I` to the curvature seen
    along ``s``.

    Args:
        s: Step (usually already Powell-damped), shape ``(d,)``.
        y: Gradient change, shape ``(d,)``.
        mu2: Threshold :math:`\mu_2 \in (0, 1]`.

    Returns:
        ``(y_tilde, fired)`` with ``fired`` a 0-d bool tensor.

    Raises:
        ValueError: ``mu2`` outside (0, 1].

    Example:
        >>> s, y = torch.tensor([1.0, 0.0]), torch.tensor([0.1, 0.0])
        >>> yt, fired = lm_damping(s, y, mu2=0.5)
        >>> bool(fired), round(float(s @ yt), 6)
        (True, 0.5)
    """
    _check("mu2", mu2, 1.0, False)
    return _blend(torch.dot(s, y), torch.dot(s, s), mu2, y, s)


def double_damping(
    s: Tensor, y: Tensor, Hy: Tensor, *, mu1: float = 0.2, mu2: float
) -> DampedPair:
    r"""Powell then Levenberg–Marquardt damping (DD) of the pair ``(s, y)``.

    :math:`\tilde s` from :func:`powell_damping` with :math:`H y`, then
    :math:`\tilde y` from :func:`lm_damping` on :math:`(\tilde s, y)`. A valid
    result satisfies :math:`\tilde s^\top y \ge \mu_1 y^\top H y` and
    :math:`\tilde s^\top \tilde y \ge \mu_2 \tilde s^\top \tilde s > 0`. An
    invalid one (zero pair, non-finite input or overflow) is returned as
    zeros with ``valid`` false; callers skip it and count it.

    Args:
        s: Step, shape ``(d,)``.
        y: Gradient change, shape ``(d,)``.
        Hy: Current inverse approximation applied to ``y``, shape ``(d,)``.
        mu1: Powell threshold in (0, 1) (paper: 0.2).
        mu2: LM threshold in (0, 1] (paper: :math:`\sqrt{\lambda}`).

    Returns:
        A :class:`DampedPair`.

    Raises:
        ValueError: ``mu1``/``mu2`` out of range, or shapes differ.

    Example:
        >>> s, y = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.5])
        >>> pair = double_damping(s, y, y.clone(), mu1=0.2, mu2=0.5)
        >>> bool(pair.powell), bool(pair.valid), bool(pair.s @ pair.y > 0)
        (True, True, True)
        >>> bool(double_damping(torch.zeros(2), torch.zeros(2), torch.zeros(2), mu2=0.5).valid)
        False
    """
    if not (s.shape == y.shape == Hy.shape and s.dim() == 1):
        raise ValueError(
            f"double_damping needs s, y, Hy of one shape (d,); got "
            f"{tuple(s.shape)}, {tuple(y.shape)}, {tuple(Hy.shape)}"
        )
    st, powell = powell_damping(s, y, Hy, mu1)
    yt, lm = lm_damping(st, y, mu2)
    sty, sts = torch.dot(st, yt), torch.dot(st, st)
    valid = (
        (sty > 0)
        & (sts > 0)
        & torch.isfinite(sty)
        & torch.isfinite(sts)
        & torch.isfinite(st).all()
        & torch.isfinite(yt).all()
    )
    zero = torch.zeros_like(s)
    return DampedPair(
        torch.where(valid, st, zero), torch.where(valid, yt, zero), powell & valid, lm & valid, valid
    )


def _block_dots(index: Tensor, n: int, pairs: list[tuple[Tensor, Tensor]]) -> Tensor:
    """``(n, len(pairs))``: the inner product of each pair within each block."""
    prods = torch.stack([a * b for a, b in pairs], dim=1)
    return torch.zeros(n, len(pairs), dtype=prods.dtype, device=prods.device).index_add_(
        0, index, prods
    )


def double_damping_blocks(
    s: Tensor, y: Tensor, Hy: Tensor, index: Tensor, n: int, *, mu1: float = 0.2, mu2: float
) -> DampedPair:
    r""":func:`double_damping` of ``n`` blocks whose vectors are concatenated.

    Entry ``j`` of ``s``, ``y`` and ``Hy`` belongs to block ``index[j]``; every
    inner product of :func:`double_damping` is taken within each block
    (:math:`s_b^\top y_b = \sum_{j:\,\text{index}_j = b} s_j y_j`), so the
    result equals damping each block separately (up to summation order).
    Blocks with no entries come out invalid.

    Args:
        s: Concatenated steps, shape ``(D,)``.
        y: Concatenated gradient changes, shape ``(D,)``.
        Hy: Each block's inverse approximation applied to its ``y``, ``(D,)``.
        index: Block of each entry, ``(D,)`` integer tensor with values in ``[0, n)``.
        n: Number of blocks.
        mu1: Powell threshold in (0, 1).
        mu2: LM threshold in (0, 1].

    Returns:
        A :class:`DampedPair` whose ``s``, ``y`` are ``(D,)`` and whose flags
        are ``(n,)`` bool tensors.

    Raises:
        ValueError: ``mu1``/``mu2`` out of range, or shapes differ.

    Example:
        >>> s = torch.tensor([1.0, 0.0, 2.0])
        >>> y = torch.tensor([-1.0, 0.5, 1.0])
        >>> index = torch.tensor([0, 0, 1])
        >>> pair = double_damping_blocks(s, y, y.clone(), index, 2, mu2=0.5)
        >>> one = double_damping(s[:2], y[:2], y[:2].clone(), mu2=0.5)
        >>> torch.allclose(pair.s[:2], one.s), pair.powell.tolist(), pair.valid.tolist()
        (True, [True, False], [True, True])
    """
    if not (s.shape == y.shape == Hy.shape == index.shape and s.dim() == 1):
        raise ValueError(
            f"double_damping_blocks needs s, y, Hy, index of one shape (D,); got "
            f"{tuple(s.shape)}, {tuple(y.shape)}, {tuple(Hy.shape)}, {tuple(index.shape)}"
        )
    _check("mu1", mu1, 1.0, True)
    _check("mu2", mu2, 1.0, False)
    sy, yHy = _block_dots(index, n, [(s, y), (y, Hy)]).unbind(1)
    powell = sy < mu1 * yHy
    theta1 = _theta(powell, (1.0 - mu1) * yHy, yHy - sy)[index]
    st = theta1 * s + (1.0 - theta1) * Hy
    ss, sty0 = _block_dots(index, n, [(st, st), (st, y)]).unbind(1)
    lm = sty0 < mu2 * ss
    theta2 = _theta(lm, (1.0 - mu2) * ss, ss - sty0)[index]
    yt = theta2 * y + (1.0 - theta2) * st
    # a non-finite entry of s̃ or ỹ makes s̃ᵀỹ non-finite (x·0 = NaN for x = ±inf)
    sty = _block_dots(index, n, [(st, yt)])[:, 0]
    valid = (sty > 0) & (ss > 0) & torch.isfinite(sty) & torch.isfinite(ss)
    zero = torch.zeros_like(s)
    keep = valid[index]
    return DampedPair(
        torch.where(keep, st, zero), torch.where(keep, yt, zero), powell & valid, lm & valid, valid
    )

r"""Per-subset step sizes η from ḡ, H̄ and D (order 2: Newton; order 3: cubic).

The loss along the family :math:`\theta - \sum_s \eta_s u_s` is modelled by

.. math::

    m(\eta) = -\bar g^\top \eta + \tfrac12 \eta^\top \bar H \eta
              + \tfrac{\lambda_\text{int}}{6}\, \lVert \mathcal D \eta \rVert^3,
    \qquad \mathcal D = \operatorname{diag}(d),\; d_i = |D_{iii}|^{1/3}

("anisotropic Nesterov" cubic regularisation; order 2 drops the cubic
term). Its minimiser solves
:math:`\eta = (\bar H + c\, r\, \mathcal D^2)^{-1} \bar g` with
:math:`c = \lambda_\text{int}/2` and :math:`r = \lVert \mathcal D \eta \rVert`,
subject to :math:`\bar H + c r \mathcal D^2 \succeq 0`.

Reduction to one scalar equation (all in float64, numpy/scipy): with
:math:`\tilde H = \mathcal D^{-1} \bar H \mathcal D^{-1} = Q \Lambda Q^\top`,
:math:`\gamma = Q^\top \mathcal D^{-1} \bar g` and :math:`\zeta = \mathcal D
\eta`, the condition reads :math:`\zeta = (\tilde H + c r I)^{-1}
\mathcal D^{-1} \bar g` with :math:`r = \lVert \zeta \rVert`, i.e.

.. math::

    \phi(r) = \Bigl(\sum_k \frac{\gamma_k^2}{(\lambda_k + c r)^2}\Bigr)^{1/2} - r = 0,
    \qquad r > r_0 = \max(0, -\lambda_\min(\tilde H)) / c,

which is decreasing on :math:`(r_0, \infty)`. It is solved with
:func:`scipy.optimize.brentq` on the bracket :math:`[r_0, r_0 +
2\sqrt{\lVert\gamma\rVert / c}]` (the upper end always has
:math:`\phi < 0`). The "hard case" (ḡ orthogonal to the critical
eigenvector, :math:`\phi(r_0^+) \le 0`) has no root: it counts as a failure.

Every threshold is scale-free so that the method stays invariant under
per-subset rescaling :math:`u_s \to a_s u_s` (then ḡ → Aḡ, H̄ → AH̄A,
d → Ad with :math:`A = \operatorname{diag}(a)` up to signs, and
:math:`\tilde H`, γ, r are unchanged): subsets with
:math:`\bar H_{ss} = 0` and :math:`d_s = 0` (e.g. :math:`u_s = 0`) get
:math:`\eta_s = 0`; :math:`d_s` counts as zero when
:math:`d_s^2 \le 10^{-10} |\bar H_{ss}|` (:func:`effective_d`; singular
D, e.g. MSE with a linear last layer has exactly zero third derivative
there), a test against the subset's own curvature — comparing
:math:`d_s` with the other subsets' :math:`d_i`, whose scales are
unrelated, made the early layers of a deep auto-encoder (tiny
:math:`u_s`) count as unregularised and every solve fail; conditioning is
judged on the Jacobi-scaled matrix :math:`J \bar H J`,
:math:`J = \operatorname{diag}(|\bar H_{ss}|^{-1/2})`.

A subset with :math:`d_s = 0` and :math:`\bar H_{ss} \le 0` (and a
nonzero :math:`\bar g_s` or :math:`\bar H_{ss}`) has no minimiser along
it: it is *dropped* (:math:`\eta_s = 0`, listed in
:attr:`StepSizes.dropped`) and the others are solved, instead of failing
the whole solve. The attention key bias is such a subset (its gradient is
zero in exact arithmetic: softmax ignores a constant per query), and
failing on it stopped a transformer from training at all.

Coordinates with :math:`d_s = 0` (set N) are not regularised: they are
eliminated by a Schur complement, which requires :math:`\bar H_{NN} \succ 0`
(otherwise the model is unbounded below: failure), and the scalar equation
is solved on the others (set R) with
:math:`\bar H_{RR} - \bar H_{RN} \bar H_{NN}^{-1} \bar H_{NR}` and
:math:`\bar g_R - \bar H_{RN} \bar H_{NN}^{-1} \bar g_N`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import brentq
from torch import Tensor

__all__ = ["D_REL_TOL", "StepSizes", "cubic_step_sizes", "effective_d", "newton_step_sizes"]

#: d_s counts as zero when d_s² ≤ D_REL_TOL · abs(H̄_ss) (scale-free; :func:`effective_d`).
D_REL_TOL = 1e-10
#: Reciprocal condition number (of the Jacobi-scaled matrix) below which a solve fails.
RCOND = 1e-13


@dataclass(frozen=True)
class StepSizes:
    r"""Result of a step-size solve.

    Attributes:
        eta: η, float64, shape ``(S,)`` (zeros when the solve failed).
        ok: Whether the solve succeeded.
        reason: Why it failed (empty on success).
        r: The root :math:`r = \lVert \mathcal D \eta \rVert` (order 3; 0 otherwise).
        dropped: Subsets left out of the solve (:math:`\eta_s = 0`) because the
            model is unbounded below along them: :math:`d_s = 0` and
            :math:`\bar H_{ss} \le 0` (e.g. a parameter with a mathematically
            zero gradient, such as an attention key bias).

    Example:
        >>> StepSizes(torch.zeros(2), False, "hard case").ok
        False
    """

    eta: Tensor
    ok: bool
    reason: str = ""
    r: float = 0.0
    dropped: tuple[int, ...] = ()


def _fail(n: int, reason: str) -> StepSizes:
    return StepSizes(torch.zeros(n, dtype=torch.float64), False, reason)


def _jacobi(h: np.ndarray) -> np.ndarray:
    """J = diag(|h_ss|^{-1/2}) (1 where h_ss = 0)."""
    dg = np.abs(np.diag(h))
    return np.where(dg > 0, 1.0 / np.sqrt(np.where(dg > 0, dg, 1.0)), 1.0)


def _solve_scaled(h: np.ndarray, g: np.ndarray, *, spd: bool) -> np.ndarray | None:
    """h⁻¹ g (g: vector or matrix) via the Jacobi-scaled system; None if singular or not PD."""
    j = _jacobi(h)
    hs = j[:, None] * h * j[None, :]
    lam = np.linalg.eigvalsh(hs)
    amax = np.max(np.abs(lam))
    if not np.isfinite(amax) or amax == 0:
        return None
    if spd and lam[0] <= RCOND * amax:
        return None
    if np.min(np.abs(lam)) <= RCOND * amax:
        return None
    js = j if g.ndim == 1 else j[:, None]
    return js * np.linalg.solve(hs, js * g)


def _active(hbar: np.ndarray, d: np.ndarray | None) -> np.ndarray:
    """Subsets with any curvature information (H̄_ss ≠ 0 or d_s ≠ 0)."""
    act = np.diag(hbar) != 0
    if d is not None:
        act |= d != 0
    return act


def newton_step_sizes(hbar: Tensor, gbar: Tensor) -> StepSizes:
    r"""Order 2: :math:`\eta = \bar H^{-1} \bar g` (in float64).

    Subsets with :math:`\bar H_{ss} = 0` get :math:`\eta_s = 0`. With one
    subset this is the exact line search :math:`\eta = g^\top u / u^\top H u`.

    Args:
        hbar: H̄, ``(S, S)``.
        gbar: ḡ, ``(S,)``.

    Returns:
        :class:`StepSizes`; failure (η = 0) when the Jacobi-scaled H̄ is
        singular to working precision or not finite.

    Example:
        >>> h = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
        >>> newton_step_sizes(h, torch.tensor([1.0, 1.0])).eta.tolist()
        [0.5, 0.25]
    """
    h = hbar.detach().to(torch.float64).cpu().numpy()
    g = gbar.detach().to(torch.float64).cpu().numpy()
    n = g.shape[0]
    if not (np.isfinite(h).all() and np.isfinite(g).all()):
        return _fail(n, "non-finite tensors")
    act = _active(h, None)
    eta = np.zeros(n)
    if act.any():
        sol = _solve_scaled(h[np.ix_(act, act)], g[act], spd=False)
        if sol is None:
            return _fail(n, "singular H̄")
        eta[act] = sol
    return StepSizes(torch.from_numpy(eta), True)


def _secular_root(hs: np.ndarray, gs: np.ndarray, c: float) -> tuple[np.ndarray, float] | str:
    """Solve ζ = (hs + c r I)⁻¹ gs, r = ‖ζ‖ for ζ; returns (ζ, r) or a failure reason."""
    lam, q = np.linalg.eigh(hs)
    gam = q.T @ gs
    lmin = float(lam[0])
    r0 = max(0.0, -lmin) / c
    mu = lam - min(lmin, 0.0)  # λ_k + c r0 ≥ 0, smallest exactly 0 when λ_min < 0
    gnorm = float(np.linalg.norm(gam))
    if gnorm == 0.0:
        return (np.zeros_like(gs), 0.0) if r0 == 0.0 else "hard case (ḡ = 0, H̄ indefinite)"

    def phi(s: float) -> float:
        with np.errstate(divide="ignore"):
            return float(np.sqrt(np.sum(gam**2 / (mu + c * s) ** 2))) - r0 - s

    hi = 2.0 * np.sqrt(gnorm / c)
    lo = 0.0 if mu[0] > 0 else hi * 1e-15
    f_lo = phi(lo)
    if not f_lo > 0:
        return "hard case (ḡ orthogonal to the critical eigenvector)"
    try:
        s = brentq(phi, lo, hi, xtol=1e-15 * hi, rtol=4 * np.finfo(float).eps, maxiter=500)
    except (ValueError, RuntimeError) as err:
        return f"root finding failed ({err})"
    zeta = q @ (gam / (mu + c * s))
    return zeta, r0 + s


def effective_d(hbar: Tensor, d3: Tensor) -> Tensor:
    r"""The regularisation weights :math:`d_s = |D_{sss}|^{1/3}` the solver uses (float64).

    :math:`d_s` counts as zero (subset not regularised) when
    :math:`d_s^2 \le` ``D_REL_TOL`` :math:`\cdot |\bar H_{ss}|`, i.e. when the
    scaled curvature :math:`\tilde H_{ss} = \bar H_{ss} / d_s^2` would exceed
    ``1 / D_REL_TOL``. Both sides scale as :math:`a_s^2` under :math:`u_s \to
    a_s u_s`, so the test is scale-free (unlike a comparison with the other
    subsets' :math:`d`, whose scales are unrelated).

    Args:
        hbar: H̄, ``(S, S)``.
        d3: Diagonal :math:`D_{sss}`, ``(S,)``.

    Returns:
        ``(S,)`` float64 tensor of the weights (zeros where negligible).

    Example:
        >>> effective_d(torch.eye(2), torch.tensor([8.0, 1e-20])).tolist()
        [2.0, 0.0]
    """
    h = hbar.detach().to(torch.float64).diagonal().abs()
    d = d3.detach().to(torch.float64).abs().pow(1 / 3)
    return torch.where(d.pow(2) > D_REL_TOL * h, d, torch.zeros_like(d))


def cubic_step_sizes(hbar: Tensor, gbar: Tensor, d3: Tensor, lambda_int: float) -> StepSizes:
    r"""Order 3: anisotropic-Nesterov cubic-regularised step sizes (module docstring).

    Args:
        hbar: H̄, ``(S, S)``.
        gbar: ḡ, ``(S,)``.
        d3: Diagonal :math:`D_{sss}`, ``(S,)`` (signs are ignored: :math:`d = |D_{sss}|^{1/3}`).
        lambda_int: :math:`\lambda_\text{int} > 0`.

    Returns:
        :class:`StepSizes`; on failure (hard case, :math:`\bar H_{NN}` not
        positive definite, non-finite input, no root) η = 0 and ``ok`` is False.

    Raises:
        ValueError: ``lambda_int <= 0``.

    Example:
        >>> # S = 1: η solves η (h + c |d η| d²) = g, here 2η + 5η² = 7 → η = 1
        >>> out = cubic_step_sizes(torch.tensor([[2.0]]), torch.tensor([7.0]),
        ...                        torch.tensor([1.0]), lambda_int=10.0)
        >>> round(out.eta.item(), 12), out.ok
        (1.0, True)
        >>> # singular D: plain Newton on the unregularised coordinates
        >>> cubic_step_sizes(torch.eye(2), torch.tensor([1.0, 2.0]), torch.zeros(2), 10.0).eta.tolist()
        [1.0, 2.0]
    """
    if not lambda_int > 0:
        raise ValueError(f"lambda_int must be > 0, got {lambda_int!r}")
    h = hbar.detach().to(torch.float64).cpu().numpy()
    g = gbar.detach().to(torch.float64).cpu().numpy()
    d = effective_d(hbar, d3).cpu().numpy()
    n = g.shape[0]
    if not (np.isfinite(h).all() and np.isfinite(g).all() and np.isfinite(d).all()):
        return _fail(n, "non-finite tensors")
    eta = np.zeros(n)
    act = _active(h, d)
    # no cubic term and no positive curvature: the model is unbounded below along s
    hd = np.diag(h)
    unbounded = (d == 0) & (hd <= 0) & ((hd != 0) | (g != 0))
    dropped = tuple(int(i) for i in np.flatnonzero(unbounded))
    act &= ~unbounded
    if not act.any():
        return StepSizes(torch.from_numpy(eta), True, dropped=dropped)
    h, g, d = h[np.ix_(act, act)], g[act], d[act]
    reg = d > 0
    nreg = ~reg
    out = np.zeros(g.shape[0])
    r = 0.0
    if not reg.any():
        sol = _solve_scaled(h, g, spd=True)
        if sol is None:
            return _fail(n, "H̄ not positive definite and D = 0")
        out = sol
    else:
        hrr, gr, dr = h[np.ix_(reg, reg)], g[reg], d[reg]
        if nreg.any():
            hnn, hrn = h[np.ix_(nreg, nreg)], h[np.ix_(reg, nreg)]
            rhs = np.concatenate([g[nreg][:, None], hrn.T], axis=1)
            sol = _solve_scaled(hnn, rhs, spd=True)
            if sol is None:
                return _fail(n, "H̄ not positive definite on the subsets where D = 0")
            hrr = hrr - hrn @ sol[:, 1:]
            gr = gr - hrn @ sol[:, 0]
        root = _secular_root(hrr / dr[:, None] / dr[None, :], gr / dr, 0.5 * lambda_int)
        if isinstance(root, str):
            return _fail(n, root)
        zeta, r = root
        out[reg] = zeta / dr
        if nreg.any():
            out[nreg] = sol[:, 0] - sol[:, 1:] @ out[reg]
    if not np.isfinite(out).all():
        return _fail(n, "non-finite step sizes")
    eta[act] = out
    return StepSizes(torch.from_numpy(eta), True, r=float(r), dropped=dropped)

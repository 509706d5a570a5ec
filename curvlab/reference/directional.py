"""Exact directional derivatives of order 1-3 and GroupedNewton's partition tensors.

For a scalar f(θ) (a loss of a model, see :mod:`curvlab.reference.problem`)
and directions u, v, w ∈ R^P:

    D¹f[u]       = ∇f(θ)ᵀ u                    = d/dα f(θ + αu)
    D²f[u, v]    = uᵀ ∇²f(θ) v                 = ∂²/∂α∂β f(θ + αu + βv)
    D³f[u, v, w] = Σ_abc ∂³f/∂θ_a∂θ_b∂θ_c u_a v_b w_c,

all at α = β = γ = 0, computed exactly by nested forward-mode AD
(``torch.func.jvp`` inside ``jvp``), in float64. D² and D³ are symmetric
in their arguments.

GroupedNewton (Wolinski 2023) splits a direction u into pieces u_1 … u_S
(each zero outside its parameter subset, Σ_s u_s = u) and needs

    ḡ_i = gᵀ u_i,   H̄_ij = u_iᵀ H u_j = (Uᵀ H U)_ij,   D_ijk = D³f[u_i, u_j, u_k],

with U = [u_1 … u_S] ∈ R^{P×S}; :func:`partition_tensors` returns them densely.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.func import jacfwd, jacrev, jvp

from curvlab.reference.layout import ParamSlice
from curvlab.reference.problem import Problem, check_direction, resolve_problem

__all__ = [
    "first_directional",
    "partition_tensors",
    "second_directional",
    "split_direction",
    "third_derivative_tensor",
    "third_directional",
]


def _d1(f: Any, theta: Tensor, u: Tensor) -> Tensor:
    """D¹f[u] by one jvp."""
    return jvp(f, (theta,), (u,))[1]


def _d2(f: Any, theta: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """D²f[u, v] by jvp over jvp."""
    return jvp(lambda t: _d1(f, t, v), (theta,), (u,))[1]


def _d3(f: Any, theta: Tensor, u: Tensor, v: Tensor, w: Tensor) -> Tensor:
    """D³f[u, v, w] by three nested jvps."""
    return jvp(lambda t: _d2(f, t, v, w), (theta,), (u,))[1]


def first_directional(*problem: Any, u: Tensor, params: Iterable[str | Tensor] | None = None) -> Tensor:
    """First directional derivative D¹f[u] = gᵀu (float64 scalar).

    Args:
        *problem: ``(model, loss_fn, inputs, targets)``, ``(f, theta)`` or ``(Problem,)``.
        u: Direction, shape (P,).
        params: Model form only: the parameters forming θ.

    Raises:
        TypeError: malformed problem arguments.
        ValueError: ``u`` does not have shape (P,).

    Example:
        >>> first_directional(lambda t: (t ** 3).sum(), torch.tensor([1.0, 2.0]),
        ...                   u=torch.tensor([1.0, 1.0]))
        tensor(15., dtype=torch.float64)
    """
    prob = resolve_problem(*problem, params=params)
    return _d1(prob, prob.theta, check_direction(u, prob.theta, "u"))


def second_directional(
    *problem: Any, u: Tensor, v: Tensor, params: Iterable[str | Tensor] | None = None
) -> Tensor:
    """Second directional derivative D²f[u, v] = uᵀ H v (float64 scalar).

    Args:
        *problem: ``(model, loss_fn, inputs, targets)``, ``(f, theta)`` or ``(Problem,)``.
        u: First direction, shape (P,).
        v: Second direction, shape (P,).
        params: Model form only: the parameters forming θ.

    Raises:
        TypeError: malformed problem arguments.
        ValueError: a direction does not have shape (P,).

    Example:
        >>> second_directional(lambda t: t[0] ** 2 * t[1], torch.tensor([1.0, 3.0]),
        ...                    u=torch.tensor([1.0, 0.0]), v=torch.tensor([0.0, 1.0]))
        tensor(2., dtype=torch.float64)
    """
    prob = resolve_problem(*problem, params=params)
    th = prob.theta
    return _d2(prob, th, check_direction(u, th, "u"), check_direction(v, th, "v"))


def third_directional(
    *problem: Any, u: Tensor, v: Tensor, w: Tensor, params: Iterable[str | Tensor] | None = None
) -> Tensor:
    """Third directional derivative D³f[u, v, w] (float64 scalar), exact.

    Args:
        *problem: ``(model, loss_fn, inputs, targets)``, ``(f, theta)`` or ``(Problem,)``.
        u: Direction, shape (P,).
        v: Direction, shape (P,).
        w: Direction, shape (P,).
        params: Model form only: the parameters forming θ.

    Raises:
        TypeError: malformed problem arguments.
        ValueError: a direction does not have shape (P,).

    Example:
        >>> e = torch.tensor([1.0, 0.0])
        >>> third_directional(lambda t: t[0] ** 3 * t[1], torch.tensor([1.0, 5.0]), u=e, v=e, w=e)
        tensor(30., dtype=torch.float64)
    """
    prob = resolve_problem(*problem, params=params)
    th = prob.theta
    return _d3(prob, th, check_direction(u, th, "u"), check_direction(v, th, "v"), check_direction(w, th, "w"))


def third_derivative_tensor(*problem: Any, params: Iterable[str | Tensor] | None = None) -> Tensor:
    """Full third-derivative tensor T_abc = ∂³f/∂θ_a∂θ_b∂θ_c (P×P×P, float64).

    ``jacfwd(jacfwd(jacrev(f)))``; memory P³ · 8 bytes, so keep P ≲ 200.
    D³f[u, v, w] = ``torch.einsum("abc,a,b,c->", T, u, v, w)``.

    Raises:
        TypeError: malformed problem arguments.

    Example:
        >>> T = third_derivative_tensor(lambda t: t[0] ** 2 * t[1], torch.tensor([1.0, 3.0]))
        >>> T[0, 0, 1].item(), T[0, 1, 0].item(), T[1, 1, 1].item()
        (2.0, 2.0, 0.0)
    """
    prob = resolve_problem(*problem, params=params)
    return jacfwd(jacfwd(jacrev(prob)))(prob.theta)


def split_direction(
    u: Tensor, layout: Sequence[ParamSlice], groups: Sequence[Iterable[str]]
) -> list[Tensor]:
    """Split a flat direction into pieces u_s that are zero outside subset s.

    Args:
        u: Flat direction, shape (P,).
        layout: Its layout (e.g. ``problem.layout`` or
            :func:`~curvlab.reference.layout.param_layout`).
        groups: S lists of parameter names; each name in at most one group.
            Names in no group get no piece (Σ_s u_s then differs from u).

    Returns:
        S tensors of shape (P,), u_s = u on the slices of group s, 0 elsewhere.

    Raises:
        ValueError: unknown or repeated name, empty group, or ``u`` of the
            wrong length.

    Example:
        >>> from curvlab.reference.layout import param_layout
        >>> lay = param_layout(torch.nn.Linear(2, 1))
        >>> split_direction(torch.tensor([1.0, 2.0, 3.0]), lay, [["weight"], ["bias"]])
        [tensor([1., 2., 0.]), tensor([0., 0., 3.])]
    """
    slices = {p.name: p.slice for p in layout}
    size = sum(p.slice.stop - p.slice.start for p in layout)
    if u.shape != (size,):
        raise ValueError(f"u must have shape ({size},) to match the layout, got {tuple(u.shape)}")
    seen: set[str] = set()
    pieces = []
    for s, group in enumerate(groups):
        names = list(group)
        if not names:
            raise ValueError(f"group {s} is empty; every group needs at least one parameter name")
        piece = torch.zeros_like(u)
        for name in names:
            if name not in slices:
                raise ValueError(f"group {s} names {name!r}, which is not in the layout {list(slices)}")
            if name in seen:
                raise ValueError(f"parameter {name!r} appears in more than one group; groups must be disjoint")
            seen.add(name)
            piece[slices[name]] = u[slices[name]]
        pieces.append(piece)
    return pieces


def partition_tensors(
    *problem: Any, directions: Sequence[Tensor], params: Iterable[str | Tensor] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """GroupedNewton's ḡ (S), H̄ (S×S) and D (S×S×S) for directions u_1 … u_S.

    ḡ_i = gᵀu_i, H̄_ij = u_iᵀ H u_j, D_ijk = D³f[u_i, u_j, u_k], each
    computed exactly by nested jvps (S + S(S+1)/2 + S(S+1)(S+2)/6 of them;
    symmetric entries are copied). The directions need not be disjoint;
    for a partition, Σ_s u_s = u gives ḡ.sum() = gᵀu and H̄.sum() = uᵀHu.

    Args:
        *problem: ``(model, loss_fn, inputs, targets)``, ``(f, theta)`` or ``(Problem,)``.
        directions: S flat vectors of shape (P,), e.g. from :func:`split_direction`.
        params: Model form only: the parameters forming θ.

    Returns:
        ``(g_bar, H_bar, D)``, float64, shapes (S,), (S, S), (S, S, S);
        H_bar and D fully symmetric.

    Raises:
        TypeError: malformed problem arguments.
        ValueError: no directions, or one without shape (P,).

    Example:
        >>> f = lambda t: (t ** 3).sum() / 6      # ∂³f/∂t_i³ = 1
        >>> g, H, D = partition_tensors(f, torch.tensor([1.0, 2.0]),
        ...                             directions=[torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])])
        >>> g.tolist(), H.tolist()
        ([0.5, 4.0], [[1.0, 0.0], [0.0, 8.0]])
        >>> D[0, 0, 0].item(), D[1, 1, 1].item(), D[0, 1, 1].item()
        (1.0, 8.0, 0.0)
    """
    prob: Problem = resolve_problem(*problem, params=params)
    th = prob.theta
    if len(directions) == 0:
        raise ValueError("directions must hold at least one vector, got none")
    us = [check_direction(u, th, f"directions[{i}]") for i, u in enumerate(directions)]
    s = len(us)
    g_bar = th.new_zeros(s)
    h_bar = th.new_zeros(s, s)
    d = th.new_zeros(s, s, s)
    for i in range(s):
        g_bar[i] = _d1(prob, th, us[i])
        for j in range(i, s):
            h_bar[i, j] = h_bar[j, i] = _d2(prob, th, us[i], us[j])
            for k in range(j, s):
                value = _d3(prob, th, us[i], us[j], us[k])
                for a, b, c in {(i, j, k), (i, k, j), (j, i, k), (j, k, i), (k, i, j), (k, j, i)}:
                    d[a, b, c] = value
    return g_bar, h_bar, d

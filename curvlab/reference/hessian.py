"""Dense gradient, Hessian and Hessian-vector products in float64.

For f(θ) = loss_fn(model(inputs; θ), targets) (or any scalar f of a flat
vector, see :mod:`curvlab.reference.problem`):

    g = ∇f(θ) ∈ R^P,   H = ∇²f(θ) ∈ R^{P×P},   hvp(v) = H v,

computed exactly by automatic differentiation (``torch.func``: ``grad``,
``hessian`` = forward-over-reverse ``jacfwd(jacrev)``, ``grad`` of ``grad``)
in float64. Meant for tiny models (P up to a few hundred).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.func import grad

from curvlab.reference.problem import check_direction, resolve_problem

__all__ = ["gradient", "hessian", "hvp"]


def gradient(*problem: Any, params: Iterable[str | Tensor] | None = None) -> Tensor:
    """Flat gradient g = ∇_θ f(θ) in float64.

    Args:
        *problem: ``(model, loss_fn, inputs, targets)``, ``(f, theta)`` or
            ``(Problem,)`` (see :func:`~curvlab.reference.problem.resolve_problem`).
        params: Model form only: names or tensors of the parameters forming
            θ; default all trainable parameters.

    Returns:
        Shape (P,), float64, in the layout of
        :func:`~curvlab.reference.layout.param_layout`.

    Raises:
        TypeError: malformed problem arguments.

    Example:
        >>> gradient(lambda t: (t ** 2).sum(), torch.tensor([1.0, -2.0]))
        tensor([ 2., -4.], dtype=torch.float64)
    """
    prob = resolve_problem(*problem, params=params)
    return grad(prob)(prob.theta)


def hessian(*problem: Any, params: Iterable[str | Tensor] | None = None) -> Tensor:
    """Full dense Hessian H_ab = ∂²f / ∂θ_a ∂θ_b in float64.

    The loss is evaluated on a float64 copy of model and data (the caller's
    objects are unchanged); the result is symmetric up to ~1e-16 relative.

    Args:
        *problem: ``(model, loss_fn, inputs, targets)``, ``(f, theta)`` or
            ``(Problem,)``.
        params: Model form only: the parameters forming θ (names or
            tensors); default all trainable parameters. Others stay fixed,
            so the result is the corresponding sub-block of the full Hessian.

    Returns:
        Shape (P, P), float64.

    Raises:
        TypeError: malformed problem arguments.

    Example:
        >>> hessian(lambda t: t[0] ** 2 * t[1], torch.tensor([1.0, 3.0]))
        tensor([[6., 2.],
                [2., 0.]], dtype=torch.float64)
    """
    prob = resolve_problem(*problem, params=params)
    return torch.func.hessian(prob)(prob.theta)


def hvp(*problem: Any, v: Tensor, params: Iterable[str | Tensor] | None = None) -> Tensor:
    """Hessian-vector product H v = ∇_θ (∇f(θ)ᵀ v) (reverse-over-reverse).

    Reverse-over-reverse rather than ``jvp(grad(f))``: in torch 2.13 the
    latter raises "ZeroTensors are immutable" for ``mse_loss`` with
    reduction "mean" (pytorch/pytorch#123996).

    Args:
        *problem: ``(model, loss_fn, inputs, targets)``, ``(f, theta)`` or
            ``(Problem,)``.
        v: Direction, shape (P,), any floating dtype (cast to float64).
        params: Model form only: the parameters forming θ.

    Returns:
        Shape (P,), float64.

    Raises:
        TypeError: malformed problem arguments.
        ValueError: ``v`` does not have shape (P,).

    Example:
        >>> hvp(lambda t: t[0] ** 2 * t[1], torch.tensor([1.0, 3.0]), v=torch.tensor([1.0, 0.0]))
        tensor([6., 2.], dtype=torch.float64)
    """
    prob = resolve_problem(*problem, params=params)
    v = check_direction(v, prob.theta, "v")
    return grad(lambda t: torch.dot(grad(prob)(t), v))(prob.theta)


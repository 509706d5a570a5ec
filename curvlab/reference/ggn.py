"""Dense generalised Gauss-Newton matrix in float64.

With network outputs f_n = model(x_n; θ) ∈ R^K and the *reduced* batch loss
L(f_1, …, f_N) = loss_fn(f, y) (mean or sum reduction included),

    GGN = Jᵀ H_f J = Σ_n J_nᵀ H_n J_n,

where J = ∂ vec(f) / ∂θ ((N·K)×P, J_n its rows of sample n) and
H_f = ∂²L / ∂vec(f)² is the Hessian of the reduced loss w.r.t. **all**
outputs. For losses that are sums over samples H_f is block diagonal with
blocks H_n, so the two forms agree; the reduction factor is inside H_n:

* ``MSELoss("mean")``: H_n = (2 / (N·K)) I_K;  ``"sum"``: 2 I_K;
* ``CrossEntropyLoss("mean")``: H_n = (diag p_n − p_n p_nᵀ) / N, p_n = softmax(f_n);
* ``BCEWithLogitsLoss("mean")``: H_n = diag(σ(f_n) ⊙ (1 − σ(f_n))) / (N·K),
  whatever the (soft) targets.

Both J and H_f come from ``torch.func`` (``jacrev``, ``hessian``), so any
loss callable works, not only the three above. The GGN equals the Hessian
when the model is linear in θ (the residual term Σ_k ∂L/∂f_k ∇²f_k vanishes).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.func import jacrev

from curvlab.reference.problem import Problem, resolve_problem

__all__ = ["ggn", "output_hessian"]


def output_hessian(*problem: Any, params: Iterable[str | Tensor] | None = None) -> Tensor:
    """Hessian of the reduced loss w.r.t. the flattened outputs, H_f = ∂²L/∂vec(f)².

    Args:
        *problem: ``(model, loss_fn, inputs, targets)`` or ``(Problem,)``
            built from a model.
        params: Model form only; does not change H_f (kept for symmetry).

    Returns:
        Shape (M, M) with M = number of output entries (N·K), float64,
        row-major over the output tensor (sample n occupies rows n·K … n·K+K−1).

    Raises:
        TypeError: malformed problem arguments.
        ValueError: the problem has no model (flat form ``(f, theta)``).

    Example:
        >>> out = output_hessian(torch.nn.Linear(2, 3), torch.nn.MSELoss(reduction="sum"),
        ...                      torch.zeros(1, 2), torch.zeros(1, 3))
        >>> out
        tensor([[2., 0., 0.],
                [0., 2., 0.],
                [0., 0., 2.]], dtype=torch.float64)
    """
    prob = _model_problem(resolve_problem(*problem, params=params), "output_hessian")
    outputs = prob.outputs(prob.theta).detach()
    shape = outputs.shape
    return torch.func.hessian(lambda o: prob.loss_of_outputs(o.view(shape)))(outputs.reshape(-1))


def ggn(*problem: Any, params: Iterable[str | Tensor] | None = None) -> Tensor:
    """Dense generalised Gauss-Newton matrix GGN = Jᵀ H_f J (see module docstring).

    Args:
        *problem: ``(model, loss_fn, inputs, targets)`` or ``(Problem,)``
            built from a model.
        params: Model form only: names or tensors of the parameters forming
            θ; default all trainable parameters.

    Returns:
        Shape (P, P), float64, symmetric positive semi-definite for convex
        losses, in the layout of :func:`~curvlab.reference.layout.param_layout`.

    Raises:
        TypeError: malformed problem arguments.
        ValueError: the problem has no model (flat form ``(f, theta)``).

    Example:
        >>> lin = torch.nn.Linear(1, 1)
        >>> X, y = torch.tensor([[1.0], [3.0]]), torch.zeros(2, 1)
        >>> ggn(lin, torch.nn.MSELoss(), X, y)   # (2/N) Σ_n [x_n, 1]ᵀ[x_n, 1]
        tensor([[10.,  4.],
                [ 4.,  2.]], dtype=torch.float64)
    """
    prob = _model_problem(resolve_problem(*problem, params=params), "ggn")
    jac = jacrev(lambda t: prob.outputs(t).reshape(-1))(prob.theta)
    h_out = output_hessian(prob)
    return jac.T @ h_out @ jac


def _model_problem(prob: Problem, who: str) -> Problem:
    """Reject problems without a model (the GGN needs network outputs)."""
    if prob.model is None:
        raise ValueError(f"{who} needs (model, loss_fn, inputs, targets); got the flat form (f, theta)")
    return prob

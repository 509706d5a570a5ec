"""Dense empirical and true Fisher matrices in float64, computed exactly.

Conventions. Write the reduced batch loss as

    L(θ) = c · Σ_n ℓ_n(f_n, y_n),   f_n = model(x_n; θ),

with c the reduction factor and ℓ_n the per-sample loss summed over the
sample's output entries:

=======================  ==========================================  ==============
loss                     ℓ_n(f, y)                                   c (mean / sum)
=======================  ==========================================  ==============
``MSELoss``              Σ_k (f_k − y_k)²                            1/(N·K) / 1
``CrossEntropyLoss``     −log softmax(f)_y (summed over extra        1/(N·d) / 1
                         dims d; soft targets: −Σ_c y_c log p_c)
``BCEWithLogitsLoss``    Σ_k −y_k log σ(f_k) − (1−y_k) log σ(−f_k)   1/(N·K) / 1
                         (y_k ∈ [0, 1], soft targets allowed)
=======================  ==========================================  ==============

Let g_n(y) = c ∇_θ ℓ_n(f_n, y) be the per-sample gradient of the *reduced*
loss at target y. Then

* **empirical** Fisher:  F_emp = (1/c) Σ_n g_n(y_n) g_n(y_n)ᵀ = c Σ_n ∇ℓ_n ∇ℓ_nᵀ;
* **true** Fisher:       F = (1/c) Σ_n E_{ŷ ~ p(·∣f_n)} [g_n(ŷ) g_n(ŷ)ᵀ],

where ℓ_n is read as a negative log-likelihood, −log p(y ∣ f_n) + const:

* MSE: p(·∣f) = N(f, ½ I) (then ℓ = ‖f − y‖² + const). The gradient is
  affine in ŷ, so E[g gᵀ] = g(f) g(f)ᵀ + ½ Σ_k d_k d_kᵀ with
  d_k = g(f + e_k) − g(f), exact;
* CE: ŷ ~ Categorical(softmax f_n): an exact sum over the C classes
  (only for outputs of shape (N, C));
* BCE: ŷ_k ~ Bernoulli(σ(f_k)) independently per output. The gradient is
  affine in ŷ, so E[g gᵀ] = m mᵀ + Σ_k σ_k(1−σ_k) d_k d_kᵀ with
  d_k = g(e_k) − g(0) and m = g(0) + Σ_k σ_k d_k (= 0), exact.

With this scaling the true Fisher equals the GGN for these losses
(exponential families in their natural parameters): both are
c Σ_n J_nᵀ ∇²_f ℓ_n J_n. The true Fisher is computed from loss gradients,
not from the output Hessian, so the equality is a genuine check.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import jacrev

from curvlab.reference.problem import Problem, resolve_problem

__all__ = ["fisher", "per_sample_losses", "reduction_factor"]

SUPPORTED = (nn.MSELoss, nn.CrossEntropyLoss, nn.BCEWithLogitsLoss)
KINDS = ("empirical", "true")
MSE_VARIANCE = 0.5  # ℓ = ‖f − y‖² is the NLL of N(f, ½ I) up to a constant


def _check_loss(loss_fn: Any) -> None:
    """Raise a ValueError unless ``loss_fn`` is a supported loss with a supported reduction."""
    names = ", ".join(t.__name__ for t in SUPPORTED)
    if not isinstance(loss_fn, SUPPORTED):
        raise ValueError(f"fisher supports {names}; got {type(loss_fn).__name__}")
    kind = type(loss_fn).__name__
    if loss_fn.reduction not in ("mean", "sum"):
        raise ValueError(f"fisher supports reduction 'mean' or 'sum'; got reduction={loss_fn.reduction!r} for {kind}")
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        if loss_fn.weight is not None:
            raise ValueError("fisher supports CrossEntropyLoss without class weights; got weight set")
        if loss_fn.label_smoothing != 0.0:
            raise ValueError(
                f"fisher supports CrossEntropyLoss with label_smoothing=0; got {loss_fn.label_smoothing}"
            )
    if isinstance(loss_fn, nn.BCEWithLogitsLoss) and (
        loss_fn.weight is not None or loss_fn.pos_weight is not None
    ):
        raise ValueError("fisher supports BCEWithLogitsLoss without weight/pos_weight; got one set")


def per_sample_losses(loss_fn: nn.Module, outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample losses ℓ_n (summed over each sample's entries), shape (N,).

    Satisfies ``loss_fn(outputs, targets) == reduction_factor(...) * ℓ.sum()``.

    Raises:
        ValueError: unsupported loss or reduction (see module docstring), or
            CrossEntropyLoss targets equal to ``ignore_index``.

    Example:
        >>> per_sample_losses(nn.MSELoss(), torch.tensor([[1.0, 2.0], [0.0, 3.0]]), torch.zeros(2, 2))
        tensor([5., 9.])
    """
    _check_loss(loss_fn)
    n = outputs.shape[0]
    if isinstance(loss_fn, nn.MSELoss):
        per = F.mse_loss(outputs, targets, reduction="none")
    elif isinstance(loss_fn, nn.BCEWithLogitsLoss):
        per = F.binary_cross_entropy_with_logits(outputs, targets, reduction="none")
    else:
        if not targets.is_floating_point() and bool((targets == loss_fn.ignore_index).any()):
            raise ValueError(
                f"fisher does not support ignored targets; got targets equal to ignore_index={loss_fn.ignore_index}"
            )
        per = F.cross_entropy(outputs, targets, reduction="none", ignore_index=loss_fn.ignore_index)
    return per.reshape(n, -1).sum(dim=1)


def reduction_factor(loss_fn: nn.Module, outputs: Tensor, targets: Tensor) -> float:
    """The factor c in L = c · Σ_n ℓ_n: 1 for "sum", 1/(number of loss terms) for "mean".

    The number of loss terms is N·K for MSE/BCE and N (times any extra
    dimensions) for CrossEntropyLoss.

    Raises:
        ValueError: unsupported loss or reduction.

    Example:
        >>> reduction_factor(nn.MSELoss(), torch.zeros(4, 3), torch.zeros(4, 3))
        0.08333333333333333
        >>> reduction_factor(nn.CrossEntropyLoss(), torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
        0.25
    """
    _check_loss(loss_fn)
    if loss_fn.reduction == "sum":
        return 1.0
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        class_dim = 1 if outputs.dim() > 1 else 0
        terms = outputs.numel() // outputs.shape[class_dim]
    else:
        terms = outputs.numel()
    return 1.0 / terms


def fisher(*problem: Any, kind: str, params: Iterable[str | Tensor] | None = None) -> Tensor:
    """Dense Fisher matrix, empirical or true (exact expectation); see module docstring.

    Args:
        *problem: ``(model, loss_fn, inputs, targets)`` or ``(Problem,)``
            built from a model; ``loss_fn`` an ``nn.MSELoss``,
            ``nn.CrossEntropyLoss`` or ``nn.BCEWithLogitsLoss`` with reduction
            "mean" or "sum". Outputs have the sample index first.
        kind: ``"empirical"`` (at the observed targets) or ``"true"``
            (expectation under the model's predictive distribution; the
            targets are then only used for the sanity check of the reduction).
        params: Model form only: the parameters forming θ.

    Returns:
        Shape (P, P), float64, symmetric positive semi-definite.

    Raises:
        TypeError: malformed problem arguments.
        ValueError: ``kind`` not in ("empirical", "true"); an unsupported loss,
            reduction, weight or label smoothing (named); the flat form
            (f, theta); true Fisher of CrossEntropyLoss with outputs that are
            not (N, C).

    Example:
        >>> lin = nn.Linear(1, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = lin.weight.fill_(1.0)
        >>> X, y = torch.tensor([[1.0], [2.0]]), torch.zeros(2, 1)
        >>> fisher(lin, nn.MSELoss(reduction="sum"), X, y, kind="empirical")  # Σ (2 r_n x_n)²
        tensor([[68.]], dtype=torch.float64)
        >>> fisher(lin, nn.MSELoss(reduction="sum"), X, y, kind="true")       # = GGN = 2 Σ x_n²
        tensor([[10.]], dtype=torch.float64)
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    prob = resolve_problem(*problem, params=params)
    if prob.model is None:
        raise ValueError("fisher needs (model, loss_fn, inputs, targets); got the flat form (f, theta)")
    loss_fn = prob.loss_fn
    _check_loss(loss_fn)
    outputs = prob.outputs(prob.theta).detach()
    c = reduction_factor(loss_fn, outputs, prob.targets)
    _check_reduction(prob, outputs, c)
    if kind == "empirical":
        grads = _loss_jacobian(prob, prob.targets)
        return c * grads.T @ grads
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        return c * _true_ce(prob, outputs)
    if isinstance(loss_fn, nn.BCEWithLogitsLoss):
        return c * _true_bce(prob, outputs)
    return c * _true_mse(prob, outputs)


def _loss_jacobian(prob: Problem, targets: Tensor) -> Tensor:
    """Rows ∇_θ ℓ_n at the given targets, shape (N, P)."""
    return jacrev(lambda t: per_sample_losses(prob.loss_fn, prob.outputs(t), targets))(prob.theta)


def _check_reduction(prob: Problem, outputs: Tensor, c: float) -> None:
    """Sanity check: loss_fn(f, y) == c Σ_n ℓ_n, else our convention does not apply."""
    full = prob.loss_of_outputs(outputs)
    ours = c * per_sample_losses(prob.loss_fn, outputs, prob.targets).sum()
    if not torch.allclose(full, ours, rtol=1e-10, atol=1e-12):
        raise ValueError(
            f"fisher could not reproduce {type(prob.loss_fn).__name__} as c·Σ_n ℓ_n "
            f"(loss {full.item()}, c·Σℓ {ours.item()}); check the output/target shapes"
        )


def _true_ce(prob: Problem, outputs: Tensor) -> Tensor:
    """Σ_n Σ_k p_nk ∇ℓ_n(k) ∇ℓ_n(k)ᵀ, exact sum over the classes."""
    if outputs.dim() != 2:
        raise ValueError(
            "true fisher supports CrossEntropyLoss with outputs of shape (N, C); "
            f"got shape {tuple(outputs.shape)}"
        )
    n, classes = outputs.shape
    probs = outputs.softmax(dim=1)
    total = outputs.new_zeros(prob.theta.numel(), prob.theta.numel())
    for k in range(classes):
        grads = _loss_jacobian(prob, torch.full((n,), k, dtype=torch.long))
        total += grads.T @ (probs[:, k, None] * grads)
    return total


def _unit_targets(outputs: Tensor, base: Tensor) -> list[Tensor]:
    """``base + e_k`` for every per-sample entry k (the same k in every sample)."""
    n = outputs.shape[0]
    flat = base.reshape(n, -1)
    out = []
    for k in range(flat.shape[1]):
        t = flat.clone()
        t[:, k] += 1.0
        out.append(t.view(outputs.shape))
    return out


def _true_bce(prob: Problem, outputs: Tensor) -> Tensor:
    """Σ_n E[∇ℓ_n ∇ℓ_nᵀ] under independent Bernoulli(σ(f_nk)), using affinity in ŷ."""
    n = outputs.shape[0]
    probs = torch.sigmoid(outputs).reshape(n, -1)
    g0 = _loss_jacobian(prob, torch.zeros_like(outputs))
    mean = g0.clone()
    second = outputs.new_zeros(prob.theta.numel(), prob.theta.numel())
    for k, target in enumerate(_unit_targets(outputs, torch.zeros_like(outputs))):
        d = _loss_jacobian(prob, target) - g0
        mean += probs[:, k, None] * d
        second += d.T @ ((probs[:, k] * (1 - probs[:, k]))[:, None] * d)
    return mean.T @ mean + second


def _true_mse(prob: Problem, outputs: Tensor) -> Tensor:
    """Σ_n E[∇ℓ_n ∇ℓ_nᵀ] under ŷ ~ N(f_n, ½ I), using affinity in ŷ."""
    g0 = _loss_jacobian(prob, outputs)
    second = g0.T @ g0
    for target in _unit_targets(outputs, outputs):
        d = _loss_jacobian(prob, target) - g0
        second += MSE_VARIANCE * d.T @ d
    return second

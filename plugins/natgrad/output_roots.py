r"""Square roots of the loss's output Hessian per example: exact columns and Monte-Carlo samples.

For a call ``loss_fn(f, y)`` with outputs :math:`f \in \mathbb R^{N \times \dots}`
(examples in dimension 0) and the reduced loss
:math:`L = c \sum_\tau \ell_\tau` (:func:`~curvlab.curvature.loss_curvature.reduction_scale`),
the Fisher (= generalised Gauss-Newton matrix for these exponential-family losses) is

.. math::

    F = \sum_n J_n^\top H_n J_n, \qquad H_n = c\,\nabla^2_{f_n} \textstyle\sum_\tau \ell_\tau,

and this module returns, per example :math:`n`, :math:`K` vectors
:math:`v_{n,1..K}` (shaped like one row :math:`f_n`) with
:math:`\sum_k v_{n,k} v_{n,k}^\top = H_n` (exact, :func:`exact_roots`) or
:math:`\mathbb E[\sum_k v_{n,k} v_{n,k}^\top] = H_n` (Monte Carlo,
:func:`mc_roots`), as a tensor of shape ``(N, K, *f.shape[1:])``.

* Exact: :math:`K` = the output entries of one example
  (:func:`~curvlab.curvature.loss_curvature.exact_columns`: MSE
  :math:`\sqrt{2c}\,e_k`, BCE :math:`\sqrt{c\,\sigma_k(1-\sigma_k)}\,e_k`, CE
  :math:`\sqrt{c\,p_k}(e_k - p)` per position).
* Monte Carlo: targets :math:`\hat y_m` drawn from the model's predictive
  distribution (:func:`sample_targets`: MSE :math:`\mathcal N(f, \tfrac12 I)`,
  CE :math:`\mathrm{Cat}(\operatorname{softmax} f)` over dimension 1, BCE
  independent :math:`\mathrm{Bernoulli}(\sigma(f))`), and
  :math:`v_{n,m} = \frac{1}{\sqrt{cM}}\, \partial\,\texttt{loss\_fn}(f, \hat y_m) / \partial f_n
  = \sqrt{c/M}\,\nabla_{f_n} \ell_n(f_n, \hat y_{n,m})`: the gradient of the loss module
  itself at the sampled targets (autograd, no hand-written derivative), so
  :math:`\sum_m v v^\top` is the *empirical* Fisher of the sampled targets
  divided by :math:`M` (what ``curvlab.reference.fisher(..., kind="empirical")``
  computes densely at each :math:`\hat y_m`).

The losses are read as negative log-likelihoods (MSE: :math:`\ell = \|f-y\|^2`
is the NLL of :math:`\mathcal N(f, \frac12 I)` up to a constant), as in
:mod:`curvlab.reference.fisher`. Neither root depends on the observed targets,
except that ``CrossEntropyLoss`` terms whose target is ``ignore_index`` are
left out (their columns are zero and the sampled targets keep ``ignore_index``
there, so :math:`c` is the same).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from curvlab.curvature.loss_curvature import exact_columns, reduction_scale, term_mask

__all__ = ["MSE_VARIANCE", "exact_roots", "mc_roots", "sample_targets"]

#: Variance of the Gaussian whose NLL is ``MSELoss``'s per-entry ``(f - y)²`` (up to a constant).
MSE_VARIANCE = 0.5


def exact_roots(loss_fn: nn.Module, f: Tensor, targets: Tensor | None = None) -> Tensor:
    r"""Exact roots :math:`v_{n,k}` with :math:`\sum_k v_{n,k}v_{n,k}^\top = H_n`, shape ``(N, K, *row)``.

    Args:
        loss_fn: ``MSELoss``, ``CrossEntropyLoss`` or ``BCEWithLogitsLoss``
            (checked with :func:`~curvlab.curvature.loss_curvature.check_loss_module`).
        f: The loss input, examples in dimension 0 (detached values suffice).
        targets: The observed targets (only for CE's ``ignore_index`` terms).

    Returns:
        ``(N, K, *f.shape[1:])`` with ``K = f[0].numel()``.

    Example:
        >>> v = exact_roots(nn.CrossEntropyLoss(reduction="sum"), torch.zeros(1, 2))
        >>> (v[0].T @ v[0]).round(decimals=6).tolist()   # diag(p) - p pᵀ with p = (1/2, 1/2)
        [[0.25, -0.25], [-0.25, 0.25]]
    """
    cols = list(exact_columns(loss_fn, f, targets))
    return torch.stack(cols, dim=1)


def sample_targets(
    loss_fn: nn.Module, f: Tensor, generator: torch.Generator, samples: int = 1,
    targets: Tensor | None = None,
) -> Tensor:
    r"""``samples`` target tensors drawn from the model's predictive distribution at ``f``, stacked.

    MSE: :math:`\hat y = f + \sqrt{1/2}\,\varepsilon`; CE: class indices
    :math:`\hat y \sim \mathrm{Cat}(\operatorname{softmax}_1 f)` of shape
    ``f.shape[:1] + f.shape[2:]`` (``ignore_index`` kept where the observed
    class-index targets have it); BCE: :math:`\hat y \sim \mathrm{Bernoulli}(\sigma(f))`.
    Draws only from ``generator`` (never the global RNG), all samples at once.

    Args:
        loss_fn: A supported loss module.
        f: The loss input.
        generator: Private generator on ``f``'s device.
        samples: :math:`M \ge 1`.
        targets: The observed targets (only for CE's ``ignore_index``).

    Returns:
        ``(M, *target_shape)``: sample ``m`` is ``out[m]``.

    Raises:
        ValueError: ``samples < 1``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> sample_targets(nn.CrossEntropyLoss(), torch.zeros(3, 4), g, 2).shape
        torch.Size([2, 3])
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    f = f.detach()
    if isinstance(loss_fn, nn.MSELoss):
        eps = torch.randn((samples, *f.shape), generator=generator, dtype=f.dtype, device=f.device)
        return f + math.sqrt(MSE_VARIANCE) * eps
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        p = f.softmax(dim=1).movedim(1, -1)
        idx = torch.multinomial(p.reshape(-1, p.shape[-1]), samples, replacement=True,
                                generator=generator)                      # (rows, M)
        y = idx.T.reshape(samples, *p.shape[:-1])
        mask = term_mask(loss_fn, f, targets)
        if mask is not None:
            y = torch.where(mask, y, torch.full_like(y, loss_fn.ignore_index))
        return y
    probs = torch.sigmoid(f).expand(samples, *f.shape)
    return torch.bernoulli(probs, generator=generator)


def mc_roots(
    loss_fn: nn.Module, f: Tensor, generator: torch.Generator, samples: int = 1,
    targets: Tensor | None = None,
) -> Tensor:
    r"""Monte-Carlo roots :math:`v_{n,m}` (module docstring), shape ``(N, M, *row)``.

    :math:`\mathbb E[\sum_m v_{n,m} v_{n,m}^\top] = H_n`. Each :math:`v` is the
    gradient of ``loss_fn.forward`` (hooks bypassed; ``torch.func.grad``
    batched over the samples with ``vmap``) at the targets of
    :func:`sample_targets`, divided by :math:`\sqrt{cM}`.

    Args:
        loss_fn: A supported loss module.
        f: The loss input.
        generator: Private generator on ``f``'s device.
        samples: :math:`M \ge 1`.
        targets: The observed targets (only for CE's ``ignore_index``).

    Example:
        Every entry is :math:`\pm\sqrt c\,|p_k - [\hat y = k]| = \pm\tfrac12\sqrt{1/3}`:

        >>> g = torch.Generator().manual_seed(0)
        >>> v = mc_roots(nn.CrossEntropyLoss(), torch.zeros(3, 2), g)
        >>> v.shape, round(float(v.abs().max()), 6), bool((v.abs() == v.abs().max()).all())
        (torch.Size([3, 1, 2]), 0.288675, True)
    """
    c = reduction_scale(loss_fn, f, targets)
    sampled = sample_targets(loss_fn, f, generator, samples, targets)
    grad = torch.func.grad(lambda out, y: loss_fn.forward(out, y))
    v = torch.func.vmap(grad, in_dims=(None, 0))(f.detach(), sampled)   # (M, N, *row)
    return v.movedim(0, 1) / math.sqrt(c * samples)

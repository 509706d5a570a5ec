r"""Square roots of a loss's output Hessian: exact columns and Monte-Carlo samples.

A Kronecker factor :math:`G` is built from vectors :math:`v` at the network
outputs :math:`f` (the loss module's input) back-propagated to a layer's
outputs. With the reduced loss :math:`L = c \sum_\tau \ell_\tau(f_\tau, y_\tau)`
(:math:`\tau` runs over the loss terms; :math:`c = 1` for ``reduction="sum"``,
:math:`c = 1/(\text{number of terms})` for ``"mean"``) the vectors satisfy

.. math::

    \sum_k v_k v_k^\top = c\, \nabla^2_f \sum_\tau \ell_\tau
    \quad\text{(exact)}, \qquad
    \mathbb{E}\Big[\tfrac1M \sum_{m=1}^M v_m v_m^\top\Big] = c\, \nabla^2_f \sum_\tau \ell_\tau
    \quad\text{(Monte Carlo)}.

Per loss (:math:`\ell` read as a negative log-likelihood, as kfac-pytorch and
curvlinops do):

* ``MSELoss``: terms are the entries of :math:`f`; exact column
  :math:`\sqrt{2c}\, e_k`; MC: :math:`\hat y \sim \mathcal N(f, \tfrac12)`, so
  :math:`v = \sqrt{2c}\,\varepsilon` with :math:`\varepsilon \sim \mathcal N(0, I)`;
* ``CrossEntropyLoss``: terms are the positions (classes in dimension 1);
  exact columns :math:`\sqrt{c\,p_k}\,(e_k - p)`; MC:
  :math:`\hat y \sim \mathrm{Cat}(p)`, :math:`v = \sqrt c\,(p - e_{\hat y})`;
* ``BCEWithLogitsLoss``: terms are the entries; exact column
  :math:`\sqrt{c\,\sigma_k(1-\sigma_k)}\, e_k`; MC:
  :math:`\hat y \sim \mathrm{Bernoulli}(\sigma)`, :math:`v = \sqrt c\,(\sigma - \hat y)`

(:math:`p = \operatorname{softmax} f`; for CE
:math:`(\operatorname{diag}\sqrt p - p\sqrt p^\top)(\cdot)^\top = \operatorname{diag} p - p p^\top`.)
The MC samples use only the model's outputs, never the targets (the BCE
curvature does not depend on soft targets either).

Exact columns. The first dimension of :math:`f` indexes *rows* (samples)
that are assumed not to interact through the model, so one column serves all
rows at once; every output entry *within* a row gets its own column (a
sequence model's positions interact through attention). The number of
backward passes is therefore :func:`num_exact_columns` = entries per row
(MSE/BCE: ``f[0].numel()``; CE: ``C · positions``). With this choice the exact
factor is the expectation of the Monte-Carlo one. (curvlinops' ``type-2``
factor batches a column over all terms of all positions instead; on models
whose positions interact the two differ by cross-position terms.)
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

__all__ = [
    "LOSSES",
    "check_loss_module",
    "exact_columns",
    "mc_samples",
    "num_exact_columns",
    "reduction_scale",
    "term_mask",
]

LOSSES: tuple[type[nn.Module], ...] = (nn.MSELoss, nn.CrossEntropyLoss, nn.BCEWithLogitsLoss)


def check_loss_module(loss_fn: object, who: str = "curvature") -> None:
    """Raise unless ``loss_fn`` is a loss whose output Hessian square root is known here.

    Raises:
        ValueError: a loss other than MSE/CE/BCEWithLogits, ``reduction`` not
            ``"mean"``/``"sum"``, class or element weights, ``pos_weight``, a
            non-default ``ignore_index`` or label smoothing.

    Example:
        >>> check_loss_module(nn.CrossEntropyLoss(label_smoothing=0.1), who="kfac")
        Traceback (most recent call last):
        ...
        ValueError: kfac: unsupported CrossEntropyLoss: label_smoothing must be 0 (got 0.1)
    """
    if not isinstance(loss_fn, LOSSES):
        names = ", ".join(t.__name__ for t in LOSSES)
        raise ValueError(f"{who} supports the losses {names}; got {type(loss_fn).__name__}")
    problems = []
    if loss_fn.reduction not in ("mean", "sum"):
        problems.append(f"reduction must be 'mean' or 'sum' (got {loss_fn.reduction!r})")
    if getattr(loss_fn, "weight", None) is not None:
        problems.append("weight must be None")
    if getattr(loss_fn, "pos_weight", None) is not None:
        problems.append("pos_weight must be None")
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        if loss_fn.ignore_index != -100:
            problems.append(f"ignore_index must be -100 (got {loss_fn.ignore_index})")
        if loss_fn.label_smoothing != 0:
            problems.append(f"label_smoothing must be 0 (got {loss_fn.label_smoothing})")
    if problems:
        raise ValueError(f"{who}: unsupported {type(loss_fn).__name__}: " + "; ".join(problems))


def _check_outputs(loss_fn: nn.Module, f: Tensor) -> None:
    """Raise for outputs without a sample dimension (and CE without a class dimension)."""
    need = 2 if isinstance(loss_fn, nn.CrossEntropyLoss) else 1
    if f.dim() < need or f.shape[0] == 0:
        raise ValueError(
            f"{type(loss_fn).__name__}: the loss input must have a sample dimension first"
            f"{' and classes in dimension 1' if need == 2 else ''}; got shape {tuple(f.shape)}"
        )


def term_mask(loss_fn: nn.Module, f: Tensor, targets: Tensor | None) -> Tensor | None:
    """Which CE terms count: ``targets != ignore_index`` for class-index targets (else ``None``).

    ``CrossEntropyLoss`` leaves out the terms whose target is ``ignore_index``
    (padding tokens): they have no curvature and do not count in the mean.

    Example:
        >>> term_mask(nn.CrossEntropyLoss(), torch.zeros(3, 2), torch.tensor([0, -100, 1]))
        tensor([ True, False,  True])
    """
    if (
        not isinstance(loss_fn, nn.CrossEntropyLoss) or targets is None
        or targets.is_floating_point() or targets.shape != f.shape[:1] + f.shape[2:]
    ):
        return None
    keep = targets != loss_fn.ignore_index
    return None if bool(keep.all()) else keep


def reduction_scale(loss_fn: nn.Module, f: Tensor, targets: Tensor | None = None) -> float:
    r"""The factor :math:`c` in :math:`L = c\sum_\tau \ell_\tau` (1 for ``"sum"``).

    ``"mean"`` divides by the number of terms: ``f.numel()`` for MSE/BCE,
    ``f.numel() / C`` for CE (class dimension 1), less the terms whose
    target is ``ignore_index`` when ``targets`` are given (:func:`term_mask`).

    Raises:
        ValueError: every CE target is ``ignore_index`` with ``"mean"`` (torch returns NaN).

    Example:
        >>> reduction_scale(nn.CrossEntropyLoss(), torch.zeros(4, 3, 5))
        0.05
        >>> reduction_scale(nn.CrossEntropyLoss(), torch.zeros(3, 2), torch.tensor([0, -100, 1]))
        0.5
    """
    _check_outputs(loss_fn, f)
    if loss_fn.reduction == "sum":
        return 1.0
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        mask = term_mask(loss_fn, f, targets)
        terms = f.numel() // f.shape[1] if mask is None else int(mask.sum())
        if terms == 0:
            raise ValueError("CrossEntropyLoss: every target is ignore_index; the mean loss is NaN")
    else:
        terms = f.numel()
    return 1.0 / terms


def num_exact_columns(loss_fn: nn.Module, f: Tensor) -> int:
    """Backward passes of :func:`exact_columns`: the output entries of one row.

    Example:
        >>> num_exact_columns(nn.MSELoss(), torch.zeros(8, 3, 2))
        6
    """
    _check_outputs(loss_fn, f)
    return f[0].numel()


def exact_columns(loss_fn: nn.Module, f: Tensor, targets: Tensor | None = None) -> Iterator[Tensor]:
    r"""Columns :math:`v_k` (shaped like ``f``) with :math:`\sum_k v_k v_k^\top = c\,\nabla^2_f \sum_\tau \ell_\tau`.

    Yields :func:`num_exact_columns` tensors; column ``k`` is non-zero only at
    entry ``k`` of every row (MSE/BCE), or at position ``k mod P`` of every row
    for class ``k // P`` (CE, ``P`` positions after the class dimension).

    Args:
        loss_fn: A checked loss module (:func:`check_loss_module`).
        f: The loss input (detached values suffice).
        targets: The loss's targets; only used to drop CE terms whose target
            is ``ignore_index`` (:func:`term_mask`).

    Example:
        >>> cols = list(exact_columns(nn.MSELoss(reduction="sum"), torch.zeros(2, 2)))
        >>> sum(v.reshape(-1, 1) @ v.reshape(1, -1) for v in cols).diagonal().round(decimals=6)
        tensor([2., 2., 2., 2.])
    """
    c = reduction_scale(loss_fn, f, targets)
    mask = term_mask(loss_fn, f, targets)
    f = f.detach()
    n = f.shape[0]
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        classes = f.shape[1]
        p = f.softmax(dim=1)
        if mask is not None:
            p = p * mask.unsqueeze(1)
        flat = p.reshape(n, classes, -1)  # (n, C, P)
        positions = flat.shape[2]
        for j in range(classes):
            for t in range(positions):
                v = torch.zeros_like(flat)
                pj = flat[:, j, t]
                v[:, :, t] = -flat[:, :, t] * pj.sqrt()[:, None]
                v[:, j, t] += pj.sqrt()
                yield v.mul_(math.sqrt(c)).view_as(f)
        return
    if isinstance(loss_fn, nn.MSELoss):
        diag = torch.full_like(f, 2.0 * c).reshape(n, -1)
    else:
        s = torch.sigmoid(f)
        diag = (s * (1 - s) * c).reshape(n, -1)
    root = diag.sqrt()
    for k in range(root.shape[1]):
        v = torch.zeros_like(root)
        v[:, k] = root[:, k]
        yield v.view_as(f)


def mc_samples(
    loss_fn: nn.Module, f: Tensor, generator: torch.Generator, samples: int = 1,
    targets: Tensor | None = None,
) -> Iterator[Tensor]:
    r"""Monte-Carlo vectors :math:`v_m/\sqrt M` with :math:`\mathbb E[\sum_m v_m v_m^\top]/M = c\nabla^2_f \sum_\tau\ell_\tau`.

    Targets are drawn from the model's predictive distribution at ``f`` with
    ``generator`` (never the global RNG): MSE :math:`\mathcal N(f, \frac12)`,
    CE categorical over dimension 1, BCE independent Bernoulli. Each yielded
    tensor is already divided by :math:`\sqrt M`.

    Args:
        loss_fn: A checked loss module.
        f: The loss input.
        generator: Private generator on ``f``'s device.
        samples: :math:`M \ge 1`.
        targets: Only used to drop CE terms whose target is ``ignore_index``.

    Raises:
        ValueError: ``samples < 1``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> v = next(mc_samples(nn.CrossEntropyLoss(reduction="sum"), torch.zeros(3, 2), g))
        >>> v.abs().tolist()  # p - e_y with p = (1/2, 1/2)
        [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    c = reduction_scale(loss_fn, f, targets)
    mask = term_mask(loss_fn, f, targets)
    f = f.detach()
    scale = math.sqrt(c / samples)
    for _ in range(samples):
        if isinstance(loss_fn, nn.MSELoss):
            eps = torch.randn(f.shape, generator=generator, dtype=f.dtype, device=f.device)
            yield eps.mul_(math.sqrt(2.0) * scale)
        elif isinstance(loss_fn, nn.CrossEntropyLoss):
            p = f.softmax(dim=1)
            flat = p.movedim(1, -1).reshape(-1, p.shape[1])
            idx = torch.multinomial(flat, 1, generator=generator).squeeze(1)
            onehot = torch.zeros_like(flat).scatter_(1, idx[:, None], 1.0)
            v = (flat - onehot).reshape(*p.movedim(1, -1).shape).movedim(-1, 1)
            if mask is not None:
                v = v * mask.unsqueeze(1)
            yield v.mul_(scale)
        else:
            s = torch.sigmoid(f)
            y = torch.bernoulli(s, generator=generator)
            yield (s - y).mul_(scale)

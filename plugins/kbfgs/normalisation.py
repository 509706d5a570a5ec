r"""The loss normalisation K-BFGS's hyper-parameters refer to.

The paper's defaults (lr 0.3, damping 0.3) are stated for the loss
:math:`L_\text{paper} = \frac1N \sum_n \ell_n`, the *mean over examples* of a
per-example loss :math:`\ell_n` *summed over the outputs* (e.g. sigmoid
cross-entropy summed over pixels). K-BFGS is not invariant to a rescaling of
the loss (the Levenberg–Marquardt damping compares :math:`s^\top y` with
:math:`\mu_2 s^\top s`, and :math:`\lambda_A` is absolute), so the backend
converts whatever the closure returns to that normalisation:
:math:`L_\text{paper} = c\,L` with

* ``reduction="mean"`` (torch's default): :math:`c = K`, the number of
  output entries per example, for element-wise losses (``MSELoss``,
  ``BCEWithLogitsLoss``, ``L1Loss``, ...), which average over all
  :math:`N K` entries; :math:`c = K / C` for ``CrossEntropyLoss`` /
  ``NLLLoss``, which already sum over the :math:`C` classes (so :math:`c = 1`
  for ``(N, C)`` outputs);
* ``reduction="sum"``: :math:`c = 1/N`;
* no ``loss_fn`` (or one without a ``reduction``): :math:`c = 1`, i.e. the
  closure's loss is taken to be in the paper's normalisation already.

The gradient entering the momentum and the pre-activation gradients of the
pairs are multiplied by :math:`c`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

__all__ = ["paper_loss_scale"]

_CLASS_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss)


def paper_loss_scale(loss_fn: Any, output: Tensor) -> float:
    r"""The factor :math:`c` with :math:`L_\text{paper} = c\,L` (module docstring).

    Args:
        loss_fn: The loss module given at construction (or ``None``).
        output: The model output of the evaluation, first dimension = examples.

    Returns:
        :math:`c` as a Python float.

    Raises:
        ValueError: a reduction other than ``"mean"`` or ``"sum"``.

    Example:
        >>> import torch
        >>> out = torch.zeros(8, 64)
        >>> paper_loss_scale(torch.nn.BCEWithLogitsLoss(), out)
        64.0
        >>> paper_loss_scale(torch.nn.CrossEntropyLoss(), torch.zeros(8, 10))
        1.0
        >>> paper_loss_scale(torch.nn.MSELoss(reduction="sum"), out)
        0.125
        >>> paper_loss_scale(None, out)
        1.0
    """
    reduction = getattr(loss_fn, "reduction", None)
    if reduction is None:
        return 1.0
    n = output.shape[0] if output.dim() > 0 else 1
    if reduction == "sum":
        return 1.0 / n
    if reduction != "mean":
        raise ValueError(f"kbfgs needs a loss with reduction 'mean' or 'sum', got {reduction!r}")
    per_example = output.numel() / max(n, 1)
    if isinstance(loss_fn, _CLASS_LOSSES) and output.dim() > 1:
        per_example /= output.shape[1]
    return float(per_example)

r"""The loss normalisation K-BFGS's hyper-parameters refer to, measured from the closure.

The paper's defaults (lr 0.3, damping 0.3) are stated for the loss

.. math::

    L_\text{paper} = \frac1N \sum_{n=1}^N \ell_n,

the *mean over the* :math:`N` *examples* of a per-example loss :math:`\ell_n`
*summed over the outputs* (e.g. sigmoid cross-entropy summed over pixels).
K-BFGS is not invariant to a rescaling of the loss (the Levenberg–Marquardt
damping compares :math:`s^\top y` with :math:`\mu_2 s^\top s`, and
:math:`\lambda_A` is absolute), so the backend works with
:math:`L_\text{paper}` whatever the closure returns.

It does not guess the closure from ``loss_fn``'s attributes. At every
evaluation a :class:`~curvlab.curvature.loss_scale.LossScaleProbe` with
``reference="sum"`` measures, from the gradients at the network outputs
:math:`f` that the closure fed into ``loss_fn``, the factor :math:`c` with

.. math::

    \frac{\partial L_\text{closure}}{\partial f} = c\,
    \frac{\partial \sum_i \texttt{loss\_fn}^{\text{sum}}(f_i, y_i)}{\partial f},

where :math:`\texttt{loss\_fn}^{\text{sum}}` is the module evaluated with
``reduction="sum"`` (the loss summed over examples and outputs, so
:math:`L_\text{paper} = \frac1N \sum_i \texttt{loss\_fn}^{\text{sum}}_i`), and
:math:`N` is the number of rows of the outputs fed to ``loss_fn``. Then

.. math::

    L_\text{paper} = \kappa\, L_\text{closure}, \qquad \kappa = \frac{1}{c\,N},

and the optimizer minimises :math:`\kappa L_\text{closure}`: the gradient
entering the momentum and the pre-activation gradients of the pairs are
multiplied by :math:`\kappa`. E.g. :math:`\kappa = K` (the outputs per
example) for ``BCEWithLogitsLoss()`` with the default mean reduction,
:math:`\kappa = 1` for ``BCEWithLogitsLoss(reduction="sum")(f, y) / N`` (the
paper's own loss) or for ``CrossEntropyLoss()`` on ``(N, C)`` outputs.
Parameter penalties in the closure do not touch :math:`f`; they are scaled
with the rest, so the optimizer follows :math:`\kappa L_\text{closure}`, a
positive multiple of the closure's own objective. A closure that is not a
positive multiple of ``loss_fn`` at the outputs (an output penalty, other
targets, micro-batches weighted unequally, a negated loss) is refused at
its first evaluation with a
:class:`~curvlab.curvature.loss_scale.LossScaleError`.

``loss_fn`` is therefore required, as a :class:`torch.nn.Module` with a
``reduction`` attribute (every torch loss module has one; ``"mean"``,
``"sum"``, ``"none"`` and ``"batchmean"`` all work, since the sum is
measured against): K-BFGS without it would have to assume a normalisation,
and a wrong assumption silently changes what lr and damping mean.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from curvlab.curvature.loss_scale import LossScaleError, LossScaleProbe

__all__ = ["PaperNormalisation"]


class PaperNormalisation:
    r"""Measure :math:`\kappa` (module docstring) for the closure calls made inside ``with``.

    Args:
        loss_fn: The loss module given to the optimizer.
        who: Optimizer name for error messages.

    Raises:
        ValueError: ``loss_fn`` is ``None``, not an :class:`torch.nn.Module`,
            or has no ``reduction`` attribute.

    Example:
        >>> import torch
        >>> loss_fn = torch.nn.BCEWithLogitsLoss(reduction="sum")
        >>> out, x = torch.randn(8, 64, requires_grad=True), torch.rand(8, 64)
        >>> norm = PaperNormalisation(loss_fn)
        >>> with norm:
        ...     loss = loss_fn(out, x) / 8       # the paper's loss: kappa = 1
        ...     loss.backward()
        >>> round(norm.factor(loss), 6)
        1.0
        >>> with norm:
        ...     loss = torch.nn.BCEWithLogitsLoss()(out, x)   # another module object
        >>> norm.factor(loss)
        Traceback (most recent call last):
        ...
        curvlab.curvature.loss_scale.LossScaleError: kbfgs: the closure did not call the loss_fn ...
    """

    def __init__(self, loss_fn: Any, *, who: str = "kbfgs") -> None:
        if not isinstance(loss_fn, nn.Module):
            got = "None" if loss_fn is None else f"a {type(loss_fn).__name__}"
            raise ValueError(
                f"{who} needs loss_fn, the torch.nn loss module the closure computes its loss "
                "with (e.g. torch.nn.BCEWithLogitsLoss(reduction='sum')): its lr and damping "
                "refer to the paper's loss normalisation (mean over examples of the loss summed "
                f"over outputs), which it measures against loss_fn at every evaluation; got {got}"
            )
        self.who = who
        self.probe = LossScaleProbe(loss_fn, who=who, reference="sum")

    def __enter__(self) -> PaperNormalisation:
        self.probe.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.probe.__exit__(*exc)

    def factor(self, loss: Tensor | float | None) -> float | None:
        r""":math:`\kappa` for the closure call that just ran (``None``: nothing to measure).

        Nothing can be measured when no gradient reached ``loss_fn``'s input
        (no backward pass through it) or every such gradient is zero or
        non-finite.

        Args:
            loss: What the closure returned.

        Returns:
            :math:`\kappa = 1/(cN) > 0`, or ``None``.

        Raises:
            LossScaleError: the closure did not call ``loss_fn``, is not a
                multiple of it at the outputs, or decreases when it increases
                (:math:`c \le 0`).
        """
        m = self.probe.measure(loss)
        if m.from_values or not math.isfinite(m.scale) or m.examples == 0:
            return None
        if m.scale <= 0.0:
            raise LossScaleError(
                f"{self.who}: the closure's loss is {m.scale:.3g} x the summed loss_fn at the "
                "network outputs, a non-positive multiple; K-BFGS minimises the closure's loss, "
                "so it must grow with loss_fn (return loss_fn(outputs, targets), possibly "
                "scaled by a positive constant)"
            )
        return 1.0 / (m.scale * m.examples)

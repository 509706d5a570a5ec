r"""How the closure's loss relates to the loss module: measured, never assumed.

Curvature backends know the loss module given at construction (``loss_fn``)
but not what the closure returns: ``loss_fn(out, y)``, ``loss_fn(out, y) /
len(x)``, a sum over micro-batches, or the module's loss plus a weight
penalty. Their hyper-parameters refer to one normalisation (K-BFGS: the mean
over examples of a loss summed over outputs), and their output-side
curvature (K-FAC's :math:`G`) is that of the module's loss, so they need the
factor :math:`c` with

.. math::

    \frac{\partial L_\text{closure}}{\partial f} = c\,
    \frac{\partial\, \texttt{loss\_fn}(f, y)}{\partial f}

at the network outputs :math:`f` the closure fed into ``loss_fn``. Parameter
penalties do not touch :math:`f` and leave :math:`c` unchanged (they are not
part of the output-side curvature either). :class:`LossScaleProbe` measures
:math:`c` during the closure call: a forward hook on ``loss_fn`` records
:math:`f`, the targets and a tensor hook for :math:`g_c = \partial
L_\text{closure}/\partial f`; afterwards the module's own gradient
:math:`g_m` is recomputed on the recorded outputs (a loss evaluation and a
backward through the loss alone: :math:`O(N C)`) and

.. math::

    c = \frac{\sum_i \langle g_{c,i}, g_{m,i}\rangle}{\sum_i \|g_{m,i}\|^2},
    \qquad r = \frac{\big\|g_c - c\, g_m\big\|}{\|g_c\|},

summed over the calls :math:`i` of ``loss_fn`` in one closure call (micro-batches).
A residual :math:`r` above the tolerance means the closure's loss is not a
multiple of ``loss_fn`` at the outputs (e.g. an output penalty, other
targets, a per-example weighting): :class:`LossScaleError` says so — never a
silently different curvature. When the closure ran without a backward pass
(``backward=False``), :math:`c = L_\text{closure} / \sum_i \texttt{loss\_fn}_i`
from the values. All arithmetic is float64.

Example:
    >>> import torch
    >>> model, loss_fn = torch.nn.Linear(3, 2), torch.nn.MSELoss(reduction="sum")
    >>> x, y = torch.randn(8, 3), torch.randn(8, 2)
    >>> probe = LossScaleProbe(loss_fn)
    >>> with probe:
    ...     loss = loss_fn(model(x), y) / 8          # the paper's per-example mean
    ...     loss.backward()
    >>> round(probe.measure(loss).scale, 6)
    0.125
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["LossScale", "LossScaleError", "LossScaleProbe"]


class LossScaleError(ValueError):
    """The closure's loss is not (a multiple of) the ``loss_fn`` given at construction."""


@dataclass(frozen=True)
class LossScale:
    """Result of one :meth:`LossScaleProbe.measure`.

    Attributes:
        scale: :math:`c` (``nan`` when nothing can be measured: every
            gradient and value is zero).
        calls: How many times ``loss_fn`` ran inside the closure.
        examples: Rows (first dimension) of the outputs fed to ``loss_fn``, summed over calls.
        residual: :math:`r` (0 when measured from values).
        from_values: Measured from loss values (no backward pass ran).
    """

    scale: float
    calls: int
    examples: int
    residual: float = 0.0
    from_values: bool = False


@dataclass
class _Call:
    outputs: Tensor
    target: Any
    kwargs: dict[str, Any]
    value: float
    grad: Tensor | None = None


class LossScaleProbe:
    r"""Measure :math:`c` (module docstring) for the closure calls made inside ``with probe:``.

    Args:
        loss_fn: The loss module given to the optimizer (called as
            ``loss_fn(outputs, targets)``).
        who: Optimizer name for error messages.
        rtol: Largest accepted residual :math:`r`; default
            :math:`\max(10^{-6}, 10\sqrt{\varepsilon})` of the outputs' dtype
            (:math:`3.5\cdot 10^{-3}` in float32).

    Raises:
        TypeError: ``loss_fn`` is not an :class:`torch.nn.Module` (a plain
            function cannot be observed).

    Example:
        >>> import torch
        >>> ce = torch.nn.CrossEntropyLoss()
        >>> out = torch.randn(4, 3, requires_grad=True)
        >>> y = torch.tensor([0, 1, 2, 1])
        >>> probe = LossScaleProbe(ce)
        >>> with probe:
        ...     loss = 3.0 * ce(out, y) + out.new_tensor(1.0)   # a constant does not count
        ...     loss.backward()
        >>> round(probe.measure(loss).scale, 6)
        3.0
    """

    def __init__(self, loss_fn: nn.Module, *, who: str = "this optimizer",
                 rtol: float | None = None) -> None:
        if not isinstance(loss_fn, nn.Module):
            raise TypeError(
                f"{who} needs loss_fn as a torch.nn.Module (to observe what the closure "
                f"computes), got {type(loss_fn).__name__}"
            )
        self.loss_fn = loss_fn
        self.who = who
        self.rtol = rtol
        self._calls: list[_Call] = []
        self._pending: _Call | None = None
        self._handles: list[RemovableHandle] = []

    # ---------------------------------------------------------------- capture
    def __enter__(self) -> LossScaleProbe:
        if self._handles:
            raise RuntimeError("LossScaleProbe is not re-entrant")
        self._calls = []
        # the pre-hook sees the caller's own tensor: a module with full backward hooks (BackPACK)
        # wraps its inputs before forward hooks see them, and a gradient hook on the wrapped
        # tensor would miss every other use of the outputs (an output penalty)
        self._handles = [
            self.loss_fn.register_forward_pre_hook(self._record, with_kwargs=True),
            self.loss_fn.register_forward_hook(self._value),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def active(self) -> bool:
        """Whether the probe's hooks are installed (inside ``with probe:``)."""
        return bool(self._handles)

    def forget(self) -> None:
        """Drop the calls recorded so far (without measuring them)."""
        self._calls = []
        self._pending = None

    def _record(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Forward pre-hook on ``loss_fn``: keep outputs, targets and a hook for their gradient.

        Calls with autograd off (an evaluation under ``torch.no_grad()``) are not recorded.
        """
        self._pending = None
        if not torch.is_grad_enabled():
            return
        outputs, rest = args[0], args[1:]
        target = rest[0] if rest else kwargs.get("target")
        extra = {k: v for k, v in kwargs.items() if k != "target"}
        call = _Call(outputs.detach(), target, extra, math.nan)
        if outputs.requires_grad:
            outputs.register_hook(lambda g, c=call: setattr(c, "grad", g.detach()))
        self._calls.append(call)
        self._pending = call

    def _value(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        """Forward hook on ``loss_fn``: the value of the call the pre-hook recorded."""
        if self._pending is not None:
            self._pending.value = float(output.detach().double().sum())
            self._pending = None

    # ---------------------------------------------------------------- measure
    def _module_grad(self, call: _Call) -> tuple[Tensor, float]:
        """:math:`g_m` and the module's value on the recorded outputs (hooks bypassed)."""
        f = call.outputs.detach().requires_grad_(True)
        with torch.enable_grad():
            value = self.loss_fn.forward(f, call.target, **call.kwargs)
            (grad,) = torch.autograd.grad(value, f)
        return grad, float(value.detach().double())

    def measure(self, loss: Tensor | float | None) -> LossScale:
        """:math:`c` for the closure call that just ran inside ``with probe:`` (forgets it).

        Args:
            loss: What the closure returned (used when no backward pass ran).

        Returns:
            A :class:`LossScale`.

        Raises:
            LossScaleError: ``loss_fn`` was not called inside the closure, or
                the closure's loss is not a multiple of it at the outputs
                (residual above ``rtol``); the message says what to pass.
        """
        calls, self._calls = self._calls, []
        if not calls:
            raise LossScaleError(
                f"{self.who}: the closure did not call the loss_fn given at construction "
                f"({type(self.loss_fn).__name__}); its curvature is that of loss_fn, so the "
                "closure must compute its loss with that very module object "
                "(e.g. curvlab.closure(model, loss_fn, inputs, targets))"
            )
        examples = sum(int(c.outputs.shape[0]) if c.outputs.dim() else 1 for c in calls)
        if any(c.grad is None for c in calls):
            return self._from_values(calls, loss, examples)
        num = den = gc2 = 0.0
        grads = []
        for c in calls:
            gm, _ = self._module_grad(c)
            gc = c.grad.double().reshape(-1)
            gm = gm.double().reshape(-1)
            grads.append((gc, gm))
            num += float(gc @ gm)
            den += float(gm @ gm)
            gc2 += float(gc @ gc)
        if den == 0.0:
            if gc2 == 0.0:  # a perfect fit: no gradient at the outputs, nothing to measure
                return LossScale(math.nan, len(calls), examples)
            raise self._mismatch(len(calls), 1.0)
        scale = num / den
        res2 = sum(float((gc - scale * gm).pow(2).sum()) for gc, gm in grads)
        residual = math.sqrt(res2 / gc2) if gc2 > 0 else 0.0
        if residual > self._rtol(calls[0].outputs.dtype) or not math.isfinite(scale):
            raise self._mismatch(len(calls), residual)
        return LossScale(scale, len(calls), examples, residual)

    def _from_values(self, calls: list[_Call], loss: Tensor | float | None,
                     examples: int) -> LossScale:
        if loss is None:
            raise LossScaleError(
                f"{self.who}: cannot relate the closure's loss to loss_fn: no backward pass "
                "ran and the closure returned nothing"
            )
        value = float(loss.detach().double()) if isinstance(loss, Tensor) else float(loss)
        module = sum(c.value for c in calls)
        if module == 0.0:
            return LossScale(math.nan if value == 0.0 else math.inf, len(calls), examples,
                             from_values=True)
        return LossScale(value / module, len(calls), examples, from_values=True)

    def _rtol(self, dtype: torch.dtype) -> float:
        if self.rtol is not None:
            return self.rtol
        eps = torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo().eps
        return max(1e-6, 10.0 * math.sqrt(eps))

    def _mismatch(self, calls: int, residual: float) -> LossScaleError:
        return LossScaleError(
            f"{self.who}: the closure's loss is not a multiple of the loss_fn given at "
            f"construction ({type(self.loss_fn).__name__}) at the network outputs (relative "
            f"residual {residual:.3g} over {calls} call(s)); its output-side curvature would "
            "be wrong. Return c * loss_fn(outputs, targets) (plus parameter penalties if you "
            "like), or pass the loss module your closure actually uses"
        )

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
Calls whose outputs received no gradient while others did (a ``loss_fn``
value computed for logging, on detached outputs or under ``no_grad``) are
left out: they do not take part in the gradient. ``reference="sum"``
measures :math:`c` against the *summed* loss instead (``loss_fn`` evaluated
with ``reduction="sum"`` on the recorded outputs, also for a module built
with ``"mean"`` or ``"none"``), so that :math:`L_\text{closure} = c \sum_i
\texttt{loss\_fn}^{\text{sum}}_i` whatever reduction the module has; a
backend whose hyper-parameters refer to a per-example normalisation then
needs only :math:`c` and the number of examples (K-BFGS:
:math:`L_\text{paper} = L_\text{closure} / (c N)`).
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

import copy
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
            gradient and value is zero, or a gradient is NaN/Inf).
        calls: How many times ``loss_fn`` ran inside the closure.
        examples: Rows (first dimension) of the outputs fed to ``loss_fn``, summed over the
            calls that were measured (an output tensor fed to several calls counts once).
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
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    value: float
    grad: Tensor | None = None

    def key(self) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        """Identity of the outputs tensor (storage address, shape, strides)."""
        f = self.outputs
        return (f.data_ptr(), tuple(f.shape), tuple(f.stride()))


REFERENCES = (None, "sum")


class LossScaleProbe:
    r"""Measure :math:`c` (module docstring) for the closure calls made inside ``with probe:``.

    Args:
        loss_fn: The loss module given to the optimizer (called as
            ``loss_fn(outputs, targets)``).
        who: Optimizer name for error messages.
        rtol: Largest accepted residual :math:`r`; default
            :math:`\max(10^{-6}, 10\sqrt{\varepsilon})` of the outputs' dtype
            (:math:`3.5\cdot 10^{-3}` in float32).
        reference: ``None``: measure :math:`c` against ``loss_fn`` as given;
            ``"sum"``: against ``loss_fn`` with ``reduction="sum"`` (module
            docstring).

    Raises:
        TypeError: ``loss_fn`` is not an :class:`torch.nn.Module` (a plain
            function cannot be observed).
        ValueError: ``reference`` is not ``None`` or ``"sum"``, or it is
            ``"sum"`` and ``loss_fn`` has no string ``reduction`` attribute
            (torch's loss modules all have one).

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

        Against the summed loss: a mean-reduced ``BCEWithLogitsLoss`` over
        ``4 × 5`` entries is :math:`\frac1{20}` of its sum.

        >>> bce = torch.nn.BCEWithLogitsLoss()
        >>> probe = LossScaleProbe(bce, reference="sum")
        >>> logits = torch.randn(4, 5, requires_grad=True)
        >>> with probe:
        ...     loss = bce(logits, torch.rand(4, 5))
        ...     loss.backward()
        >>> m = probe.measure(loss)
        >>> round(m.scale * 20, 6), m.examples
        (1.0, 4)
    """

    def __init__(self, loss_fn: nn.Module, *, who: str = "this optimizer",
                 rtol: float | None = None, reference: str | None = None) -> None:
        if not isinstance(loss_fn, nn.Module):
            raise TypeError(
                f"{who} needs loss_fn as a torch.nn.Module (to observe what the closure "
                f"computes), got {type(loss_fn).__name__}"
            )
        if reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
        if reference is not None and not isinstance(getattr(loss_fn, "reduction", None), str):
            raise ValueError(
                f"{who} relates the closure's loss to {type(loss_fn).__name__} summed over its "
                "entries (reduction='sum'), but the module has no 'reduction' attribute; use a "
                "torch.nn loss module, or give yours a reduction attribute ('mean', 'sum', "
                "'none') that its forward honours"
            )
        self.loss_fn = loss_fn
        self.who = who
        self.rtol = rtol
        self.reference = reference
        self._reference_fn = loss_fn
        if reference is not None:
            twin = copy.copy(loss_fn)  # shares parameters and buffers; only the reduction differs
            twin.reduction = reference
            self._reference_fn = twin
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

        Every argument after the outputs (positional and keyword) is kept and
        replayed when the module's own gradient is recomputed. Calls with
        autograd off (an evaluation under ``torch.no_grad()``) are not recorded.
        """
        self._pending = None
        if not torch.is_grad_enabled():
            return
        outputs = args[0]
        call = _Call(outputs.detach(), tuple(args[1:]), dict(kwargs), math.nan)
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
        """:math:`g_m` and the (reference) module's value on the recorded outputs (hooks bypassed)."""
        f = call.outputs.detach().requires_grad_(True)
        with torch.enable_grad():
            value = self._reference_fn.forward(f, *call.args, **call.kwargs)
            (grad,) = torch.autograd.grad(value, f)
        return grad, float(value.detach().double())

    def _reference_value(self, call: _Call) -> float:
        if self.reference is None:
            return call.value
        with torch.no_grad():
            value = self._reference_fn.forward(call.outputs, *call.args, **call.kwargs)
        return float(value.detach().double().sum())

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
        with_grad = [c for c in calls if c.grad is not None]
        if not with_grad:
            return self._from_values(calls, loss, _examples(calls))
        calls = with_grad  # the others took no part in the gradient
        examples = _examples(calls)
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
        if not all(math.isfinite(v) for v in (num, den, gc2)):
            return LossScale(math.nan, len(calls), examples)  # NaN/Inf gradients: nothing to measure
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
        module = sum(self._reference_value(c) for c in calls)
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
        summed = (" summed over all its entries (reduction='sum': calls on micro-batches must "
                  "weigh every example alike)" if self.reference == "sum" else "")
        return LossScaleError(
            f"{self.who}: the closure's loss is not a multiple of the loss_fn given at "
            f"construction ({type(self.loss_fn).__name__}){summed} at the network outputs "
            f"(relative residual {residual:.3g} over {calls} call(s)); its output-side "
            "curvature would be wrong. Return c * loss_fn(outputs, targets) (plus parameter "
            "penalties if you like), or pass the loss module your closure actually uses"
        )


def _examples(calls: list[_Call]) -> int:
    """Rows of the distinct output tensors of the calls."""
    seen = {c.key(): c.outputs for c in calls}
    return sum(int(f.shape[0]) if f.dim() else 1 for f in seen.values())

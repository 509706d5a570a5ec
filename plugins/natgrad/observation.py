r"""What the closure fed the model and the loss: inputs, outputs and targets per call.

The exact natural gradient needs the per-example Jacobians
:math:`J_n = \partial f_n / \partial\theta` of the mini-batch, hence the
mini-batch *inputs*. The training-loop contract (``opt.step(closure)``) does
not hand them to the optimizer, so :class:`ClosureObserver` watches the
closure call: a forward hook on the model records each call's inputs and
output, a forward hook on the loss module records each call's input and
targets, and every loss call is paired with the model call whose output
tensor it received (``loss_fn(model(x), y)``). Nothing is guessed: a loss
input that is not the very output tensor of a model call in the same closure
call (a transposed or rescaled output, a wrapper around the model) is refused
with a :class:`ValueError`, and so is a model input the per-example
recomputation cannot split (a tensor argument without the batch in
dimension 0). Model calls whose output never reaches the loss (e.g. an
output penalty computed on a second pass) are ignored: they are not part of
the loss module's Fisher. Several (model, loss) pairs in one closure call
(micro-batches) are kept in order.

Hooks exist only inside ``with observer:``; the recorded tensors are
detached and dropped by :meth:`ClosureObserver.calls` (no reference survives
the step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["ClosureObserver", "ObservedCall"]


@dataclass(frozen=True)
class ObservedCall:
    """One ``loss_fn(model(*args, **kwargs), targets)`` of a closure call.

    Attributes:
        args: The model's positional arguments (tensors detached).
        kwargs: Its keyword arguments (tensors detached).
        outputs: The model's output :math:`f` as the loss received it, detached, ``(N, ...)``.
        targets: The loss's targets (detached if a tensor).
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outputs: Tensor
    targets: Any

    @property
    def examples(self) -> int:
        """:math:`N`, the rows of :attr:`outputs`."""
        return int(self.outputs.shape[0])


def _detach(value: Any) -> Any:
    return value.detach() if isinstance(value, Tensor) else value


class ClosureObserver:
    """Record the (model, loss) calls made inside ``with observer:`` (see the module docstring).

    Args:
        model: The network whose forward calls are recorded.
        loss_fn: The loss module whose calls are paired with them.
        who: Optimizer name for messages.

    Example:
        >>> import torch
        >>> model, loss_fn = nn.Linear(3, 2), nn.MSELoss()
        >>> obs = ClosureObserver(model, loss_fn)
        >>> with obs:
        ...     loss = loss_fn(model(torch.ones(4, 3)), torch.zeros(4, 2))
        >>> [(c.examples, tuple(c.args[0].shape)) for c in obs.calls()]
        [(4, (4, 3))]
    """

    def __init__(self, model: nn.Module, loss_fn: nn.Module, *, who: str = "natgrad") -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.who = who
        self._model_calls: list[tuple[tuple[Any, ...], dict[str, Any], Any]] = []
        self._loss_calls: list[tuple[Tensor, Any]] = []
        self._handles: list[RemovableHandle] = []

    def __enter__(self) -> ClosureObserver:
        if self._handles:
            raise RuntimeError("ClosureObserver is not re-entrant")
        self._model_calls, self._loss_calls = [], []
        self._handles = [
            self.model.register_forward_hook(self._on_model, with_kwargs=True),
            self.loss_fn.register_forward_hook(self._on_loss, with_kwargs=True),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _on_model(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                  output: Any) -> None:
        self._model_calls.append((args, kwargs, output))

    def _on_loss(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                 output: Any) -> None:
        rest = args[1:]
        target = rest[0] if rest else kwargs.get("target")
        self._loss_calls.append((args[0], target))

    def calls(self) -> list[ObservedCall]:
        """The observed pairs, in the order of the loss calls (forgets the recording).

        Raises:
            ValueError: a loss call whose input is not a model output of this
                closure call; a model input that is neither a tensor with the
                batch in dimension 0 nor a non-tensor constant.
        """
        model_calls, loss_calls = self._model_calls, self._loss_calls
        self._model_calls, self._loss_calls = [], []
        out = []
        for f, target in loss_calls:
            match = [c for c in model_calls if c[2] is f]
            if not match:
                raise ValueError(
                    f"{self.who} needs the loss input to be the model's output tensor itself "
                    f"(loss_fn(model(x), y)); the closure passed {type(self.loss_fn).__name__} a "
                    "tensor that is not the output of a call of the model given at construction "
                    "in this closure call (transposed, rescaled, or computed by another module?)"
                )
            args, kwargs, _ = match[-1]
            n = int(f.shape[0]) if f.dim() else 0
            for where, value in [*((f"argument {i}", a) for i, a in enumerate(args)),
                                 *((f"keyword {k!r}", v) for k, v in kwargs.items())]:
                if isinstance(value, Tensor) and (value.dim() == 0 or value.shape[0] != n):
                    raise ValueError(
                        f"{self.who} recomputes the model example by example and needs every "
                        f"tensor input with the batch ({n} rows, as the loss input) in dimension "
                        f"0; model {where} has shape {tuple(value.shape)}"
                    )
                if isinstance(value, (list, tuple, dict)) and any(
                    isinstance(v, Tensor) for v in (value.values() if isinstance(value, dict)
                                                    else value)
                ):
                    raise ValueError(
                        f"{self.who} splits tensor inputs of the model by example and supports "
                        f"tensors passed directly, not inside a {type(value).__name__} "
                        f"(model {where})"
                    )
            out.append(ObservedCall(
                tuple(_detach(a) for a in args), {k: _detach(v) for k, v in kwargs.items()},
                f.detach(), _detach(target),
            ))
        return out

r"""What the closure fed the model and the loss, observed during the closure call.

The exact natural gradient needs per-example Jacobians :math:`J_n =
\partial f_n/\partial\theta` of the mini-batch, hence the mini-batch
*inputs*, which the training-loop contract (``opt.step(closure)``) does not
hand to the optimizer. :class:`ClosureObserver` watches the closure call:

* a forward pre-hook and hook on the model record each call's inputs and
  output;
* a forward hook on the loss module pairs each loss call with the model call
  whose output tensor it received (``loss_fn(model(x), y)``), computes the
  roots :math:`v_{n,k}` of the output Hessian there (a callable of the
  optimizer: exact or sampled, :mod:`~curvlab_plugins.natgrad.output_roots`)
  and back-propagates each root, through the closure's own graph
  (``retain_graph=True``, before the closure's backward pass; no parameter
  gradient is touched), to the outputs :math:`z` of the watched ``Linear``
  layers: :math:`g_{n,k} = \partial (v_{n,k}^\top f_n)/\partial z_n`;
* a forward hook on each watched ``Linear`` layer records its input and the
  gradient edge of its output (taken before a later in-place operation, such
  as ``ReLU(inplace=True)``, rewrites it).

A ``Linear`` layer gets its :math:`(a_n, g_{n,k})` (the Kronecker-structured
columns of :mod:`~curvlab_plugins.natgrad.columns`) only where that is exact:
called once in the model call, on a 2-D input with one row per example, its
output not a view, and its parameters used nowhere else in the graph of the
model's output (tied or functionally reused weights). Otherwise its parameters go through the generic
per-example recomputation (:mod:`~curvlab_plugins.natgrad.jacobians`).

Nothing is guessed: a loss input that is not the very output tensor of a
model call in the same closure call (a transposed or rescaled output, a
wrapper around the model) is refused with a :class:`ValueError`, and so is a
model input the per-example recomputation cannot split (a tensor argument
without the batch in dimension 0). Model calls whose output never reaches the
loss (e.g. an output penalty on a second pass) are ignored: they are not part
of the loss module's Fisher. Several (model, loss) pairs in one closure call
(micro-batches) are kept in order.

Hooks exist only inside ``with observer:``; the recorded tensors are detached,
and :meth:`ClosureObserver.calls` hands them over and forgets them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge
from torch.utils.hooks import RemovableHandle

from curvlab.curvature.finite import all_finite

__all__ = ["ClosureObserver", "LayerRecord", "ObservedCall"]


@dataclass(frozen=True)
class LayerRecord:
    r"""A watched ``Linear`` layer in one observed call.

    Attributes:
        inputs: :math:`a_n`, ``(N, d_in)``.
        grads: :math:`g_{n,k}`, ``(N, K, d_out)`` (``None``: the roots could not
            be back-propagated, e.g. a non-finite output).
    """

    inputs: Tensor
    grads: Tensor | None


@dataclass(frozen=True)
class ObservedCall:
    """One ``loss_fn(model(*args, **kwargs), targets)`` of a closure call.

    Attributes:
        args: The model's positional arguments (tensors detached).
        kwargs: Its keyword arguments (tensors detached).
        outputs: The model's output :math:`f` as the loss received it, detached, ``(N, ...)``.
        targets: The loss's targets (detached if a tensor).
        roots: :math:`v`, ``(N, K, *outputs.shape[1:])`` (``None``: not computed,
            e.g. non-finite outputs).
        layers: ``{layer name: LayerRecord}`` of the watched ``Linear`` layers
            whose columns are exact from the recorded :math:`(a, g)`.
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outputs: Tensor
    targets: Any
    roots: Tensor | None = None
    layers: dict[str, LayerRecord] = field(default_factory=dict)

    @property
    def examples(self) -> int:
        """:math:`N`, the rows of :attr:`outputs`."""
        return int(self.outputs.shape[0])


def _parameter_uses(f: Tensor) -> dict[int, int]:
    """``id(leaf)`` → how many autograd nodes of ``f``'s graph consume that leaf directly."""
    uses: dict[int, int] = {}
    seen, stack = set(), [f.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            variable = getattr(child, "variable", None)
            if variable is not None:
                uses[id(variable)] = uses.get(id(variable), 0) + 1
            else:
                stack.append(child)
    return uses


def _detach(value: Any) -> Any:
    return value.detach() if isinstance(value, Tensor) else value


@dataclass
class _ModelCall:
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Any = None
    linear: list[tuple[str, Any, Any, tuple[int, ...]]] = field(default_factory=list)
    # (name, input, gradient edge of the output or None, output shape)


class ClosureObserver:
    """Record the (model, loss) calls made inside ``with observer:`` (see the module docstring).

    Args:
        model: The network whose forward calls are recorded.
        loss_fn: The loss module whose calls are paired with them.
        layers: ``{name: Linear}`` layers to watch for the structured columns.
        roots: ``(outputs, targets) -> (N, K, *row)`` roots of the output
            Hessian, called once per loss call (default: none computed).
        who: Optimizer name for messages.

    Example:
        >>> model, loss_fn = nn.Sequential(nn.Linear(3, 2)), nn.MSELoss(reduction="sum")
        >>> obs = ClosureObserver(model, loss_fn, layers={"0": model[0]},
        ...                       roots=lambda f, y: torch.ones(f.shape[0], 1, *f.shape[1:]))
        >>> with obs:
        ...     loss = loss_fn(model(torch.ones(4, 3)), torch.zeros(4, 2))
        >>> [(c.examples, tuple(c.roots.shape), tuple(c.layers["0"].grads.shape)) for c in obs.calls()]
        [(4, (4, 1, 2), (4, 1, 2))]
    """

    def __init__(
        self, model: nn.Module, loss_fn: nn.Module, *, layers: Mapping[str, nn.Module] | None = None,
        roots: Callable[[Tensor, Any], Tensor] | None = None, who: str = "natgrad",
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.layers = dict(layers or {})
        self.roots = roots
        self.who = who
        self._open: list[_ModelCall] = []
        self._model_calls: list[_ModelCall] = []
        self._observed: list[ObservedCall | Tensor] = []
        self._handles: list[RemovableHandle] = []

    def __enter__(self) -> ClosureObserver:
        if self._handles:
            raise RuntimeError("ClosureObserver is not re-entrant")
        self._open, self._model_calls, self._observed = [], [], []
        self._handles = [self.model.register_forward_pre_hook(self._enter_model, with_kwargs=True)]
        for name, layer in self.layers.items():  # before the model's hook: the model may be a layer
            self._handles.append(layer.register_forward_hook(
                lambda m, args, out, n=name: self._on_layer(n, args, out)))
        self._handles += [
            self.model.register_forward_hook(self._exit_model, with_kwargs=True),
            self.loss_fn.register_forward_hook(self._on_loss, with_kwargs=True),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._open = []

    # ---------------------------------------------------------------- hooks
    def _enter_model(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._open.append(_ModelCall(args, kwargs))

    def _exit_model(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                    output: Any) -> None:
        call = self._open.pop() if self._open else _ModelCall(args, kwargs)
        call.output = output
        self._model_calls.append(call)

    def _on_layer(self, name: str, args: tuple[Any, ...], output: Tensor) -> None:
        if not self._open or not torch.is_grad_enabled():
            return
        x = args[0] if args else None
        edge, shape = None, ()
        if (isinstance(x, Tensor) and x.dim() == 2 and isinstance(output, Tensor)
                and output.requires_grad and output._base is None):
            edge, shape = get_gradient_edge(output), tuple(output.shape)
        self._open[-1].linear.append((name, x, edge, shape))

    def _on_loss(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                 output: Any) -> None:
        f = args[0]
        rest = args[1:]
        target = rest[0] if rest else kwargs.get("target")
        match = [c for c in self._model_calls if c.output is f]
        if not match:
            self._observed.append(f)  # refused in calls()
            return
        call = match[-1]
        roots = None
        if self.roots is not None and all_finite([f.detach()]):
            roots = self.roots(f.detach(), _detach(target))
        layers = self._layer_records(call, f, roots)
        self._observed.append(ObservedCall(
            tuple(_detach(a) for a in call.args), {k: _detach(v) for k, v in call.kwargs.items()},
            f.detach(), _detach(target), roots, layers,
        ))

    def _layer_records(self, call: _ModelCall, f: Tensor, roots: Tensor | None) -> dict[str, LayerRecord]:
        """:math:`(a, g)` of the layers called once, on 2-D inputs of ``N`` rows, with an edge."""
        n = int(f.shape[0]) if f.dim() else -1
        names = [item[0] for item in call.linear]
        usable = [item for item in call.linear
                  if names.count(item[0]) == 1 and item[2] is not None and item[1].shape[0] == n]
        if usable and f.grad_fn is not None:  # a weight also used outside its layer: not (a, g)
            uses = _parameter_uses(f)
            usable = [item for item in usable
                      if all(uses.get(id(p), 0) <= 1 for p in self.layers[item[0]].parameters())]
        if not usable:
            return {}
        if roots is None or not f.requires_grad:
            return {name: LayerRecord(x.detach(), None) for name, x, _, _ in usable}
        edges = [edge for _, _, edge, _ in usable]
        per_root = []
        for k in range(roots.shape[1]):
            grads = torch.autograd.grad(f, edges, grad_outputs=roots[:, k].to(f.dtype),
                                        retain_graph=True, allow_unused=True)
            per_root.append([  # None: the layer does not reach f, its g is 0
                f.new_zeros(shape) if g is None else g.detach()
                for g, (_, _, _, shape) in zip(grads, usable)
            ])
        return {
            name: LayerRecord(x.detach(), torch.stack([r[i] for r in per_root], dim=1))
            for i, (name, x, _, _) in enumerate(usable)
        }

    # -------------------------------------------------------------- results
    def calls(self) -> list[ObservedCall]:
        """The observed pairs, in the order of the loss calls (forgets the recording).

        Raises:
            ValueError: a loss call whose input is not a model output of this
                closure call; a model input that is neither a tensor with the
                batch in dimension 0 nor a non-tensor constant.
        """
        observed, self._observed, self._model_calls = self._observed, [], []
        for item in observed:
            if not isinstance(item, ObservedCall):
                raise ValueError(
                    f"{self.who} needs the loss input to be the model's output tensor itself "
                    f"(loss_fn(model(x), y)); the closure passed {type(self.loss_fn).__name__} a "
                    "tensor that is not the output of a call of the model given at construction "
                    "in this closure call (transposed, rescaled, or computed by another module?)"
                )
            self._check_inputs(item)
        return list(observed)  # type: ignore[arg-type]

    def _check_inputs(self, call: ObservedCall) -> None:
        n = call.examples if call.outputs.dim() else 0
        for where, value in [*((f"argument {i}", a) for i, a in enumerate(call.args)),
                             *((f"keyword {k!r}", v) for k, v in call.kwargs.items())]:
            if isinstance(value, Tensor) and (value.dim() == 0 or value.shape[0] != n):
                raise ValueError(
                    f"{self.who} recomputes the model example by example and needs every "
                    f"tensor input with the batch ({n} rows, as the loss input) in dimension "
                    f"0; model {where} has shape {tuple(value.shape)}"
                )
            if isinstance(value, (list, tuple, dict)) and any(
                isinstance(v, Tensor) for v in (value.values() if isinstance(value, dict) else value)
            ):
                raise ValueError(
                    f"{self.who} splits tensor inputs of the model by example and supports "
                    f"tensors passed directly, not inside a {type(value).__name__} "
                    f"(model {where})"
                )

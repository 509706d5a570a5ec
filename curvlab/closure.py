"""The training-loop contract: ``optimizer.step(closure)``.

Every curvlab optimizer, first-order baselines included, is driven the way
:class:`torch.optim.LBFGS` is: ``loss = opt.step(closure)``. The closure
evaluates the loss on the current mini-batch and, by default, clears the
gradients and back-propagates. An optimizer may call it several times per
step (K-BFGS re-evaluates the same batch after moving the weights).

Some methods need more than a plain closure. They ask for it through
keyword options, which :class:`LossClosure` (built with
:func:`curvlab.closure`) honours and which a hand-written closure may honour
too by accepting the same keywords:

``backward`` (default ``True``)
    ``False``: return the loss with its autograd graph and leave ``.grad``
    untouched (GroupedNewton differentiates it itself).
``create_graph`` (default ``False``)
    Back-propagate with ``create_graph=True`` so that Hessian-vector products
    are possible (AdaHessian, Sophia-H).
``fresh`` (default ``False``)
    Evaluate on a separate mini-batch drawn from the closure's batch source
    instead of the current one (GroupedNewton's tensors).

Which options an optimizer needs is declared in its
:class:`~curvlab.optimizer.OptimizerMeta` (``closure_options``), so the
harness never special-cases names. A plain zero-argument closure works for
every optimizer that needs no option (PyTorch Lightning's automatic
optimization passes such a closure); one that needs an option and gets a
plain closure raises a :class:`ValueError` that names the option, says what
the method needs it for (:data:`OPTION_PURPOSES`) and how to provide it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Protocol

import torch
from torch import Tensor, nn

__all__ = [
    "CLOSURE_OPTIONS",
    "OPTION_PURPOSES",
    "Closure",
    "LossClosure",
    "accepts",
    "call_closure",
    "closure",
    "graph_leaves",
    "missing_options_message",
]

CLOSURE_OPTIONS = ("backward", "create_graph", "fresh")

#: What a method needs each contract option for, and how a closure provides it
#: (used in the errors for a closure that does not accept the option).
OPTION_PURPOSES: Mapping[str, str] = MappingProxyType({
    "backward": "backward=False: it differentiates the returned loss itself, so the closure must "
                "return the loss with its autograd graph and not back-propagate",
    "create_graph": "create_graph=True: it takes Hessian-vector products, which need the "
                    "gradient's own graph (loss.backward(create_graph=True))",
    "fresh": "fresh=True: it evaluates the loss on a separate mini-batch, which the closure draws "
             "from the source given as curvlab.closure(..., batches=<iterator or callable "
             "returning (inputs, targets)>)",
})

Batch = tuple[Any, Any]


class Closure(Protocol):
    """What ``step`` accepts: a callable returning the loss.

    A closure that supports the options of the training-loop contract
    accepts them as keywords; a plain ``closure()`` is also fine for
    optimizers that need none.
    """

    def __call__(self, **options: bool) -> Tensor:  # pragma: no cover - protocol
        """Evaluate the loss (see the module docstring for the options)."""
        ...


def graph_leaves(loss: Tensor) -> list[Tensor]:
    """The leaf tensors ``loss.backward()`` accumulates gradients into (graph order, no duplicates).

    Walks the autograd graph from ``loss.grad_fn`` to its ``AccumulateGrad``
    nodes: every tensor that requires grad and was used to compute ``loss``
    (model parameters, a loss module's parameters, free tensors).

    Example:
        >>> w = torch.ones(2, requires_grad=True)
        >>> b = torch.zeros(1, requires_grad=True)
        >>> [tuple(t.shape) for t in graph_leaves((w * 3).sum() + b.sum())]
        [(1,), (2,)]
    """
    leaves: list[Tensor] = []
    seen: set[Any] = set()
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            leaves.append(variable)
            continue
        stack.extend(child for child, _ in node.next_functions)
    return leaves


class LossClosure:
    """A closure over one mini-batch that honours every contract option.

    ``L = loss_fn(model(inputs), targets)``; with ``backward=True`` the
    gradients are cleared (set to ``None``) and
    ``L.backward(create_graph=create_graph)`` is run. Cleared are the
    gradients of the model's parameters *and* of every other tensor the
    backward pass writes to (:func:`graph_leaves`: a parameter given to the
    optimizer but living outside the model, a loss module's parameters), so
    the gradients after the call are exactly those of ``L``, as after
    ``opt.zero_grad(); L.backward()`` with :mod:`torch.optim`.

    Args:
        model: The network.
        loss_fn: Loss module or function ``(outputs, targets) -> scalar``.
        inputs: Mini-batch inputs.
        targets: Mini-batch targets.
        batches: Optional source of separate mini-batches ``(inputs,
            targets)`` for ``fresh=True`` (an iterator, or a zero-argument
            callable returning a batch). Without it ``fresh=True`` falls back
            to the current batch.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 1)
        >>> c = LossClosure(model, torch.nn.MSELoss(), torch.ones(4, 3), torch.zeros(4, 1))
        >>> loss = c()
        >>> model.weight.grad.shape
        torch.Size([1, 3])
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Any], Tensor],
        inputs: Any,
        targets: Any,
        batches: Iterator[Batch] | Callable[[], Batch] | None = None,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.inputs = inputs
        self.targets = targets
        self.batches = batches
        self.evaluations = 0

    def _fresh_batch(self) -> Batch:
        if self.batches is None:
            return self.inputs, self.targets
        if callable(self.batches):
            return self.batches()
        return next(self.batches)

    def __call__(
        self, *, backward: bool = True, create_graph: bool = False, fresh: bool = False
    ) -> Tensor:
        """Evaluate the loss; see the class docstring for the options."""
        inputs, targets = self._fresh_batch() if fresh else (self.inputs, self.targets)
        self.evaluations += 1
        with torch.enable_grad():
            loss = self.loss_fn(self.model(inputs), targets)
            if backward:
                for p in self.model.parameters():
                    p.grad = None
                if isinstance(loss, Tensor) and loss.grad_fn is not None:
                    for leaf in graph_leaves(loss):
                        leaf.grad = None
                loss.backward(create_graph=create_graph)
        return loss


def closure(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Any], Tensor],
    inputs: Any,
    targets: Any,
    *,
    batches: Iterator[Batch] | Callable[[], Batch] | None = None,
) -> LossClosure:
    """Build the standard closure for one mini-batch (see :class:`LossClosure`).

    Example:
        >>> import torch, curvlab
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = curvlab.create("sgd", model, torch.nn.MSELoss(), lr=0.1)
        >>> x, y = torch.randn(8, 2), torch.randn(8, 1)
        >>> loss = opt.step(curvlab.closure(model, torch.nn.MSELoss(), x, y))
        >>> bool(torch.isfinite(loss))
        True
    """
    return LossClosure(model, loss_fn, inputs, targets, batches)


def accepts(fn: Callable[..., Any], option: str) -> bool:
    """Whether the closure ``fn`` takes the contract keyword ``option`` (or ``**kwargs``).

    Lets an optimizer use an option when it is available and fall back
    otherwise (K-BFGS skips the weight gradients of its second evaluation
    with ``backward=False`` when it can).

    Example:
        >>> accepts(lambda: 1.0, "backward"), accepts(lambda **kw: 1.0, "fresh")
        (False, True)
    """
    return option in _accepted_options(fn)


def _accepted_options(fn: Callable[..., Any]) -> frozenset[str]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature
        return frozenset()
    params = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return frozenset(CLOSURE_OPTIONS)
    return frozenset(p.name for p in params if p.name in CLOSURE_OPTIONS)


def missing_options_message(who: str, options: list[str]) -> str:
    """The error text for a closure that lacks the contract ``options`` (names, why, how).

    Example:
        >>> missing_options_message("demo", ["fresh"])[:60]
        'demo needs a closure accepting fresh=... (fresh=True: it eva'
    """
    names = ", ".join(f"{m}=..." for m in options)
    why = "; ".join(OPTION_PURPOSES[m] for m in options)
    batches = ", batches=..." if "fresh" in options else ""
    return (
        f"{who} needs a closure accepting {names} ({why}); this closure takes no such keyword "
        "(as PyTorch Lightning's automatic optimization passes). Build one with "
        f"curvlab.closure(model, loss_fn, inputs, targets{batches}) (with Lightning: set "
        "self.automatic_optimization = False and call opt.step(curvlab.closure(...)) in "
        "training_step)"
    )


def call_closure(fn: Callable[..., Tensor], *, who: str = "this optimizer", **options: bool) -> Tensor:
    """Call ``fn`` with the contract ``options`` it needs, checking it accepts them.

    Options left at their default are not passed, so a plain ``closure()``
    works whenever nothing special is asked for.

    Args:
        fn: The user's closure.
        who: Optimizer name used in the error message.
        **options: Values for ``backward``, ``create_graph``, ``fresh``.

    Returns:
        Whatever the closure returns (the loss).

    Raises:
        ValueError: an option is unknown, or is needed but not accepted by ``fn``.

    Example:
        >>> call_closure(lambda: 3.0)
        3.0
        >>> call_closure(lambda: 3.0, who="adahessian", create_graph=True)
        Traceback (most recent call last):
        ...
        ValueError: adahessian needs a closure accepting create_graph=... (create_graph=True: it takes Hessian-vector products, which need the gradient's own graph (loss.backward(create_graph=True))); this closure takes no such keyword (as PyTorch Lightning's automatic optimization passes). Build one with curvlab.closure(model, loss_fn, inputs, targets) (with Lightning: set self.automatic_optimization = False and call opt.step(curvlab.closure(...)) in training_step)
    """
    defaults = {"backward": True, "create_graph": False, "fresh": False}
    unknown = set(options) - set(defaults)
    if unknown:
        raise ValueError(f"unknown closure option(s) {sorted(unknown)}; allowed: {CLOSURE_OPTIONS}")
    wanted = {k: v for k, v in options.items() if v != defaults[k]}
    if not wanted:
        return fn()
    missing = set(wanted) - _accepted_options(fn)
    if missing:
        raise ValueError(missing_options_message(who, sorted(missing)))
    return fn(**wanted)

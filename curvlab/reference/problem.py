"""A loss as a function of one flat float64 parameter vector.

Every oracle in :mod:`curvlab.reference` differentiates a scalar function
f: R^P → R at θ. :class:`Problem` builds that function from a model, a loss
function and a batch:

    f(θ) = loss_fn(model(inputs; θ), targets),

in **float64**: the model, the loss module and floating inputs/targets are
deep-copied and cast, so the caller's objects are never touched and
rounding errors of the oracle are ~1e-16 relative. Parameters outside the
chosen subset are held fixed at their values. θ is laid out as described in
:mod:`curvlab.reference.layout` (row-major, ``named_parameters()`` order).

Oracles take the problem in one of three equivalent positional forms
(see :func:`resolve_problem`): ``(problem,)``, ``(f, theta)`` or
``(model, loss_fn, inputs, targets)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from curvlab.reference.layout import ParamSlice, flatten_params, param_layout, unflatten

__all__ = ["check_direction", "Problem", "resolve_problem"]

DTYPE = torch.float64


def _cast(x: Any) -> Any:
    """Deep-copy ``x`` and cast floating tensors/modules to float64."""
    if isinstance(x, nn.Module):
        return copy.deepcopy(x).to(DTYPE)
    if isinstance(x, Tensor):
        x = x.detach().clone()
        return x.to(DTYPE) if x.is_floating_point() else x
    if isinstance(x, (tuple, list)):
        return type(x)(_cast(v) for v in x)
    if isinstance(x, dict):
        return {k: _cast(v) for k, v in x.items()}
    return copy.deepcopy(x)


def _param_names(model: nn.Module, params: Iterable[str | Tensor] | None) -> list[str] | None:
    """Map names or parameter tensors (by identity) to qualified names."""
    if params is None:
        return None
    by_id = {id(p): n for n, p in model.named_parameters()}
    names = []
    for p in params:
        if isinstance(p, str):
            names.append(p)
        elif id(p) in by_id:
            names.append(by_id[id(p)])
        else:
            raise ValueError("params must be names or parameters of the model; got a tensor that is not one")
    return names


@dataclass(frozen=True)
class Problem:
    """A float64 loss f(θ) of a flat parameter vector, built from a model.

    Attributes:
        model: Float64 deep copy of the model (``None`` for a plain function).
        loss_fn: Float64 copy of the loss, ``loss_fn(outputs, targets)``.
        inputs: Float64 copy of the inputs (a tensor, or a tuple of model args).
        targets: Copy of the targets (floating ones cast to float64).
        layout: Flat layout of the chosen parameters.
        theta: Current θ, float64, 1-D, detached.
        function: For :meth:`from_function`, the user's f; else ``None``.

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> net = nn.Linear(2, 1)
        >>> X, y = torch.randn(4, 2), torch.randn(4, 1)
        >>> prob = Problem.from_model(net, nn.MSELoss(), X, y)
        >>> prob.theta.dtype, prob.theta.shape
        (torch.float64, torch.Size([3]))
        >>> bool(torch.isclose(prob(prob.theta), nn.MSELoss()(net(X), y).double()))
        True
    """

    model: nn.Module | None
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None
    inputs: Any
    targets: Any
    layout: tuple[ParamSlice, ...]
    theta: Tensor
    function: Callable[[Tensor], Tensor] | None = None

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        inputs: Any,
        targets: Any,
        *,
        params: Iterable[str | Tensor] | None = None,
    ) -> Problem:
        """Build f(θ) = loss_fn(model(inputs; θ), targets) in float64.

        Args:
            model: The network; left unchanged (a float64 copy is used, in
                the same train/eval mode). It must be deterministic (put
                dropout in eval mode) and must not update buffers in place:
                BatchNorm in train mode makes ``torch.func`` raise a
                RuntimeError (use eval mode, or ``track_running_stats=False``).
            loss_fn: ``loss_fn(outputs, targets) -> scalar`` (an ``nn.Module``
                loss or any callable).
            inputs: Model input tensor, or a tuple of positional inputs.
            targets: Targets passed to ``loss_fn``.
            params: Names or parameter tensors of ``model`` forming θ;
                default all parameters with ``requires_grad``.

        Returns:
            The problem; ``problem.theta`` holds the current parameters.

        Raises:
            ValueError: an unknown or repeated parameter (see
                :func:`~curvlab.reference.layout.param_layout`).

        Example:
            >>> prob = Problem.from_model(nn.Linear(3, 2), nn.MSELoss(),
            ...                           torch.zeros(1, 3), torch.zeros(1, 2), params=["bias"])
            >>> [p.name for p in prob.layout], prob.theta.numel()
            (['bias'], 2)
        """
        names = _param_names(model, params)
        model64 = _cast(model)
        layout = tuple(param_layout(model64, names))
        theta = flatten_params(model64, layout)
        return cls(model64, _cast(loss_fn), _cast(inputs), _cast(targets), layout, theta)

    @classmethod
    def from_function(cls, function: Callable[[Tensor], Tensor], theta: Tensor) -> Problem:
        """Wrap a plain scalar function f(θ) of a flat vector.

        θ is cast to float64 (a detached copy); ``function`` must accept a
        float64 vector and be written with torch operations that
        ``torch.func`` can differentiate (no in-place ops on θ, no ``.item()``).

        Raises:
            ValueError: ``theta`` is not a 1-D floating tensor.

        Example:
            >>> prob = Problem.from_function(lambda t: (t ** 3).sum(), torch.tensor([1.0, 2.0]))
            >>> prob(prob.theta)
            tensor(9., dtype=torch.float64)
        """
        if not isinstance(theta, Tensor) or theta.dim() != 1 or not theta.is_floating_point():
            raise ValueError(f"theta must be a 1-D floating tensor, got {theta!r}")
        theta = theta.detach().clone().to(DTYPE)
        layout = (ParamSlice("theta", slice(0, theta.numel()), theta.shape),)
        return cls(None, None, None, None, layout, theta, function)

    def outputs(self, theta: Tensor) -> Tensor:
        """Network outputs model(inputs; θ) (parameters outside θ fixed).

        Raises:
            ValueError: the problem was built from a plain function.
        """
        if self.model is None:
            raise ValueError("outputs need a model; this problem was built from a plain function")
        args = self.inputs if isinstance(self.inputs, tuple) else (self.inputs,)
        return functional_call(self.model, unflatten(theta, self.layout), args)

    def loss_of_outputs(self, outputs: Tensor) -> Tensor:
        """The loss as a function of the network outputs, loss_fn(outputs, targets).

        Raises:
            ValueError: the problem was built from a plain function.
        """
        if self.loss_fn is None:
            raise ValueError("loss_of_outputs needs a loss_fn; this problem was built from a plain function")
        return self.loss_fn(outputs, self.targets)

    def __call__(self, theta: Tensor) -> Tensor:
        """The scalar loss f(θ)."""
        if self.function is not None:
            return self.function(theta)
        return self.loss_of_outputs(self.outputs(theta))


def check_direction(v: Tensor, theta: Tensor, what: str) -> Tensor:
    """A direction ``v`` for the point ``theta``: checked to have θ's shape, cast to θ's dtype.

    Args:
        v: The direction.
        theta: The point (flat, float64).
        what: The direction's name in the error message.

    Returns:
        ``v`` detached, in ``theta``'s dtype.

    Raises:
        ValueError: ``v`` is not a tensor of ``theta``'s shape.

    Example:
        >>> check_direction(torch.ones(2), torch.zeros(2, dtype=torch.float64), "u").dtype
        torch.float64
    """
    if not isinstance(v, Tensor) or v.shape != theta.shape:
        shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise ValueError(f"{what} must be a tensor of shape {tuple(theta.shape)} like theta, got {shape}")
    return v.detach().to(theta.dtype)


def resolve_problem(*problem: Any, params: Iterable[str | Tensor] | None = None) -> Problem:
    """Turn the positional problem arguments of an oracle into a :class:`Problem`.

    Accepted forms:

    * ``(problem,)`` — a :class:`Problem` (``params`` must be ``None``);
    * ``(f, theta)`` — a scalar function of a flat vector and the point;
    * ``(model, loss_fn, inputs, targets)`` — see :meth:`Problem.from_model`.

    Raises:
        TypeError: any other number or kind of arguments.
        ValueError: ``params`` given with a form that has no model.

    Example:
        >>> resolve_problem(lambda t: t.sum(), torch.ones(2)).theta
        tensor([1., 1.], dtype=torch.float64)
    """
    if len(problem) == 1 and isinstance(problem[0], Problem):
        if params is not None:
            raise ValueError("params must be None when a Problem is given (choose them in Problem.from_model)")
        return problem[0]
    if len(problem) == 2 and callable(problem[0]) and not isinstance(problem[0], nn.Module):
        if params is not None:
            raise ValueError("params must be None for the flat form (f, theta); theta is the whole vector")
        return Problem.from_function(problem[0], problem[1])
    if len(problem) == 4 and isinstance(problem[0], nn.Module):
        return Problem.from_model(*problem, params=params)
    kinds = ", ".join(type(p).__name__ for p in problem)
    raise TypeError(
        "the problem must be (Problem,), (f, theta) or (model, loss_fn, inputs, targets); "
        f"got {len(problem)} argument(s) of type(s) ({kinds})"
    )

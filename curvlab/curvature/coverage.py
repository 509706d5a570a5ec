"""Which supported layer covers each parameter an optimizer trains, and its param group.

Layer-wise curvature methods (K-FAC, FOOF, K-BFGS) precondition the
parameters of a fixed set of module types. :func:`layer_coverage` maps the
optimizer's *trainable* parameters (given to the optimizer and
``requires_grad=True`` at construction) to the supported layers that own
them, and to their param groups, and refuses at construction, naming the
parameter and its module, every trainable parameter that no supported layer
owns. Frozen parameters (``requires_grad=False``) are neither covered nor
refused: like :mod:`torch.optim`, the optimizers never move them.

The result, a :class:`Coverage`, is what a backend keeps: the layers to
hook, each parameter's group (per-group hyper-parameters such as ``lr`` and
``damping`` are read from it at every step) and whether a parameter is
trainable. :meth:`Coverage.check_gradients` refuses, at a step, a gradient
on a parameter the backend does not cover (one that was frozen at
construction and unfrozen later), instead of leaving it unoptimised.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    >>> net[2].bias.requires_grad_(False) and None
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> cov = layer_coverage(net, opt.param_groups, (nn.Linear,), who="demo")
    >>> list(cov.layers), cov.trainable(net[2].bias), cov.group(net[0].weight)["lr"]
    (['0', '2'], False, 0.1)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from curvlab.curvature.layers import describe_supported

__all__ = ["Coverage", "layer_coverage", "parameter_coverage", "parameter_names"]


def parameter_names(model: nn.Module | None, params: Iterable[Tensor]) -> dict[int, str]:
    """``id(p)`` → ``"model.<qualified name>"`` (or ``"parameter i (shape …)"`` outside the model).

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(2, 1)
        >>> sorted(parameter_names(torch.nn.Sequential(lin), lin.parameters()).values())
        ['model.0.bias', 'model.0.weight']
    """
    named = {id(p): f"model.{n}" for n, p in model.named_parameters()} if model is not None else {}
    return {
        id(p): named.get(id(p), f"parameter {i} (shape {tuple(p.shape)}, not in the model)")
        for i, p in enumerate(params)
    }


@dataclass(frozen=True)
class Coverage:
    """Supported layers, trainable parameters and param groups of one optimizer.

    Attributes:
        layers: ``{qualified name: module}`` of the supported layers that own
            at least one trainable parameter, in ``model.named_modules()`` order.
        groups: ``id(param)`` → its param group (every parameter of the optimizer).
        names: ``id(param)`` → readable name (see :func:`parameter_names`).
        covered: ``id`` of the trainable parameters (all owned by ``layers``).
    """

    layers: dict[str, nn.Module]
    groups: Mapping[int, dict[str, Any]] = field(repr=False)
    names: Mapping[int, str] = field(repr=False)
    covered: frozenset[int] = field(repr=False)

    def group(self, p: Tensor) -> dict[str, Any]:
        """The param group of ``p`` (raises ``KeyError`` for a parameter not in the optimizer)."""
        return self.groups[id(p)]

    def trainable(self, p: Tensor | None) -> bool:
        """Whether ``p`` is given to the optimizer and was trainable at construction."""
        return p is not None and id(p) in self.covered

    def check_gradients(self, who: str) -> None:
        """Raise if a parameter of the optimizer has a gradient but is not covered.

        Raises:
            ValueError: names the parameter (it was frozen when the optimizer
                was built and has been unfrozen since).
        """
        for group in self.groups.values():
            for p in group["params"]:
                if p.grad is not None and id(p) not in self.covered:
                    raise ValueError(
                        f"{who}: {self.names[id(p)]} has a gradient but was frozen "
                        "(requires_grad=False) when the optimizer was built; build a new "
                        "optimizer after unfreezing parameters"
                    )


def parameter_coverage(model: nn.Module | None, param_groups: Sequence[Mapping[str, Any]]) -> Coverage:
    """The param-group map and trainable set of an optimizer, without a layer check.

    For backends that route parameters without a block elsewhere
    (:mod:`~curvlab.curvature.fallback`) instead of refusing them:
    :attr:`Coverage.layers` is empty; :meth:`Coverage.group` and
    :meth:`Coverage.check_gradients` work as for :func:`layer_coverage`.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 1)
        >>> cov = parameter_coverage(net, [{"params": list(net.parameters()), "lr": 0.1}])
        >>> cov.group(net.bias)["lr"], cov.trainable(net.weight)
        (0.1, True)
    """
    params = [p for g in param_groups for p in g["params"]]
    return Coverage(
        layers={},
        groups={id(p): g for g in param_groups for p in g["params"]},
        names=parameter_names(model, params),
        covered=frozenset(id(p) for p in params if p.requires_grad),
    )


def layer_coverage(
    model: nn.Module,
    param_groups: Sequence[Mapping[str, Any]],
    supported: tuple[type[nn.Module], ...],
    *,
    who: str,
    check: Callable[[str, nn.Module], str | None] | None = None,
) -> Coverage:
    """Map the optimizer's trainable parameters to the supported layers of ``model``.

    Args:
        model: The network.
        param_groups: The optimizer's param groups (dicts with ``"params"``).
        supported: Module types the backend preconditions.
        who: Backend name used in error messages.
        check: Extra per-layer test returning an error text (or ``None``),
            e.g. to reject grouped convolutions.

    Returns:
        The :class:`Coverage`.

    Raises:
        ValueError: a trainable parameter is not owned by a supported module
            of ``model`` (names the parameter, its module type and the
            supported types), or ``check`` rejects a layer (names it).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> layer_coverage(net, opt.param_groups, (nn.Linear,), who="demo")
        Traceback (most recent call last):
        ...
        ValueError: demo supports Linear; got LayerNorm at model.1 (its model.1.weight is given to the optimizer; freeze it with requires_grad=False or leave it out of params)
    """
    params = [p for g in param_groups for p in g["params"]]
    groups = {id(p): g for g in param_groups for p in g["params"]}
    names = parameter_names(model, params)
    trainable = {id(p) for p in params if p.requires_grad}
    owner: dict[int, tuple[str, nn.Module]] = {}
    for mname, module in model.named_modules():
        for p in module.parameters(recurse=False):
            owner.setdefault(id(p), (mname, module))
    layers: dict[str, nn.Module] = {}
    for p in params:
        if id(p) not in trainable:
            continue
        if id(p) not in owner:
            raise ValueError(
                f"{who} supports parameters of {describe_supported(supported)} layers of the "
                f"model; got {names[id(p)]}"
            )
        mname, module = owner[id(p)]
        path = f"model.{mname}" if mname else "model"
        if not isinstance(module, supported):
            raise ValueError(
                f"{who} supports {describe_supported(supported)}; got {type(module).__name__} at "
                f"{path} (its {names[id(p)]} is given to the optimizer; freeze it with "
                "requires_grad=False or leave it out of params)"
            )
        problem = check(mname, module) if check is not None else None
        if problem:
            raise ValueError(f"{who}: {problem} at {path}")
        layers[mname] = module
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    layers = dict(sorted(layers.items(), key=lambda kv: order[kv[0]]))
    return Coverage(layers=layers, groups=groups, names=names, covered=frozenset(trainable))

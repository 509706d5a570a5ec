r"""Partitions of the parameters into the S subsets that get one step size each.

A partition is a list of ``(name, indices)`` pairs, ``indices`` pointing
into the optimizer's flat list of trainable parameters (param-group order).
Kinds (the ``partition`` hyper-parameter):

``"tensor"`` (default)
    One subset per parameter tensor (S = number of tensors).
``"trivial"``
    One subset holding everything (S = 1: an exact line search along u).
``"weight-bias"``
    Two subsets: tensors with ``ndim >= 2`` ("weights") and the others ("biases").
``"layer"``
    One subset per module owning parameters (a layer's weight and bias
    together); needs the model.
``"groups"``
    One subset per param group: the way to give your own partition, either
    as a list of groups (``params=[{"params": [...]}, ...]``) or from a
    callable with :func:`groups_by`.

The number of subsets drives the cost (about 2S + 1 reverse passes per
tensor computation), so keep S small (the paper uses up to a few dozen).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

from torch import Tensor, nn

__all__ = ["PARTITIONS", "build_partition", "groups_by"]

PARTITIONS = ("tensor", "trivial", "weight-bias", "layer", "groups")


def groups_by(model: nn.Module, key: Callable[[str, Tensor], Hashable]) -> list[dict[str, Any]]:
    """Param groups (one per distinct ``key(name, param)``) for ``partition="groups"``.

    Parameters with ``requires_grad=False`` are left out. Groups appear in
    the order their first parameter appears in ``model.named_parameters()``
    and are named ``str(key)``.

    Args:
        model: The network.
        key: Maps a parameter's qualified name and the parameter to its
            subset's key.

    Returns:
        ``[{"params": [...], "name": str(key)}, ...]``, ready for
        ``curvlab.create(..., params=groups, partition="groups")``.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
        >>> groups = groups_by(net, lambda name, p: name.split(".")[0])
        >>> [(g["name"], len(g["params"])) for g in groups]
        [('0', 2), ('2', 2)]
    """
    out: dict[Hashable, list[Tensor]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            out.setdefault(key(name, p), []).append(p)
    return [{"params": ps, "name": str(k)} for k, ps in out.items()]


def _names(model: nn.Module | None, params: Sequence[Tensor]) -> list[str]:
    named = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
    return [named.get(id(p), f"param{i}") for i, p in enumerate(params)]


def build_partition(
    kind: str,
    params: Sequence[Tensor],
    *,
    model: nn.Module | None = None,
    group_of: Sequence[int] | None = None,
    group_names: Sequence[str] | None = None,
) -> list[tuple[str, list[int]]]:
    """Split ``params`` into named subsets (see the module docstring).

    Args:
        kind: One of :data:`PARTITIONS`.
        params: The trainable parameters, flat, in param-group order.
        model: The network (names; required for ``"layer"``).
        group_of: Param-group index of each parameter (for ``"groups"``).
        group_names: Display name of each param group (for ``"groups"``).

    Returns:
        ``[(name, indices), ...]``, non-empty subsets only.

    Raises:
        ValueError: unknown kind, ``"layer"`` without a model, or no parameters.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
        >>> ps = list(net.parameters())
        >>> build_partition("weight-bias", ps)
        [('weights', [0, 2]), ('biases', [1, 3])]
        >>> [n for n, _ in build_partition("layer", ps, model=net)]
        ['0', '2']
        >>> build_partition("tensor", ps, model=net)[1]
        ('0.bias', [1])
    """
    if kind not in PARTITIONS:
        raise ValueError(f"partition must be one of {PARTITIONS}, got {kind!r}")
    if not params:
        raise ValueError("partition needs at least one trainable parameter, got none")
    n = len(params)
    if kind == "tensor":
        return [(name, [i]) for i, name in enumerate(_names(model, params))]
    if kind == "trivial":
        return [("all", list(range(n)))]
    if kind == "weight-bias":
        w = [i for i, p in enumerate(params) if p.dim() >= 2]
        b = [i for i, p in enumerate(params) if p.dim() < 2]
        return [(name, idx) for name, idx in (("weights", w), ("biases", b)) if idx]
    if kind == "groups":
        group_of = list(group_of) if group_of is not None else [0] * n
        names = list(group_names or [])
        out: dict[int, list[int]] = {}
        for i, g in enumerate(group_of):
            out.setdefault(g, []).append(i)
        return [(names[g] if g < len(names) else f"group{g}", idx) for g, idx in out.items()]
    if model is None:
        raise ValueError("partition='layer' needs the model (an nn.Module) at construction")
    index = {id(p): i for i, p in enumerate(params)}
    subsets: list[tuple[str, list[int]]] = []
    seen: set[int] = set()
    for mname, module in model.named_modules():
        idx = [index[id(p)] for p in module.parameters(recurse=False) if id(p) in index]
        idx = [i for i in idx if i not in seen]
        if idx:
            seen.update(idx)
            subsets.append((mname or "model", idx))
    rest = [i for i in range(n) if i not in seen]
    subsets += [(f"param{i}", [i]) for i in rest]
    return subsets

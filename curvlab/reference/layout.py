"""Flat parameter layout: which slice of a flat vector holds which parameter.

Every dense oracle in :mod:`curvlab.reference` works on one flat vector
θ ∈ R^P made by concatenating the chosen parameters in
``model.named_parameters()`` order, each flattened **row-major** (torch's
``reshape(-1)``). For a ``Linear`` weight W ∈ R^{out×in} the entry
W[o, i] sits at offset ``o·in + i`` of its slice, so

    vec_row(W) = W.reshape(-1),   vec_row(G X A) = (G ⊗ Aᵀ) vec_row(X),

and a K-FAC block of W written with G (out×out, output-gradient factor)
and A (in×in, input factor) equals **G ⊗ A** in this layout (the
column-major literature writes the same block as A ⊗ G).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["ParamSlice", "block", "flatten_params", "layout_size", "param_layout", "unflatten"]


class ParamSlice(NamedTuple):
    """Where one parameter lives in the flat vector.

    Attributes:
        name: Qualified name from ``model.named_parameters()``.
        slice: Its ``slice(start, stop)`` in the flat vector.
        shape: Its original shape.

    Example:
        >>> ps = ParamSlice("0.weight", slice(0, 6), torch.Size([2, 3]))
        >>> ps.numel
        6
    """

    name: str
    slice: slice
    shape: torch.Size

    @property
    def numel(self) -> int:
        """Number of entries, ``stop − start``."""
        return self.slice.stop - self.slice.start


def param_layout(model: nn.Module, names: Iterable[str] | None = None) -> list[ParamSlice]:
    """Flat layout of (a subset of) the parameters of ``model``.

    Slices are contiguous and follow ``model.named_parameters()`` order,
    whatever the order of ``names``.

    Args:
        model: The network.
        names: Qualified parameter names to include; default all parameters
            with ``requires_grad``.

    Returns:
        One :class:`ParamSlice` per chosen parameter, offsets starting at 0.

    Raises:
        ValueError: a name is not a parameter of ``model`` (lists the valid
            names), or a name is repeated, or the selection is empty.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1))
        >>> [(p.name, p.slice.start, p.slice.stop) for p in param_layout(net)]
        [('0.weight', 0, 6), ('0.bias', 6, 8), ('2.weight', 8, 10), ('2.bias', 10, 11)]
        >>> [p.name for p in param_layout(net, ["2.bias", "0.weight"])]
        ['0.weight', '2.bias']
    """
    named = dict(model.named_parameters())
    if names is None:
        chosen = {n for n, p in named.items() if p.requires_grad}
    else:
        wanted = list(names)
        unknown = [n for n in wanted if n not in named]
        if unknown:
            raise ValueError(
                f"names must be parameters of the model; got unknown {unknown}, "
                f"valid names are {list(named)}"
            )
        if len(set(wanted)) != len(wanted):
            raise ValueError(f"names must be distinct, got {wanted}")
        chosen = set(wanted)
    if not chosen:
        raise ValueError("the parameter selection is empty; the model has no trainable parameter")
    layout, start = [], 0
    for name, p in named.items():
        if name in chosen:
            layout.append(ParamSlice(name, slice(start, start + p.numel()), p.shape))
            start += p.numel()
    return layout


def layout_size(layout: Iterable[ParamSlice]) -> int:
    """Total length P of the flat vector described by ``layout``.

    Example:
        >>> layout_size(param_layout(nn.Linear(3, 2)))
        8
    """
    return sum(p.numel for p in layout)


def flatten_params(
    params: nn.Module | Mapping[str, Tensor], layout: Iterable[ParamSlice]
) -> Tensor:
    """Concatenate parameters into θ = [vec_row(p₁); vec_row(p₂); …].

    Args:
        params: A model (its ``named_parameters()`` are used) or a
            ``{name: tensor}`` mapping (e.g. gradients).
        layout: From :func:`param_layout`.

    Returns:
        A detached 1-D tensor of length :func:`layout_size`.

    Raises:
        ValueError: a name of the layout is missing, or a shape differs.

    Example:
        >>> lin = nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = lin.weight.copy_(torch.tensor([[1.0, 2.0]])), lin.bias.fill_(3.0)
        >>> flatten_params(lin, param_layout(lin))
        tensor([1., 2., 3.])
    """
    source = dict(params.named_parameters()) if isinstance(params, nn.Module) else dict(params)
    pieces = []
    for p in layout:
        if p.name not in source:
            raise ValueError(f"parameter {p.name!r} of the layout is missing from params")
        t = source[p.name]
        if t.shape != p.shape:
            raise ValueError(f"parameter {p.name!r} must have shape {tuple(p.shape)}, got {tuple(t.shape)}")
        pieces.append(t.detach().reshape(-1))
    return torch.cat(pieces)


def unflatten(flat: Tensor, layout: Iterable[ParamSlice]) -> dict[str, Tensor]:
    """Inverse of :func:`flatten_params`: ``{name: flat[slice].view(shape)}``.

    The values are views of ``flat`` (differentiable, no copy).

    Raises:
        ValueError: ``flat`` is not 1-D of length :func:`layout_size`.

    Example:
        >>> lay = param_layout(nn.Linear(2, 1))
        >>> {k: v.tolist() for k, v in unflatten(torch.arange(3.0), lay).items()}
        {'weight': [[0.0, 1.0]], 'bias': [2.0]}
    """
    layout = list(layout)
    size = layout_size(layout)
    if flat.dim() != 1 or flat.numel() != size:
        raise ValueError(f"flat must be 1-D of length {size}, got shape {tuple(flat.shape)}")
    return {p.name: flat[p.slice].view(p.shape) for p in layout}


def block(matrix: Tensor, layout: Iterable[ParamSlice], name_a: str, name_b: str | None = None) -> Tensor:
    """Block M[θ_a, θ_b] of a P×P matrix (``name_b`` defaults to ``name_a``).

    Args:
        matrix: P×P, rows and columns in the order of ``layout``.
        layout: From :func:`param_layout`.
        name_a: Parameter of the rows.
        name_b: Parameter of the columns; default ``name_a``.

    Returns:
        The ``numel(a) × numel(b)`` view.

    Raises:
        ValueError: ``matrix`` is not P×P, or a name is not in the layout.

    Example:
        >>> lay = param_layout(nn.Linear(2, 1))
        >>> block(torch.eye(3), lay, "weight", "bias")
        tensor([[0.],
                [0.]])
    """
    layout = list(layout)
    size = layout_size(layout)
    if matrix.shape != (size, size):
        raise ValueError(f"matrix must be {size}×{size} to match the layout, got {tuple(matrix.shape)}")
    slices = {p.name: p.slice for p in layout}
    for name in (name_a, name_b if name_b is not None else name_a):
        if name not in slices:
            raise ValueError(f"name {name!r} is not in the layout; it holds {list(slices)}")
    return matrix[slices[name_a], slices[name_b if name_b is not None else name_a]]

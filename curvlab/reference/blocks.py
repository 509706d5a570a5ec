"""Per-layer blocks of a dense P×P curvature matrix, to compare with K-FAC.

For a layer with weight W ∈ R^{out×m} (a Conv2d weight (out, in, kh, kw) is
read as out × (in·kh·kw), the ``unfold`` order) and bias b ∈ R^{out}:

* ``bias="separate"``: rows/columns [vec_row(W); b] — the order of
  :func:`~curvlab.reference.layout.param_layout`;
* ``bias="folded"``: rows/columns vec_row([W | b]) of the out×(m+1) matrix
  that appends b as a last column. In this order a K-FAC block built from
  the augmented input ã = [a; 1] is exactly **G ⊗ Ā** with
  Ā = E[ã ãᵀ] ((m+1)×(m+1)) and G the output-gradient factor (out×out).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from curvlab.reference.layout import ParamSlice, layout_size, param_layout

__all__ = ["layer_block", "layer_indices"]

BIAS_MODES = ("separate", "folded")


def layer_indices(
    model: nn.Module,
    module_name: str,
    *,
    layout: Sequence[ParamSlice] | None = None,
    bias: str = "separate",
) -> Tensor:
    """Flat indices of a module's parameters in the order described in the module docstring.

    Args:
        model: The network.
        module_name: Qualified module name (``model.named_modules()``).
        layout: Layout of the matrix; default
            :func:`~curvlab.reference.layout.param_layout` of ``model``.
        bias: ``"separate"`` (weight then bias) or ``"folded"`` ([W | b] row-major).

    Returns:
        1-D long tensor of indices into the flat vector.

    Raises:
        ValueError: unknown module, module without parameters in the
            layout, unknown ``bias`` mode, or ``"folded"`` on a module
            without both ``weight`` and ``bias`` in the layout.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> layer_indices(net, "0", bias="folded")   # W00 W01 b0 W10 W11 b1
        tensor([0, 1, 4, 2, 3, 5])
    """
    if bias not in BIAS_MODES:
        raise ValueError(f"bias must be one of {BIAS_MODES}, got {bias!r}")
    modules = dict(model.named_modules())
    if module_name not in modules:
        raise ValueError(f"module_name {module_name!r} is not a module of the model; valid: {list(modules)}")
    layout = list(layout) if layout is not None else param_layout(model)
    slices = {p.name: p for p in layout}
    prefix = f"{module_name}." if module_name else ""
    own = [prefix + n for n, _ in modules[module_name].named_parameters(recurse=False)]
    present = [n for n in own if n in slices]
    if not present:
        raise ValueError(f"module {module_name!r} has no parameter in the layout ({list(slices)})")
    if bias == "separate":
        return torch.cat([torch.arange(slices[n].slice.start, slices[n].slice.stop) for n in present])
    w_name, b_name = prefix + "weight", prefix + "bias"
    if w_name not in slices or b_name not in slices:
        raise ValueError(f'bias="folded" needs both {w_name!r} and {b_name!r} in the layout')
    w, b = slices[w_name], slices[b_name]
    out = w.shape[0]
    w_idx = torch.arange(w.slice.start, w.slice.stop).view(out, -1)
    b_idx = torch.arange(b.slice.start, b.slice.stop).view(out, 1)
    return torch.cat([w_idx, b_idx], dim=1).reshape(-1)


def layer_block(
    matrix: Tensor,
    model: nn.Module,
    module_name: str,
    *,
    layout: Sequence[ParamSlice] | None = None,
    bias: str = "separate",
) -> Tensor:
    """Diagonal block of ``matrix`` for one module's parameters.

    Args:
        matrix: P×P curvature (Hessian, GGN, Fisher) in the order of ``layout``.
        model: The network the matrix belongs to.
        module_name: Qualified module name, e.g. ``"0"`` or ``"encoder.fc"``.
        layout: Layout of ``matrix``; default all trainable parameters of ``model``.
        bias: ``"separate"`` (weight then bias) or ``"folded"`` ([W | b]
            row-major, matching G ⊗ Ā).

    Returns:
        The square block, shape (n_l, n_l).

    Raises:
        ValueError: see :func:`layer_indices`; or ``matrix`` is not P×P.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 1), nn.Linear(1, 1))
        >>> layer_block(torch.eye(5), net, "1")
        tensor([[1., 0.],
                [0., 1.]])
    """
    layout = list(layout) if layout is not None else param_layout(model)
    size = layout_size(layout)
    if matrix.shape != (size, size):
        raise ValueError(f"matrix must be {size}×{size} to match the layout, got {tuple(matrix.shape)}")
    idx = layer_indices(model, module_name, layout=layout, bias=bias)
    return matrix[idx][:, idx]

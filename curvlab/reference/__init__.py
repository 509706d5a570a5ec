"""Dense float64 oracles (Hessian, GGN, Fisher, directional derivatives) for tests.

Every oracle works on a flat parameter vector θ (row-major, in
``model.named_parameters()`` order, see :mod:`curvlab.reference.layout`)
and accepts the problem as ``(model, loss_fn, inputs, targets)``,
``(f, theta)`` or a :class:`Problem`. Computations use ``torch.func`` on a
float64 copy of model and data. Meant for tiny models (P ≲ a few hundred).

Example:
    >>> import torch
    >>> from curvlab import reference as ref
    >>> torch.manual_seed(0)
    <torch._C.Generator object at ...>
    >>> net, X, y = torch.nn.Linear(3, 2), torch.randn(5, 3), torch.randn(5, 2)
    >>> H = ref.hessian(net, torch.nn.MSELoss(), X, y)
    >>> bool(torch.allclose(H, ref.ggn(net, torch.nn.MSELoss(), X, y)))
    True
"""

from curvlab.reference.blocks import layer_block, layer_indices
from curvlab.reference.directional import (
    first_directional,
    partition_tensors,
    second_directional,
    split_direction,
    third_derivative_tensor,
    third_directional,
)
from curvlab.reference.fisher import fisher, per_sample_losses, reduction_factor
from curvlab.reference.ggn import ggn, output_hessian
from curvlab.reference.hessian import gradient, hessian, hvp
from curvlab.reference.layout import (
    ParamSlice,
    block,
    flatten_params,
    layout_size,
    param_layout,
    unflatten,
)
from curvlab.reference.problem import Problem, resolve_problem

__all__ = [
    "ParamSlice",
    "Problem",
    "block",
    "first_directional",
    "fisher",
    "flatten_params",
    "ggn",
    "gradient",
    "hessian",
    "hvp",
    "layer_block",
    "layer_indices",
    "layout_size",
    "output_hessian",
    "param_layout",
    "partition_tensors",
    "per_sample_losses",
    "reduction_factor",
    "resolve_problem",
    "second_directional",
    "split_direction",
    "third_derivative_tensor",
    "third_directional",
    "unflatten",
]

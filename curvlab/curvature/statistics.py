r"""Layer-input statistics :math:`A = \Sigma`: the input-side Kronecker factor, from forward hooks.

For a layer :math:`z = W a (+ b)` applied at :math:`T` locations per sample
(:math:`T = 1` for ``Linear``; the output pixels of a ``Conv2d``, whose
inputs :math:`a_{n,t}` are the unfolded patches, Grosse & Martens 2016),
the uncentred second moment of the inputs over a batch of :math:`N` samples is

.. math::

    A = \frac{1}{N} \sum_{n=1}^{N} \sum_{t=1}^{T} \tilde a_{n,t} \tilde a_{n,t}^\top,
    \qquad \tilde a = (a, 1) \text{ with a bias (homogeneous coordinates)}.

(Sum over locations, mean over samples: the convention of BackPACK's K-FAC
factor, and the one under which FOOF's "gradient descent on neurons" step
is :math:`\nabla W (A + \lambda I)^{-1}` for a mean-reduced loss.)
:class:`InputStatistics` records :math:`A` for several layers with forward
hooks; FOOF needs nothing else (no backward statistics).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from curvlab.curvature.layers import conv_problem

__all__ = ["InputStatistics", "input_covariance", "layer_inputs"]


def layer_inputs(module: nn.Module, x: Tensor, *, homogeneous: bool = False) -> Tensor:
    """Inputs of ``module`` as rows, shape ``(N, T, d)`` (``d`` + 1 if ``homogeneous``).

    ``Linear``: ``x`` of shape ``(N, ..., in)`` gives ``T`` = product of the
    middle dimensions. ``Conv2d`` (``groups = 1``): the patches of
    ``torch.nn.functional.unfold`` with the layer's kernel size, dilation,
    padding and stride, ``d = C_in · k_h · k_w``, ``T = H_out · W_out``.

    Args:
        module: A ``Linear`` or ``Conv2d``.
        x: The layer's input.
        homogeneous: Append a constant 1 (the bias's input).

    Returns:
        Tensor of shape ``(N, T, d)``.

    Raises:
        ValueError: another module type, a grouped convolution, or a
            padding mode other than ``"zeros"``.

    Example:
        >>> conv = nn.Conv2d(1, 2, kernel_size=2)
        >>> layer_inputs(conv, torch.ones(3, 1, 4, 4), homogeneous=True).shape
        torch.Size([3, 9, 5])
    """
    if isinstance(module, nn.Linear):
        rows = x.reshape(x.shape[0], -1, x.shape[-1])
    elif isinstance(module, nn.Conv2d):
        problem = conv_problem("", module)
        if problem:
            raise ValueError(f"layer_inputs: {problem}")
        patches = nn.functional.unfold(
            x, module.kernel_size, module.dilation, module.padding, module.stride
        )
        rows = patches.transpose(1, 2)
    else:
        raise ValueError(f"layer_inputs supports Linear, Conv2d; got {type(module).__name__}")
    if homogeneous:
        ones = torch.ones(*rows.shape[:-1], 1, dtype=rows.dtype, device=rows.device)
        rows = torch.cat([rows, ones], dim=-1)
    return rows


def input_covariance(module: nn.Module, x: Tensor, *, homogeneous: bool = False) -> Tensor:
    r""":math:`A = \frac1N \sum_n \sum_t \tilde a_{n,t} \tilde a_{n,t}^\top` (see the module docstring).

    Args:
        module: A ``Linear`` or ``Conv2d``.
        x: The layer's input, batch first.
        homogeneous: Include the bias's constant input.

    Returns:
        Symmetric PSD matrix, shape ``(d, d)``.

    Raises:
        ValueError: as :func:`layer_inputs`.

    Example:
        >>> lin = nn.Linear(2, 1)
        >>> input_covariance(lin, torch.tensor([[3.0, 1.0], [1.0, 0.0]]), homogeneous=True)
        tensor([[5.0000, 1.5000, 2.0000],
                [1.5000, 0.5000, 0.5000],
                [2.0000, 0.5000, 1.0000]])
    """
    rows = layer_inputs(module, x, homogeneous=homogeneous)
    flat = rows.reshape(-1, rows.shape[-1])
    return flat.T @ flat / rows.shape[0]


class InputStatistics:
    """Forward-hook recorder of :func:`input_covariance` for several layers.

    While :attr:`recording` is true, each forward pass of a layer (under
    autograd, i.e. not in ``torch.no_grad``) stores its :math:`A` in
    :attr:`covariances` (the latest pass wins). The hooks are registered
    only while recording (setting :attr:`recording` adds or removes them):
    a module with forward hooks takes PyTorch's slower hook-dispatch path
    on every call, so other passes run on the untouched layers. Call
    :meth:`remove` to stop for good.

    Args:
        layers: ``{name: module}`` (``Linear`` / ``Conv2d``).
        homogeneous: ``{name: bool}`` or one bool for all: include the bias input.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
        >>> rec = InputStatistics({"0": net[0], "2": net[2]}, homogeneous=True)
        >>> rec.recording = True
        >>> _ = net(torch.randn(5, 2))
        >>> {k: tuple(v.shape) for k, v in rec.covariances.items()}
        {'0': (3, 3), '2': (4, 4)}
        >>> rec.recording = False
        >>> len(net[0]._forward_hooks)
        0
    """

    def __init__(
        self, layers: Mapping[str, nn.Module], homogeneous: bool | Mapping[str, bool] = True
    ) -> None:
        self.covariances: dict[str, Tensor] = {}
        self._layers = {
            name: (module, homogeneous if isinstance(homogeneous, bool) else homogeneous[name])
            for name, module in layers.items()
        }
        self._handles: list[RemovableHandle] = []

    @property
    def recording(self) -> bool:
        """Whether the hooks are installed (forward passes record :math:`A`)."""
        return bool(self._handles)

    @recording.setter
    def recording(self, on: bool) -> None:
        if on and not self._handles:
            self._handles = [
                module.register_forward_hook(self._hook(name, hom))
                for name, (module, hom) in self._layers.items()
            ]
        elif not on:
            self.remove()

    def _hook(self, name: str, homogeneous: bool):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if torch.is_grad_enabled():
                with torch.no_grad():
                    self.covariances[name] = input_covariance(
                        module, inputs[0].detach(), homogeneous=homogeneous
                    )

        return hook

    def remove(self) -> None:
        """Remove all hooks (idempotent); :attr:`recording` becomes false."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

r"""Hooks that record what K-BFGS needs from each ``Linear``/``Conv2d`` layer in one evaluation.

For a layer :math:`h = W a` (bias folded in through the homogeneous input
:math:`a = (x, 1)`), an evaluation on :math:`N` examples sees :math:`R`
*positions* per example, i.e. :math:`NR` rows :math:`(a_{n,r}, h_{n,r})`:

* ``Linear`` on ``(N, in)``: :math:`R = 1`; on ``(N, *, in)`` (a sequence
  ``(N, T, in)``, an image ``(N, H, W, in)``): the middle dimensions are
  positions, :math:`R = \prod` of them (weight sharing);
* ``Conv2d``: the rows are the unfolded input patches
  (:func:`curvlab.curvature.statistics.layer_inputs`, ``in = C_in k_h k_w``)
  and the output vectors at the :math:`R = H_\text{out} W_\text{out}`
  spatial positions (channel-last,
  :func:`curvlab.curvature.kronecker_factors.output_rows`).

One :class:`Recording` holds, per layer:

* ``x``: the layer inputs as an ``(NR, in)`` matrix (only when inputs are
  recorded; the optimizer forms its :math:`A` from it, fused with its moving
  average),
* ``h_mean``: :math:`\bar h = \frac1{NR} \sum_{n,r} h_{n,r}`,
* ``g_sum``: :math:`\sum_{n,r} \partial L / \partial h_{n,r}` for the closure's loss
  :math:`L`, filled in by a tensor hook on the layer output during the
  backward pass (the optimizer converts it to the paper's normalisation
  with the factor it measures, :mod:`curvlab_plugins.kbfgs.normalisation`),

and ``positions[layer]`` :math:`= R` (a Python int). How the optimizer turns
these into :math:`A` and the pair :math:`(s, y)` for each layer type is in
:mod:`curvlab_plugins.kbfgs.optimizer`.

The hooks exist only inside :meth:`PreactivationCapture.recording`: they
are registered on entry and removed on exit, so no hook stays on the
model between steps (two optimizers on one model never stack hooks, and
a dropped optimizer leaves nothing behind). Every record lives in the
:class:`Recording` that the block yields (no state on the capture).

In-place activations (``ReLU(inplace=True)``) would overwrite the layer
output and, with it, the autograd node that :math:`\partial L/\partial h`
refers to; the forward hook therefore hands the next module a copy of
:math:`h` (one extra elementwise pass per layer on the recorded passes),
so the trajectory equals that of the out-of-place model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from curvlab.curvature.kronecker_factors import output_rows
from curvlab.curvature.statistics import layer_inputs

__all__ = ["PreactivationCapture", "Recording"]


@dataclass
class Recording:
    """What one evaluation recorded.

    Attributes:
        records: ``{layer: {"h_mean", "g_sum", ["x"]}}``.
        positions: ``{layer: R}``, the positions per example of the call.
        outputs: ``{layer: h}`` (with their graph) while the block runs, so
            that ``torch.autograd.grad(loss, outputs)`` fills in ``g_sum``
            without computing weight gradients; emptied on exit.
    """

    records: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    positions: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, Tensor] = field(default_factory=dict)


class PreactivationCapture:
    """Forward hooks (and output tensor hooks) on named ``Linear``/``Conv2d`` layers, during a block.

    Args:
        layers: ``{name: module}`` (from :func:`curvlab.curvature.coverage.layer_coverage`).
        who: Optimizer name for error messages.

    Example:
        >>> lin = nn.Linear(2, 3)
        >>> cap = PreactivationCapture({"0": lin})
        >>> with cap.recording(inputs=True) as rec:
        ...     lin(torch.ones(4, 2)).mean().backward()
        >>> r = rec.records["0"]
        >>> r["x"].shape, r["h_mean"].shape, r["g_sum"].shape
        (torch.Size([4, 2]), torch.Size([3]), torch.Size([3]))
        >>> conv = nn.Conv2d(2, 3, kernel_size=2)
        >>> with PreactivationCapture({"c": conv}).recording(inputs=True) as rec:
        ...     conv(torch.ones(4, 2, 3, 3)).sum().backward()
        >>> rec.records["c"]["x"].shape, rec.positions["c"], rec.records["c"]["g_sum"].tolist()
        (torch.Size([16, 8]), 4, [16.0, 16.0, 16.0])
        >>> len(lin._forward_hooks)   # nothing stays on the layer
        0
    """

    def __init__(self, layers: Mapping[str, nn.Module], *, who: str = "kbfgs") -> None:
        self.layers = dict(layers)
        self.who = who

    def _layer_hook(self, name: str, rec: Recording, inputs: bool) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], h: Tensor) -> Tensor | None:
            if name in rec.records:
                raise ValueError(
                    f"{self.who}: layer model.{name} ran twice in one evaluation; "
                    "shared (re-used) layers are not supported"
                )
            entry: dict[str, Tensor] = {}
            rec.records[name] = entry
            family = "conv2d" if isinstance(module, nn.Conv2d) else "linear"
            flat = family == "linear" and h.dim() == 1  # an unbatched call: one row
            with torch.no_grad():
                rows = output_rows(family, h.detach()[None] if flat else h.detach())
                rec.positions[name] = rows.shape[1]
                entry["h_mean"] = rows.reshape(-1, rows.shape[-1]).mean(0)
                if inputs:
                    x = layer_inputs(module, args[0].detach()[None] if flat else args[0].detach())
                    entry["x"] = x.reshape(-1, x.shape[-1])
            if not h.requires_grad:
                return None
            rec.outputs[name] = h

            def grad_hook(g: Tensor) -> None:
                g_rows = output_rows(family, g.detach()[None] if flat else g.detach())
                entry["g_sum"] = g_rows.reshape(-1, g_rows.shape[-1]).sum(0)

            h.register_hook(grad_hook)
            # the next module gets a copy: an in-place op on it leaves h and its gradient intact
            return h.clone()

        return hook

    @contextmanager
    def recording(self, *, inputs: bool) -> Iterator[Recording]:
        """Record the layers during the block.

        Args:
            inputs: Also record the inputs ``x`` (first evaluation of a step).

        Yields:
            The :class:`Recording` of this block.
        """
        rec = Recording()
        handles = [m.register_forward_hook(self._layer_hook(n, rec, inputs))
                   for n, m in self.layers.items()]
        try:
            yield rec
        finally:
            for handle in handles:
                handle.remove()
            rec.outputs = {}

r"""Hooks that record what K-BFGS needs from each ``Linear`` layer in one evaluation.

For a layer :math:`h = W a` (bias folded in through the homogeneous input
:math:`a = (x, 1)`) and a batch of :math:`N` rows (leading dimensions are
flattened, so a sequence model's positions count as rows), one
:class:`Recording` holds, per layer:

* ``x``: the layer inputs as an ``(N, in)`` matrix (only when inputs are
  recorded; the optimizer forms :math:`\frac1N \sum_n a_n a_n^\top` from it,
  fused with its moving average),
* ``h_mean``: :math:`\bar h = \frac1N \sum_n h_n`,
* ``g_sum``: :math:`\sum_n \partial L / \partial h_n` for the closure's loss
  :math:`L`, filled in by a tensor hook on the layer output during the
  backward pass (the optimizer converts it to the paper's normalisation
  with the factor it measures, :mod:`curvlab_plugins.kbfgs.normalisation`).

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

__all__ = ["PreactivationCapture", "Recording"]


@dataclass
class Recording:
    """What one evaluation recorded.

    Attributes:
        records: ``{layer: {"h_mean", "g_sum", ["x"]}}``.
        outputs: ``{layer: h}`` (with their graph) while the block runs, so
            that ``torch.autograd.grad(loss, outputs)`` fills in ``g_sum``
            without computing weight gradients; emptied on exit.
    """

    records: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    outputs: dict[str, Tensor] = field(default_factory=dict)


class PreactivationCapture:
    """Forward hooks (and output tensor hooks) on named ``Linear`` layers, during a block.

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
            with torch.no_grad():
                entry["h_mean"] = h.detach().reshape(-1, h.shape[-1]).mean(0)
                if inputs:
                    x = args[0]
                    entry["x"] = x.detach().reshape(-1, x.shape[-1])
            if not h.requires_grad:
                return None
            rec.outputs[name] = h

            def grad_hook(g: Tensor) -> None:
                entry["g_sum"] = g.detach().reshape(-1, g.shape[-1]).sum(0)

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

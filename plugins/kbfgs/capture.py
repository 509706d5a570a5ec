r"""Hooks that record what K-BFGS needs from each ``Linear`` layer in one evaluation.

For a layer :math:`h = W a` (bias folded in through the homogeneous input
:math:`a = (x, 1)`) and a batch of :math:`N` rows (leading dimensions are
flattened, so a sequence model's positions count as rows):

* ``x``: the layer inputs as an ``(N, in)`` matrix (only when inputs are
  recorded; the optimizer forms :math:`\frac1N \sum_n a_n a_n^\top` from it,
  fused with its moving average),
* ``h_mean``: :math:`\bar h = \frac1N \sum_n h_n`,
* ``g_mean``: :math:`\bar g = \frac1N \sum_n \partial \ell_n / \partial h_n`,
  the mean per-example gradient of the summed loss
  :math:`\sum_n \ell_n`. With the closure's loss :math:`L` and
  :math:`L_\text{paper} = \frac1N \sum_n \ell_n = c\,L`
  (:mod:`curvlab_plugins.kbfgs.normalisation`; :attr:`PreactivationCapture.scale`
  holds :math:`c`), :math:`\partial \ell_n / \partial h_n = N c\,
  \partial L / \partial h_n` and so :math:`\bar g = c \sum_n \partial L / \partial h_n`.

``g_mean`` comes from a tensor hook on the layer output, so it is filled in
during the closure's backward pass. Hooks are active only inside
:meth:`PreactivationCapture.recording`; the records live on the instance
(no module-level state).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["PreactivationCapture"]


class PreactivationCapture:
    """Forward hooks (and output tensor hooks) on named ``Linear`` layers.

    Args:
        layers: ``{name: module}`` (from :func:`curvlab.curvature.layers.find_layers`).
        scale: The factor :math:`c` above (set per evaluation by the optimizer).
        who: Optimizer name for error messages.

    Example:
        >>> lin = nn.Linear(2, 3)
        >>> cap = PreactivationCapture({"0": lin})
        >>> x = torch.ones(4, 2)
        >>> with cap.recording(inputs=True):
        ...     lin(x).mean().backward()
        >>> rec = cap.records["0"]
        >>> rec["x"].shape, rec["h_mean"].shape, rec["g_mean"].shape
        (torch.Size([4, 2]), torch.Size([3]), torch.Size([3]))
        >>> cap.remove()
    """

    def __init__(
        self, layers: Mapping[str, nn.Module], *, scale: float = 1.0, who: str = "kbfgs"
    ) -> None:
        self.layers = dict(layers)
        self.scale = scale
        self.who = who
        self.records: dict[str, dict[str, Tensor]] = {}
        self.outputs: dict[str, Tensor] = {}
        self._active = False
        self._inputs = False
        self._handles = [
            module.register_forward_hook(self._make_hook(name)) for name, module in self.layers.items()
        ]

    def _make_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
            if self._active:
                self._record(name, module, args[0], output)

        return hook

    def _record(self, name: str, module: nn.Module, x: Tensor, h: Tensor) -> None:
        if name in self.records:
            raise ValueError(
                f"{self.who}: layer model.{name} ran twice in one evaluation; "
                "shared (re-used) layers are not supported"
            )
        rec: dict[str, Tensor] = {}
        self.records[name] = rec
        with torch.no_grad():
            h2 = h.detach().reshape(-1, h.shape[-1])
            rec["h_mean"] = h2.mean(0)
            if self._inputs:
                rec["x"] = x.detach().reshape(-1, x.shape[-1])
        if h.requires_grad:
            self.outputs[name] = h

            def grad_hook(g: Tensor) -> None:
                g2 = g.detach().reshape(-1, g.shape[-1])
                rec["g_mean"] = g2.sum(0).mul_(self.scale)

            h.register_hook(grad_hook)

    @property
    def active(self) -> bool:
        """Whether a :meth:`recording` block is running."""
        return self._active

    @contextmanager
    def recording(self, *, inputs: bool) -> Iterator[dict[str, dict[str, Tensor]]]:
        """Record the layers during the block (clears earlier records).

        Args:
            inputs: Also record the inputs ``x`` (first evaluation of a step).

        Yields:
            The records dict, ``{layer: {"h_mean", "g_mean", ["x"]}}``.
            During the block, :attr:`outputs` holds the layer outputs (with
            their graph) so that ``torch.autograd.grad(loss, outputs)`` can
            fill in ``g_mean`` without computing weight gradients.
        """
        self.records, self.outputs = {}, {}
        self._active, self._inputs = True, inputs
        try:
            yield self.records
        finally:
            self._active = False
            self.outputs = {}

    def remove(self) -> None:
        """Remove the forward hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

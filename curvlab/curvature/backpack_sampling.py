r"""Reproducible Monte-Carlo sampling for BackPACK's loss extensions.

BackPACK draws the sampled targets of ``KFAC`` (:math:`\tilde y \sim p(y|f)`)
from the global random number generator. :class:`SeededLossExtension` wraps
a loss's module extension so that this sampling uses a private generator
state instead: the global RNG is forked, set to the private state, the
wrapped extension runs, and the advanced state is kept in
:attr:`SeededLossExtension.state` (the optimizer saves it in its
``curv_state``, so resuming reproduces the same samples and the user's
global RNG stream is untouched). A non-finite loss input (a step that will
be skipped) gives a NaN square root instead of a sampling error.
"""

from __future__ import annotations

import math

import torch
from backpack.extensions.module_extension import ModuleExtension
from torch import Tensor

from curvlab.curvature.finite import all_finite
from curvlab.curvature.rng import device_keys, lend_rng

__all__ = ["SeededLossExtension"]


class SeededLossExtension(ModuleExtension):
    """Run a loss module extension under a private RNG state.

    Args:
        inner: The wrapped loss module extension (e.g. BackPACK's ``HBPCrossEntropyLoss``).
        seed: Seed used when :attr:`state` is ``None`` (first use).

    Attributes:
        state: RNG state (of the generator of the device the loss inputs live
            on) to start from (``None``: seed with ``seed``); after a backward
            pass, the advanced state.

    Example:
        >>> from backpack.extensions.secondorder.hbp.losses import HBPMSELoss
        >>> ext = SeededLossExtension(HBPMSELoss(), seed=0)
        >>> ext.state is None
        True
    """

    def __init__(self, inner: ModuleExtension, seed: int) -> None:
        super().__init__()
        self.inner = inner
        self.seed = seed
        self.state: Tensor | None = None

    def check_hyperparameters_module_extension(self, ext, module, g_inp, g_out) -> None:
        """Delegate BackPACK's support check to the wrapped extension."""
        self.inner.check_hyperparameters_module_extension(ext, module, g_inp, g_out)

    def backpropagate(self, ext, module, g_inp, g_out, bpQuantities):
        """Run the wrapped extension's ``backpropagate`` with the private RNG state."""
        x = module.input0
        if not all_finite([x]):
            rows = ext.get_num_mc_samples() if hasattr(ext, "get_num_mc_samples") else x.shape[1]
            return torch.full((rows, *x.shape), math.nan, dtype=x.dtype, device=x.device)
        key = device_keys([x])[-1]  # "cpu", or the CUDA device of the inputs
        with lend_rng(None if self.state is None else {key: self.state}, seed=self.seed,
                      keys=[key]) as drawn:
            out = self.inner.backpropagate(ext, module, g_inp, g_out, bpQuantities)
        self.state = drawn["state"][key]
        return out

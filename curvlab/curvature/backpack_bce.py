r"""BackPACK module extension: ``BCEWithLogitsLoss`` with soft targets and many outputs.

BackPACK 1.7's ``KFAC``/``KFLR`` handle ``BCEWithLogitsLoss`` only for one
output per sample and 0/1 targets. The loss's curvature does not need
either restriction: for logits :math:`f \in \mathbb{R}^{N \times D}`,
targets :math:`y \in [0, 1]^{N \times D}` and :math:`\sigma = \operatorname{sigmoid}(f)`,

.. math::

    \ell = c \sum_{n,d} -y_{nd} \log \sigma_{nd} - (1-y_{nd}) \log(1-\sigma_{nd}),
    \qquad \nabla^2_{f_n} \ell = c \operatorname{diag}(\sigma_n (1-\sigma_n)),

independent of :math:`y` (:math:`c = 1` for ``reduction="sum"``,
:math:`c = 1/(N D)` for ``"mean"``, which averages over all elements). The
square roots BackPACK back-propagates, per sample :math:`n`:

* exact (``KFLR``), shape ``[D, N, D]``: :math:`S_{:,n,:} = \sqrt c\,
  \operatorname{diag}(\sqrt{\sigma_n (1-\sigma_n)})`;
* Monte-Carlo (``KFAC``), shape ``[M, N, D]``: :math:`S_{m,n,:} = \sqrt{c/M}\,
  (\sigma_n - \tilde y_{mn})` with :math:`\tilde y_{mn} \sim \operatorname{Bernoulli}(\sigma_n)`,
  so that :math:`\mathbb{E}[S^\top S] = c \operatorname{diag}(\sigma(1-\sigma))`.

:func:`install_bce_extension` registers this on an extension instance
through BackPACK's own mechanism (``set_module_extension``).
"""

from __future__ import annotations

from math import sqrt

import torch
from backpack.core.derivatives.bcewithlogitsloss import BCELossWithLogitsDerivatives
from backpack.extensions.secondorder.hbp.losses import HBPLoss
from backpack.utils.subsampling import subsample
from torch import Tensor, nn

__all__ = ["HBPSoftBCEWithLogitsLoss", "SoftBCEWithLogitsDerivatives", "install_bce_extension"]


class SoftBCEWithLogitsDerivatives(BCELossWithLogitsDerivatives):
    """``BCEWithLogitsLoss`` derivatives for 2d logits ``(N, D)`` and targets in ``[0, 1]``.

    Example:
        >>> d = SoftBCEWithLogitsDerivatives()
        >>> d._get_mean_normalization(torch.zeros(4, 3))
        12
    """

    def __init__(self) -> None:
        super().__init__(use_autograd=False)

    def _verify_support(self, module: nn.BCEWithLogitsLoss) -> None:
        self._check_is_default(module)
        self._check_input_dims(module)

    def _check_input_dims(self, module: nn.BCEWithLogitsLoss) -> None:
        if module.input0.dim() != 2:
            raise NotImplementedError(
                f"BCEWithLogitsLoss: logits must be 2d (N, D), got shape {tuple(module.input0.shape)}"
            )

    @staticmethod
    def _get_mean_normalization(input: Tensor) -> int:
        return input.numel()

    def _sqrt_hessian(self, module, g_inp, g_out, subsampling=None) -> Tensor:
        self._verify_support(module)
        sigma = torch.sigmoid(subsample(module.input0, subsampling=subsampling))
        root = (sigma * (1 - sigma)).sqrt()
        if module.reduction == "mean":
            root = root / sqrt(self._get_mean_normalization(module.input0))
        return torch.diag_embed(root).permute(1, 0, 2)

    def _compute_sampled_grads_manual(self, subsampled_input: Tensor, mc_samples: int) -> Tensor:
        probs = torch.sigmoid(subsampled_input).unsqueeze(0)
        probs = probs.expand(mc_samples, *subsampled_input.shape)
        return probs - torch.bernoulli(probs)


class HBPSoftBCEWithLogitsLoss(HBPLoss):
    """HBP (KFAC/KFLR/KFRA) module extension using :class:`SoftBCEWithLogitsDerivatives`.

    Example:
        >>> isinstance(HBPSoftBCEWithLogitsLoss().derivatives, SoftBCEWithLogitsDerivatives)
        True
    """

    def __init__(self) -> None:
        super().__init__(derivatives=SoftBCEWithLogitsDerivatives())


def install_bce_extension(extension) -> None:
    """Replace ``extension``'s ``BCEWithLogitsLoss`` handler by :class:`HBPSoftBCEWithLogitsLoss`.

    Only this extension instance is changed (no global state).

    Args:
        extension: A BackPACK ``KFAC``/``KFLR`` instance.

    Example:
        >>> from backpack.extensions import KFLR
        >>> install_bce_extension(KFLR())
    """
    extension.set_module_extension(nn.BCEWithLogitsLoss, HBPSoftBCEWithLogitsLoss(), overwrite=True)

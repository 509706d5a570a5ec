r"""The shared Kronecker-factored preconditioner of K-FAC and FOOF.

Both methods keep, per :class:`~curvlab.curvature.kronecker.KroneckerBlock`,
running factors (:mod:`~curvlab.curvature.ema`), refresh damped inverses
now and then (:mod:`~curvlab.curvature.tikhonov`,
:mod:`~curvlab.curvature.inverse`) and precondition the gradient's matrix
view :math:`M` as

.. math::

    V = (G + \lambda_G I)^{-1} \, M \, (A + \lambda_A I)^{-1}.

K-FAC feeds ``{"G", "A"}`` (BackPACK's factors); FOOF feeds only ``{"A"}``
(input statistics): with :math:`G = I` the same code gives FOOF's
:math:`V = M (\Sigma + \lambda I)^{-1}`.

All tensors live in a plain ``state`` dict (the optimizer's ``curv_state``)
keyed by block name: ``{"count": t, "A": ..., "G": ..., "A_inv": ...,
"G_inv": ...}``. Methods return *new* entries and never modify ``state``,
so the caller checks them and commits only finite results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from curvlab.curvature.ema import ema_update
from curvlab.curvature.finite import all_finite
from curvlab.curvature.inverse import damped_inverse
from curvlab.curvature.kronecker import (
    KroneckerBlock,
    block_matrix,
    kron_precondition,
    split_matrix,
)
from curvlab.curvature.tikhonov import split_damping

__all__ = ["KroneckerPreconditioner", "mean_eigenvalue"]


def mean_eigenvalue(A: Tensor | None, G: Tensor | None) -> float:
    r"""Mean eigenvalue of :math:`G \otimes A`: :math:`(\operatorname{tr}A/\dim A)(\operatorname{tr}G/\dim G)` (identity: 1).

    Example:
        >>> mean_eigenvalue(torch.diag(torch.tensor([1.0, 3.0])), None)
        2.0
    """
    out = 1.0
    for f in (A, G):
        if f is not None:
            out *= float(f.diagonal().sum()) / f.shape[0]
    return out


class KroneckerPreconditioner:
    r"""EMA factors, damped inverses and preconditioned directions for a list of blocks.

    Args:
        blocks: The blocks (built once from the model).
        heuristic: Damping split for two-factor blocks, ``"pi"`` or ``"equal"``.
        relative_damping: Scale :math:`\lambda` by the block's mean eigenvalue
            (:func:`mean_eigenvalue`) before splitting it.
        inverse_method: ``"cholesky"`` or ``"eigh"`` (:func:`~curvlab.curvature.inverse.damped_inverse`).
        inverse_dtype: Dtype of the factorisations (``None``: the factors' dtype).

    Example:
        >>> lin = torch.nn.Linear(2, 1, bias=False)
        >>> pre = KroneckerPreconditioner([KroneckerBlock("0", (lin.weight,), ("A",))])
        >>> state = pre.accumulate({}, {"0": {"A": torch.diag(torch.tensor([1.0, 3.0]))}}, 0.95)
        >>> state.update(pre.invert(state, {"0": 1.0}))
        >>> lin.weight.grad = torch.ones(1, 2)
        >>> pre.directions(state, pre.blocks[0])[0]
        tensor([[0.5000, 0.2500]])
    """

    def __init__(
        self,
        blocks: Sequence[KroneckerBlock],
        *,
        heuristic: str = "pi",
        relative_damping: bool = False,
        inverse_method: str = "cholesky",
        inverse_dtype: torch.dtype | None = None,
    ) -> None:
        self.blocks = list(blocks)
        self.heuristic = heuristic
        self.relative_damping = relative_damping
        self.inverse_method = inverse_method
        self.inverse_dtype = inverse_dtype

    def accumulate(
        self,
        state: Mapping[str, Any],
        estimates: Mapping[str, Mapping[str, Tensor]],
        decay: float,
    ) -> dict[str, dict[str, Any]] | None:
        """New block entries after folding ``estimates`` into the bias-corrected EMAs.

        Args:
            state: Current block entries (not modified).
            estimates: ``{block: {factor: tensor}}`` from this step.
            decay: EMA decay :math:`m`.

        Returns:
            ``{block: entry}`` for the blocks in ``estimates`` (inverses kept
            as they were), or ``None`` if any new factor is not finite.
        """
        new: dict[str, dict[str, Any]] = {}
        for name, factors in estimates.items():
            old = state.get(name, {})
            count = old.get("count", 0) + 1
            entry = dict(old, count=count)
            for f, x in factors.items():
                entry[f] = ema_update(old.get(f) if count > 1 else None, x, decay, count)
            new[name] = entry
        fresh = [e[f] for n, e in new.items() for f in estimates[n]]
        return new if all_finite(fresh) else None

    def damping_split(self, entry: Mapping[str, Any], damping: float) -> tuple[float, float]:
        r""":math:`(\lambda_A, \lambda_G)` for one block entry (relative scaling, then split)."""
        A, G = entry.get("A"), entry.get("G")
        if self.relative_damping:
            damping = damping * max(mean_eigenvalue(A, G), torch.finfo(torch.float32).tiny)
        return split_damping(damping, A, G, self.heuristic)

    def invert(
        self, state: Mapping[str, Any], damping: Mapping[str, float]
    ) -> dict[str, dict[str, Any]] | None:
        r"""New entries with ``A_inv``/``G_inv`` = damped inverses of the current factors.

        Args:
            state: Block entries holding the factors (not modified).
            damping: :math:`\lambda` per block name.

        Returns:
            ``{block: entry}`` for every block with factors, or ``None`` when
            an inverse fails or is not finite (the caller skips the step).
        """
        new: dict[str, dict[str, Any]] = {}
        for block in self.blocks:
            entry = state.get(block.name)
            if entry is None:
                continue
            lam_a, lam_g = self.damping_split(entry, damping[block.name])
            out = dict(entry)
            try:
                for f, lam in (("A", lam_a), ("G", lam_g)):
                    if f in entry:
                        out[f + "_inv"] = damped_inverse(
                            entry[f], lam, method=self.inverse_method,
                            compute_dtype=self.inverse_dtype,
                        )
            except torch.linalg.LinAlgError:
                return None
            new[block.name] = out
        invs = [e[k] for e in new.values() for k in ("A_inv", "G_inv") if k in e]
        return new if all_finite(invs) else None

    def matrices(self, state: Mapping[str, Any], block: KroneckerBlock) -> tuple[Tensor, Tensor]:
        """``(M, V)``: the gradient's matrix view and :math:`V = G^{-1} M A^{-1}` (a new tensor).

        Raises:
            KeyError: the block has no inverses yet.
        """
        entry = state[block.name]
        M = block_matrix([p.grad for p in block.params])
        return M, kron_precondition(M, entry.get("G_inv"), entry.get("A_inv"))

    def directions(self, state: Mapping[str, Any], block: KroneckerBlock) -> list[Tensor]:
        """Preconditioned gradients of ``block.params`` (:math:`G^{-1} M A^{-1}`, split back).

        Raises:
            KeyError: the block has no inverses yet.
        """
        return split_matrix(self.matrices(state, block)[1], block.params)

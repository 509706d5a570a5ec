r"""The shared Kronecker-factored preconditioner of K-FAC and FOOF.

Both methods keep, per :class:`~curvlab.curvature.kronecker.KroneckerBlock`,
running factors (:mod:`~curvlab.curvature.ema`), refresh damped inverses
now and then (:mod:`~curvlab.curvature.tikhonov`,
:mod:`~curvlab.curvature.inverse`) and precondition the gradient's matrix
view :math:`M` (:mod:`~curvlab.curvature.kronecker`) by the damped block:

=========== ============================================ ====================================================
view        block                                        direction
=========== ============================================ ====================================================
``out_in``  :math:`(G+\lambda_G I)\otimes(A+\lambda_A I)` :math:`V = (G+\lambda_G I)^{-1} M (A+\lambda_A I)^{-1}`
``in_out``  :math:`(A+\lambda_A I)\otimes(G+\lambda_G I)` :math:`V = (A+\lambda_A I)^{-1} M (G+\lambda_G I)^{-1}`
``unit``    :math:`\operatorname{blockdiag}_i(U_i+\lambda I)` :math:`V_i = (U_i+\lambda I)^{-1} M_i` per unit :math:`i`
=========== ============================================ ====================================================

Damping (a block's :math:`\lambda` is its param group's ``damping``):

* two factors: :math:`\lambda_A\lambda_G = \lambda`, split by the
  π-heuristic or equally (:func:`~curvlab.curvature.tikhonov.split_damping`),
  or ``"standard"``: the exact :math:`(G \otimes A + \lambda I)^{-1}` through
  the factors' eigenbases (:mod:`~curvlab.curvature.eigen_damping`; the
  entry keeps ``A_eig``/``A_vec``/``G_eig``/``G_vec`` and ``damping``
  instead of ``A_inv``/``G_inv``);
  :math:`\operatorname{tr}A/\dim A` of an ``Embedding``'s diagonal
  :math:`A` is the mean token frequency, so π means the same for every
  Kronecker block;
* one factor (a bias block :math:`G\otimes 1`; FOOF's :math:`A` with
  :math:`G = I`): the factor gets all of :math:`\lambda` — the damping is exact;
* unit blocks: :math:`U_i + \lambda I` — exact Tikhonov damping of the
  block-diagonal curvature (it is no product, so there is nothing to split);
* ``relative_damping``: :math:`\lambda` is first multiplied by the block's
  mean eigenvalue :math:`\prod_F \operatorname{tr}F/\dim F` (unit blocks:
  the mean of :math:`\operatorname{tr}U_i/k`).

K-FAC feeds ``{"G", "A"}`` (``{"U"}`` for norm layers); FOOF feeds only
``{"A"}`` (input statistics; ``{"U"}`` = the units' input moments): with
:math:`G = I` the same code gives FOOF's :math:`V = M (\Sigma + \lambda I)^{-1}`.

All tensors live in a plain ``state`` dict (the optimizer's ``curv_state``)
keyed by block name: ``{"count": t, "A": ..., "G": ..., "A_inv": ...,
"G_inv": ...}`` (``"U"``, ``"U_inv"`` for unit blocks). Methods return
*new* entries and never modify ``state``, so the caller checks them and
commits only finite results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from curvlab.curvature.eigen_damping import damped_kron_solve, eigen_factor
from curvlab.curvature.ema import ema_update
from curvlab.curvature.finite import all_finite
from curvlab.curvature.inverse import damped_inverse
from curvlab.curvature.kronecker import (
    KroneckerBlock,
    block_matrix,
    kron_precondition,
    split_matrix,
    unit_precondition,
)
from curvlab.curvature.tikhonov import mean_trace, split_damping

__all__ = ["KroneckerPreconditioner", "mean_eigenvalue"]


def mean_eigenvalue(*factors: Tensor | None) -> float:
    r"""Mean eigenvalue of the Kronecker product of ``factors``: :math:`\prod_F \operatorname{tr}F/\dim F`.

    ``None`` is an identity (1); a vector is a diagonal; a stack ``(U, k, k)``
    a block-diagonal matrix (:func:`~curvlab.curvature.tikhonov.mean_trace`).

    Example:
        >>> mean_eigenvalue(torch.diag(torch.tensor([1.0, 3.0])), None)
        2.0
        >>> mean_eigenvalue(torch.tensor([1.0, 3.0]), 2 * torch.eye(3))
        4.0
    """
    out = 1.0
    for f in factors:
        if f is not None:
            out *= mean_trace(f)
    return out


class KroneckerPreconditioner:
    r"""EMA factors, damped inverses and preconditioned directions for a list of blocks.

    Args:
        blocks: The blocks (built once from the model).
        heuristic: Damping of two-factor blocks: ``"pi"`` or ``"equal"``
            (split between the factors), ``"standard"`` (exact, eigenbases).
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

    def damping_split(self, entry: Mapping[str, Any], damping: float) -> dict[str, float]:
        r"""The damping of each factor of one block entry (module docstring): ``{factor: λ_F}``.

        Example:
            >>> pre = KroneckerPreconditioner([])
            >>> pre.damping_split({"A": 4 * torch.eye(2), "G": torch.eye(3)}, 0.01)
            {'A': 0.2, 'G': 0.05}
            >>> pre.damping_split({"U": torch.eye(2).expand(3, 2, 2)}, 0.01)
            {'U': 0.01}
        """
        A, G, U = entry.get("A"), entry.get("G"), entry.get("U")
        if self.relative_damping:
            damping = damping * max(mean_eigenvalue(A, G, U), torch.finfo(torch.float32).tiny)
        if U is not None:
            return {"U": damping}
        lam_a, lam_g = split_damping(damping, A, G,
                                     "pi" if self.heuristic == "standard" else self.heuristic)
        return {f: lam for f, lam, x in (("A", lam_a, A), ("G", lam_g, G)) if x is not None}

    def invert(
        self, state: Mapping[str, Any], damping: Mapping[str, float]
    ) -> dict[str, dict[str, Any]] | None:
        r"""New entries with ``A_inv``/``G_inv``/``U_inv`` = damped inverses of the current factors.

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
            out = dict(entry)
            try:
                if self.standard(block, entry):
                    lam = damping[block.name]
                    if self.relative_damping:
                        lam *= max(mean_eigenvalue(entry["A"], entry["G"]),
                                   torch.finfo(torch.float32).tiny)
                    for f in ("A", "G"):
                        vals, vecs = eigen_factor(entry[f], self.inverse_dtype)
                        out[f + "_eig"] = vals
                        if vecs is not None:
                            out[f + "_vec"] = vecs
                    out["damping"] = torch.tensor(float(lam), dtype=torch.float64)
                    new[block.name] = out
                    continue
                for f, lam in self.damping_split(entry, damping[block.name]).items():
                    out[f + "_inv"] = damped_inverse(
                        entry[f], lam, method=self.inverse_method, compute_dtype=self.inverse_dtype,
                    )
            except torch.linalg.LinAlgError:
                return None
            new[block.name] = out
        invs = [e[k] for e in new.values()
                for k in ("A_inv", "G_inv", "U_inv", "A_eig", "G_eig", "A_vec", "G_vec") if k in e]
        return new if all_finite(invs) else None

    def standard(self, block: KroneckerBlock, entry: Mapping[str, Any]) -> bool:
        """Whether ``block`` is damped exactly through eigenbases (``"standard"`` and two factors)."""
        return (self.heuristic == "standard" and block.view != "unit"
                and entry.get("A") is not None and entry.get("G") is not None)

    def inverted(self, state: Mapping[str, Any], block: KroneckerBlock) -> bool:
        """Whether ``state`` holds what :meth:`matrices` needs for ``block`` (its inverses or eigenbases).

        Example:
            >>> lin = torch.nn.Linear(2, 1, bias=False)
            >>> pre = KroneckerPreconditioner([KroneckerBlock("0", (lin.weight,), ("A",))])
            >>> pre.inverted({"0": {"A": torch.eye(2)}}, pre.blocks[0])
            False
        """
        entry = state.get(block.name, {})
        if self.standard(block, entry):
            return "A_eig" in entry
        return all(f + "_inv" in entry for f in block.factors)

    def matrices(self, state: Mapping[str, Any], block: KroneckerBlock) -> tuple[Tensor, Tensor]:
        """``(M, V)``: the gradient's matrix view and the preconditioned one (a new tensor).

        Raises:
            KeyError: the block has no inverses yet.
        """
        entry = state[block.name]
        M = block_matrix([p.grad for p in block.params], block.view)
        if block.view == "unit":
            return M, unit_precondition(M, entry["U_inv"])
        left, right = block.sides
        if "A_eig" in entry and self.standard(block, entry):
            def eig(f: str) -> tuple[Tensor, Tensor | None]:
                return entry[f + "_eig"], entry.get(f + "_vec")

            return M, damped_kron_solve(M, eig(left), eig(right), float(entry["damping"]))
        return M, kron_precondition(M, entry.get(left + "_inv"), entry.get(right + "_inv"))

    def directions(self, state: Mapping[str, Any], block: KroneckerBlock) -> list[Tensor]:
        """Preconditioned gradients of ``block.params`` (the view's direction, split back).

        Raises:
            KeyError: the block has no inverses yet.
        """
        return split_matrix(self.matrices(state, block)[1], block.params, block.view)

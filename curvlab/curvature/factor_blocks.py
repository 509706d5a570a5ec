r"""From a factor engine's block plan and captures to the preconditioner's blocks and estimates.

A :class:`~curvlab.curvature.block_plan.BlockPlan` groups the covered
parameters by module (:class:`~curvlab.curvature.block_plan.LayerGroup`);
a capture returns one :class:`~curvlab.curvature.layer_factors.LayerFactors`
per group. :func:`plan_blocks_for` turns the plan into
:class:`~curvlab.curvature.kronecker.KroneckerBlock` s of the
:class:`~curvlab.curvature.kronecker_preconditioner.KroneckerPreconditioner`,
and :func:`capture_estimates` a capture into its ``{block: {factor: tensor}}``
estimates, so that a backend never looks at layer types or engines:

================= ================================ ================================= =====================
family            ``separate`` (K-FAC)             ``homogeneous``, A only (FOOF)    estimates
================= ================================ ================================= =====================
linear, conv2d    ``<weight>``: G, A; ``<bias>``: G ``<group>`` over [W | b]: A        :math:`A, cG` (FOOF: A)
embedding         ``<weight>`` (in_out): A, G      ``<group>`` (in_out): A            :math:`A, cG` (FOOF: A)
norm              ``<group>`` (unit): U            ``<group>`` (unit): U              :math:`cU` (FOOF: moments)
================= ================================ ================================= =====================

(``<weight>`` is the weight's qualified name, ``<group>`` the module's.)
``scale`` :math:`c` multiplies the output-side quantities (:math:`G`,
:math:`U`): the engines return the curvature of the loss *module*, a backend
multiplies it by the scale between what the closure returns and that module
(:mod:`~curvlab.curvature.loss_scale`).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from curvlab.curvature.block_plan import BlockPlan
from curvlab.curvature.kronecker import KroneckerBlock
from curvlab.curvature.layer_factors import LayerFactors

__all__ = ["capture_estimates", "plan_blocks_for"]


def plan_blocks_for(plan: BlockPlan, *, need_G: bool) -> list[KroneckerBlock]:
    """The preconditioner's blocks for ``plan`` (module docstring's table).

    Args:
        plan: The engine's block plan.
        need_G: ``True``: K-FAC's blocks (separate bias blocks, factors G and A);
            ``False``: FOOF's (bias folded into A, no G).

    Example:
        >>> import torch
        >>> from curvlab.curvature.block_plan import plan_blocks
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.LayerNorm(3))
        >>> [(b.name, b.factors, b.view) for b in plan_blocks_for(plan_blocks(net), need_G=True)]
        [('0.weight', ('G', 'A'), 'out_in'), ('0.bias', ('G',), 'out_in'), ('1', ('U',), 'unit')]
        >>> [(b.name, len(b.params), b.factors) for b in plan_blocks_for(plan_blocks(net), need_G=False)]
        [('0', 2, ('A',)), ('1', 2, ('U',))]
    """
    blocks = []
    for name, g in plan.groups.items():
        if g.family == "norm":
            blocks.append(KroneckerBlock(name, g.params, ("U",), view="unit"))
        elif g.family == "embedding":
            blocks.append(KroneckerBlock(g.weight_name if need_G else name, (g.weight,),
                                         ("A", "G") if need_G else ("A",), view="in_out"))
        elif not need_G:
            blocks.append(KroneckerBlock(name, g.params, ("A",)))
        else:
            if g.weight is not None:
                blocks.append(KroneckerBlock(g.weight_name, (g.weight,), ("G", "A")))
            if g.bias is not None:
                blocks.append(KroneckerBlock(g.bias_name, (g.bias,), ("G",)))
    return blocks


def capture_estimates(
    plan: BlockPlan, factors: Mapping[str, LayerFactors], *, need_G: bool, scale: float = 1.0,
) -> dict[str, dict[str, Tensor]]:
    """``{block: {factor: tensor}}`` of one capture for the blocks of :func:`plan_blocks_for`.

    Args:
        plan: The engine's block plan.
        factors: The capture's ``{group: LayerFactors}`` (bias layout
            ``"separate"`` when ``need_G``, ``"homogeneous"`` otherwise).
        need_G: As for :func:`plan_blocks_for`.
        scale: :math:`c`, multiplying ``G`` and ``U`` (``need_G`` only).

    Example:
        >>> import torch
        >>> from curvlab.curvature.block_plan import plan_blocks
        >>> from curvlab.curvature.hook_engine import HookEngine
        >>> net, loss_fn = torch.nn.Sequential(torch.nn.Linear(2, 3)), torch.nn.MSELoss()
        >>> engine = HookEngine(net, loss_fn, seed=0)
        >>> with engine.capture(fisher_type="exact") as cap:
        ...     loss_fn(net(torch.ones(4, 2)), torch.zeros(4, 3)).backward()
        >>> est = capture_estimates(engine.plan, cap.factors, need_G=True, scale=2.0)
        >>> sorted(est), sorted(est["0.weight"]), float(est["0.bias"]["G"][0, 0])   # 2 · 2/3
        (['0.bias', '0.weight'], ['A', 'G'], 1.3333333730697632)
    """
    out: dict[str, dict[str, Tensor]] = {}
    for name, g in plan.groups.items():
        f = factors[name]
        if g.family == "norm":
            out[name] = {"U": f.unit * scale if need_G and scale != 1.0 else f.unit}
            continue
        if not need_G:
            out[name] = {"A": f.A}
            continue
        G = f.G * scale if scale != 1.0 else f.G
        if g.family == "embedding":
            out[g.weight_name] = {"A": f.A, "G": G}
            continue
        if g.weight is not None:
            out[g.weight_name] = {"G": G, "A": f.A}
        if g.bias is not None:
            out[g.bias_name] = {"G": G}
    return out

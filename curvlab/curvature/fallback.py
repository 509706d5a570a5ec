r"""The declared update of every parameter no curvature block covers: :class:`Fallback`.

A layer-wise curvature backend (K-FAC, FOOF, K-BFGS) has blocks for some
layer types (:mod:`~curvlab.curvature.block_plan`). Every other trainable
parameter — an ``nn.MultiheadAttention`` projection, an ``nn.Parameter``
used in a custom ``forward`` (learned positions), a weight tied in two roles
(``Embedding`` and ``lm_head``), a parameter given to the optimizer from
outside the model — gets the update the ``fallback`` hyper-parameter names:

``"adam"`` (default)
    Adam (Kingma & Ba 2015) with the fallback's own hyper-parameters:
    :math:`m \leftarrow \beta_1 m + (1-\beta_1) g`,
    :math:`v \leftarrow \beta_2 v + (1-\beta_2) g^2`,
    :math:`\theta \leftarrow \theta - \alpha_f\,\big(\hat m/(\sqrt{\hat v}+\epsilon) + w\,\theta\big)`
    with bias-corrected :math:`\hat m, \hat v`; :math:`\alpha_f` = ``fallback_lr``,
    :math:`(\beta_1, \beta_2)` = ``fallback_betas``, :math:`\epsilon` =
    ``fallback_eps``, :math:`w` = the group's ``weight_decay`` added after the
    "preconditioning", as the backend adds it to its own directions (so it is
    AdamW's decoupled decay). The group's ``momentum`` does not apply
    (:math:`\beta_1` is Adam's).
``"sgd"``
    The backend's own SGD rule (:mod:`~curvlab.curvature.momentum`) with the
    raw gradient as direction: the group's ``momentum`` and ``weight_decay``,
    step size :math:`\alpha_f` — what kfac-pytorch does with the layers it
    does not precondition.
``"error"``
    Refuse at construction, naming every such parameter and why it has no block.

Step size: ``fallback_lr=None`` (default) uses the param group's ``lr`` at
every step (so LR schedulers, and ``lr=0``, act on the fallback too); a
number is used as it is (a scheduler that edits ``lr`` does not change it).
The default choice and its measurement are in ``docs/backends/kfac.rst``.

The fallback's state is torch's per-parameter state (``step``, ``exp_avg``,
``exp_avg_sq`` for Adam; ``momentum_buffer`` for SGD), saved and restored by
``state_dict`` (bitwise resume). Its step is a
:class:`~curvlab.curvature.descent.PlannedStep`: the backend applies it
together with its own through :func:`~curvlab.curvature.descent.descend_all_`
(all or nothing).

One :class:`FallbackWarning` at construction lists the parameters routed
to the fallback (none per step). The table of every parameter's update is
:class:`~curvlab.curvature.coverage_table.CoverageTable`
(``optimizer.coverage()``).

How a backend uses it (K-BFGS: ``families=("linear",)``)::

    schema = Schema([..., *fallback_hparams()])
    rows = plan_blocks(model, trainable=...).coverage(families=..., who=self.name)
    self.fallback = Fallback(self, rows)         # warns once / refuses
    ...                                          # in _update:
    descend_all_([my_part, self.fallback.plan()])
    def coverage(self): return self.fallback.table
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from curvlab.curvature.block_plan import ParamCoverage
from curvlab.curvature.coverage_table import CoverageRow, CoverageTable, outside_name
from curvlab.curvature.descent import PlannedStep
from curvlab.curvature.momentum import momentum_plan
from curvlab.hparams import OPTIMIZER, HParam

__all__ = ["FALLBACKS", "Fallback", "FallbackWarning", "fallback_hparams"]

#: The allowed values of the ``fallback`` hyper-parameter.
FALLBACKS = ("adam", "sgd", "error")


class FallbackWarning(UserWarning):
    """Some parameters have no curvature block and are updated by the declared fallback."""


def fallback_hparams(default: str = "adam") -> list[HParam]:
    """The declarations of ``fallback``, ``fallback_lr``, ``fallback_betas`` and ``fallback_eps``.

    ``fallback`` is per optimizer (it decides what is built); the others are
    per param group.

    Example:
        >>> [(p.name, p.default, p.scope) for p in fallback_hparams()]  # doctest: +NORMALIZE_WHITESPACE
        [('fallback', 'adam', 'optimizer'), ('fallback_lr', None, 'group'),
         ('fallback_betas', (0.9, 0.999), 'group'), ('fallback_eps', 1e-08, 'group')]
    """
    return [
        HParam("fallback", str, default,
               "update of parameters no curvature block covers (opt.coverage())",
               choices=FALLBACKS, scope=OPTIMIZER),
        HParam("fallback_lr", float, None, "the fallback's step size (None: the group's lr)",
               low=0.0, optional=True),
        HParam("fallback_betas", tuple, (0.9, 0.999), "Adam fallback's (β₁, β₂)", low=0.0,
               high=1.0, high_open=True, length=2),
        HParam("fallback_eps", float, 1e-8, "Adam fallback's denominator guard ε", low=0.0,
               low_open=True),
    ]


def _stacklevel() -> int:
    """Stack level of the first frame outside curvlab (where the user built the optimizer)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    plugins = os.path.join(os.path.dirname(here), "plugins")
    level, frame = 1, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith((here, plugins)):
        level += 1
        frame = frame.f_back
    return level


class Fallback:
    r"""Route the parameters without a block to the declared fallback; its coverage table and step.

    Args:
        optimizer: The backend (a :class:`~curvlab.optimizer.CurvatureOptimizer`
            with ``fallback`` in its schema; its ``model``, ``param_groups``,
            ``state``, ``optimizer_hparams`` and ``name`` are read).
        rows: The block plan's coverage rows for the model's parameters
            (:meth:`~curvlab.curvature.block_plan.BlockPlan.coverage`);
            ``uncovered`` rows are routed, covered ones keep their kind.
        note: A line for the coverage table (e.g. the factor engine).

    Attributes:
        kind: ``"adam"``, ``"sgd"`` or ``"error"``.
        params: The routed parameters (trainable, no block).
        table: The :class:`~curvlab.curvature.coverage_table.CoverageTable`.

    Raises:
        ValueError: ``fallback="error"`` and some trainable parameter has no
            block (the message names each one and why).

    Example:
        >>> import torch, curvlab
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.PReLU())
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     opt = curvlab.create("kfac", net, nn.MSELoss())
        >>> [str(w.message)[:59] for w in caught]
        ['kfac: 1 parameter (1 of 7 trained entries) has no curvature']
        >>> opt.coverage().kinds()
        {'0.weight': 'kronecker-expand', '0.bias': 'kronecker-expand', '1.weight': 'fallback-adam'}
    """

    def __init__(self, optimizer: Any, rows: Sequence[ParamCoverage], *, note: str = "") -> None:
        self.optimizer = optimizer
        self.kind = optimizer.optimizer_hparams["fallback"]
        who = optimizer.name
        params = [p for g in optimizer.param_groups for p in g["params"]]
        ours = {id(p) for p in params}
        model = optimizer.model
        named = dict(model.named_parameters()) if model is not None else {}
        by_name = {r.name: r for r in rows}
        table: list[CoverageRow | None] = []
        routed: list[tuple[Tensor, int, str, tuple[int, ...], str]] = []  # (p, row, name, shape, why)
        seen: set[int] = set()
        for name, p in named.items():
            seen.add(id(p))
            row = by_name.get(name)
            if id(p) not in ours or not p.requires_grad:
                why = "not given to the optimizer" if id(p) not in ours else "requires_grad=False"
                table.append(CoverageRow(name, tuple(p.shape), "frozen", reason=why))
            elif row is None or row.kind == "uncovered":
                reason = row.reason if row is not None else "no curvature block"
                routed.append((p, len(table), name, tuple(p.shape), reason))
                table.append(None)
            elif row.kind == "frozen":  # trainable here, yet frozen for the plan: refuse, never skip
                raise ValueError(f"{who}: {name} is trainable but its block plan marks it frozen")
            else:
                table.append(CoverageRow(name, tuple(p.shape), row.kind, row.block))
        for i, p in enumerate(params):
            if id(p) in seen or not p.requires_grad:
                continue
            routed.append((p, len(table), outside_name(i, p), tuple(p.shape),
                           "given to the optimizer but not a parameter of the model"))
            table.append(None)
        listing = "; ".join(f"{name} {shape}: {why}" for _, _, name, shape, why in routed)
        if routed and self.kind == "error":
            raise ValueError(
                f"{who}: {len(routed)} parameter(s) have no curvature block and fallback='error': "
                f"{listing}. Use fallback='adam' or 'sgd' to update them without curvature, "
                "freeze them (requires_grad=False) or leave them out of params"
            )
        for _, i, name, shape, why in routed:
            table[i] = CoverageRow(name, shape, f"fallback-{self.kind}", reason=why)
        self.params = [r[0] for r in routed]
        self.table = CoverageTable([r for r in table if r is not None], note)
        if not routed:
            return
        entries = sum(p.numel() for p in self.params)
        total = sum(p.numel() for p in params if p.requires_grad)
        hp = ("lr: fallback_lr (None: the group's lr), betas: fallback_betas, eps: fallback_eps"
              if self.kind == "adam" else
              "lr: fallback_lr (None: the group's lr), the group's momentum and weight_decay")
        many = len(routed) > 1
        warnings.warn(
            f"{who}: {len(routed)} parameter{'s' if many else ''} ({entries} of {total} trained "
            f"entries) {'have' if many else 'has'} no curvature block and get{'' if many else 's'} "
            f"the fallback {self.kind!r} ({hp}): {listing}. opt.coverage() lists every "
            "parameter; fallback='error' refuses instead",
            FallbackWarning, stacklevel=_stacklevel(),
        )

    def _lr(self, group: dict[str, Any]) -> float:
        lr = group.get("fallback_lr")
        return group["lr"] if lr is None else lr

    @torch.no_grad()
    def plan(self) -> PlannedStep:
        """The fallback's part of this step (routed parameters with a gradient), not applied.

        Returns:
            A :class:`~curvlab.curvature.descent.PlannedStep` whose ``commit``
            stores the new Adam moments / momentum buffers.
        """
        opt = self.optimizer
        if not self.params:
            return PlannedStep()
        if self.kind == "sgd":
            lrs = {p: self._lr(g) for g in opt.param_groups for p in g["params"]}
            return momentum_plan(opt, {}, params=self.params, lrs=lrs)
        routed = {id(p) for p in self.params}
        out = PlannedStep()
        states = []
        for group in opt.param_groups:
            ps = [p for p in group["params"] if p.grad is not None and id(p) in routed]
            if not ps:
                continue
            (b1, b2), eps, wd = group["fallback_betas"], group["fallback_eps"], group.get("weight_decay", 0.0)
            for p in ps:
                st = opt.state[p]
                t = float(st["step"]) + 1 if "exp_avg" in st else 1.0
                m = st["exp_avg"] if "exp_avg" in st else torch.zeros_like(p)
                v = st["exp_avg_sq"] if "exp_avg_sq" in st else torch.zeros_like(p)
                g = p.grad
                m_new = torch.lerp(m, g, 1 - b1)
                v_new = v.mul(b2).addcmul_(g, g, value=1 - b2)
                denom = v_new.sqrt().div_(math.sqrt(1 - b2**t)).add_(eps)
                step = m_new.div(denom).div_(1 - b1**t)
                if wd != 0:
                    step.add_(p, alpha=wd)
                out.params.append(p)
                out.steps.append(step)
                out.lrs.append(self._lr(group))
                states.append((p, torch.tensor(t), m_new, v_new))
                out.state.append(v_new)

        def commit() -> None:
            for p, t, m_new, v_new in states:
                opt.state[p].update(step=t, exp_avg=m_new, exp_avg_sq=v_new)

        out.commit = commit
        return out

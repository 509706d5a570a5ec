"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from curvlab.curvature.momentum import momentum_step_
from curvlab.hparams import HParam, LogUniform, Schema
from curvlab.optimizer import CurvatureOptimizer, Evaluation, OptimizerMeta, Skip, Step

__all__ = ["SGD"]


class SGD(CurvatureOptimizer):
    r"""SGD, step for step identical to :class:`torch.optim.SGD`.

    With gradient :math:`g_t` and weight decay :math:`w`:
    :math:`d_t = g_t + w\,\theta_t`;
    :math:`b_t = \mu b_{t-1} + (1-\tau) d_t` (:math:`b_1 = d_1`);
    direction :math:`d_t + \mu b_t` (Nesterov) or :math:`b_t`;
    :math:`\theta_{t+1} = \theta_t - \alpha\,\text{direction}`
    (:mod:`curvlab.curvature.momentum`). Sparse gradients
    (``nn.Embedding(sparse=True)``) are handled as torch does (without
    weight decay). A step that would write NaN/Inf into a weight (e.g. an
    overflowing ``lr``) is skipped.

    Example:
        >>> import torch, curvlab
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = curvlab.create("sgd", model, lr=0.1, momentum=0.9)
        >>> _ = opt.step(curvlab.closure(model, torch.nn.MSELoss(),
        ...                              torch.randn(5, 3), torch.randn(5, 1)))
    """

    name = "sgd"
    schema = Schema(
        [
            HParam("lr", float, 0.01, "step size α", low=0.0, space=LogUniform(1e-3, 1.0)),
            HParam("momentum", float, 0.0, "heavy-ball coefficient μ", low=0.0, high=1.0,
                   high_open=True),
            HParam("dampening", float, 0.0, "dampening τ of the momentum buffer", low=0.0,
                   high=1.0),
            HParam("nesterov", bool, False, "Nesterov momentum (needs momentum > 0)"),
            HParam("weight_decay", float, 0.0, "L2 coefficient w added to the gradient",
                   low=0.0),
        ]
    )
    meta = OptimizerMeta(
        summary="stochastic gradient descent (momentum, Nesterov), first-order baseline",
        paper="Robbins & Monro 1951; Sutskever et al., ICML 2013 (momentum)",
        sparse_gradients=True,
        conformance={"lr": 0.1, "momentum": 0.9},
        tags=("first-order", "baseline"),
    )

    def _validate_group(self, group: Mapping[str, Any]) -> None:
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "nesterov=True needs momentum > 0 and dampening = 0, got "
                f"momentum={group['momentum']}, dampening={group['dampening']}"
            )

    def _setup(self) -> None:
        if self.model is None:
            return
        for mname, module in self.model.named_modules():
            if getattr(module, "sparse", False) is not True:
                continue
            for p in module.parameters(recurse=False):
                for group in self.param_groups:
                    if any(q is p for q in group["params"]) and group["weight_decay"] != 0:
                        raise ValueError(
                            f"sgd: weight_decay must be 0 for {type(module).__name__} at "
                            f"model.{mname}, which has sparse=True (torch.optim.SGD cannot "
                            f"decay sparse gradients either); got {group['weight_decay']}"
                        )

    @torch.no_grad()
    def _update(self, closure, evaluation: Evaluation) -> Step | Skip:
        if not momentum_step_(self, {}):
            return Skip("non-finite update (overflow of lr · direction)")
        return Step()

"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay."""

from __future__ import annotations

import torch

from curvlab.hparams import HParam, LogUniform, Schema
from curvlab.optimizer import CurvatureOptimizer, OptimizerMeta

__all__ = ["SGD"]


class SGD(CurvatureOptimizer):
    r"""SGD, step for step identical to :class:`torch.optim.SGD`.

    With gradient :math:`g_t` and weight decay :math:`w`:
    :math:`d_t = g_t + w\,\theta_t`;
    :math:`b_t = \mu b_{t-1} + (1-\tau) d_t` (:math:`b_1 = d_1`);
    direction :math:`d_t + \mu b_t` (Nesterov) or :math:`b_t`;
    :math:`\theta_{t+1} = \theta_t - \alpha\,\text{direction}`.

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
        conformance={"lr": 0.1, "momentum": 0.9},
        tags=("first-order", "baseline"),
    )

    def _setup(self) -> None:
        for group in self.param_groups:
            if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
                raise ValueError(
                    "nesterov=True needs momentum > 0 and dampening = 0, got "
                    f"momentum={group['momentum']}, dampening={group['dampening']}"
                )

    @torch.no_grad()
    def _update(self, closure, loss) -> None:
        for group in self.param_groups:
            lr, mu, tau = group["lr"], group["momentum"], group["dampening"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if group["weight_decay"] != 0:
                    d = d.add(p, alpha=group["weight_decay"])
                if mu != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = d.detach().clone()
                    else:
                        buf.mul_(mu).add_(d, alpha=1 - tau)
                    d = d.add(buf, alpha=mu) if group["nesterov"] else buf
                p.add_(d, alpha=-lr)

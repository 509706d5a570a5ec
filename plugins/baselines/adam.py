"""Adam (and AdamW-style decoupled weight decay)."""

from __future__ import annotations

import math

import torch

from curvlab.hparams import Entries, HParam, LogUniform, OneMinusLogUniform, Schema
from curvlab.optimizer import CurvatureOptimizer, OptimizerMeta

__all__ = ["Adam"]


class Adam(CurvatureOptimizer):
    r"""Adam (Kingma & Ba 2015), step for step identical to :class:`torch.optim.Adam`.

    :math:`m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t`,
    :math:`v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2`,
    :math:`\theta_{t+1} = \theta_t - \alpha \frac{m_t/(1-\beta_1^t)}
    {\sqrt{v_t/(1-\beta_2^t)} + \epsilon}`.
    ``weight_decay`` adds :math:`w\theta` to :math:`g_t` (Adam) or, with
    ``decoupled=True``, shrinks :math:`\theta` by :math:`\alpha w` (AdamW).

    Example:
        >>> import torch, curvlab
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = curvlab.create("adam", model, lr=1e-3)
        >>> _ = opt.step(curvlab.closure(model, torch.nn.MSELoss(),
        ...                              torch.randn(5, 3), torch.randn(5, 1)))
    """

    name = "adam"
    schema = Schema(
        [
            HParam("lr", float, 1e-3, "step size α", low=0.0, space=LogUniform(1e-4, 3e-2)),
            HParam("betas", tuple, (0.9, 0.999), "EMA coefficients (β₁, β₂)", low=0.0, high=1.0,
                   high_open=True, length=2,
                   space=Entries((OneMinusLogUniform(2e-2, 0.5), 0.999))),
            HParam("eps", float, 1e-8, "denominator guard ε", low=0.0, low_open=True),
            HParam("weight_decay", float, 0.0, "weight decay w", low=0.0),
            HParam("decoupled", bool, False, "decoupled weight decay (AdamW)"),
        ]
    )
    meta = OptimizerMeta(
        summary="Adam, first-order adaptive baseline",
        paper="Kingma & Ba, Adam: A Method for Stochastic Optimization, ICLR 2015, "
        "arXiv 1412.6980",
        conformance={"lr": 0.05},
        tags=("first-order", "baseline"),
    )

    @torch.no_grad()
    def _update(self, closure, loss) -> None:
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                if wd != 0:
                    if group["decoupled"]:
                        p.mul_(1 - lr * wd)
                    else:
                        g = g.add(p, alpha=wd)
                state["step"] += 1
                t = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                bc1, bc2 = 1 - b1**t, 1 - b2**t
                denom = (v.sqrt() / math.sqrt(bc2)).add_(eps)
                p.addcdiv_(m, denom, value=-lr / bc1)

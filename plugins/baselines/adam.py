"""Adam (and AdamW-style decoupled weight decay)."""

from __future__ import annotations

import math

import torch

from curvlab.curvature.finite import all_finite
from curvlab.hparams import HParam, Schema
from curvlab.optimizer import CurvatureOptimizer, Evaluation, OptimizerMeta, Skip, Step

__all__ = ["Adam"]


class Adam(CurvatureOptimizer):
    r"""Adam (Kingma & Ba 2015), step for step identical to :class:`torch.optim.Adam`.

    :math:`m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t`,
    :math:`v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2`,
    :math:`\theta_{t+1} = \theta_t - \alpha \frac{m_t/(1-\beta_1^t)}
    {\sqrt{v_t/(1-\beta_2^t)} + \epsilon}`.
    ``weight_decay`` adds :math:`w\theta` to :math:`g_t` (Adam) or, with
    ``decoupled=True``, shrinks :math:`\theta` by :math:`\alpha w` (AdamW).
    The new moments and weights are computed out of place and committed only
    if all are finite (an overflowing ``lr`` skips the step instead of
    writing ``inf``). Sparse gradients are refused, as torch's Adam does.

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
            HParam("lr", float, 1e-3, "step size α", low=0.0, grid=(1e-2, 3e-3, 1e-3)),
            HParam("betas", tuple, (0.9, 0.999), "EMA coefficients (β₁, β₂)", low=0.0, high=1.0,
                   high_open=True, length=2),
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
    def _update(self, closure, evaluation: Evaluation) -> Step | Skip:
        commits = []
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                step = state["step"] + 1 if state else torch.tensor(1.0)
                m = state["exp_avg"] if state else torch.zeros_like(p)
                v = state["exp_avg_sq"] if state else torch.zeros_like(p)
                new = p
                if wd != 0:
                    if group["decoupled"]:
                        new = p.mul(1 - lr * wd)
                    else:
                        g = g.add(p, alpha=wd)
                t = float(step)
                m = m.lerp(g, 1 - b1)
                v = v.mul(b2).addcmul_(g, g, value=1 - b2)
                bc1, bc2 = 1 - b1**t, 1 - b2**t
                denom = (v.sqrt() / math.sqrt(bc2)).add_(eps)
                size = lr / bc1
                if abs(size) <= torch.finfo(p.dtype).max:
                    new = new.addcdiv(m, denom, value=-size)
                else:  # value= cannot hold it: the saturating product overflows to inf instead
                    new = new - m * size / denom
                commits.append((p, new, {"step": step, "exp_avg": m, "exp_avg_sq": v}))
        if not all_finite([t for _, new, st in commits for t in (new, st["exp_avg_sq"])]):
            return Skip("non-finite update (overflow of the Adam step)")
        for p, new, st in commits:
            p.copy_(new)
            self.state[p].update(st)
        return Step()

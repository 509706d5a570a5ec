"""Adam (and AdamW-style decoupled weight decay)."""

from __future__ import annotations

import math

import torch

from curvlab.curvature.finite import all_finite
from curvlab.hparams import Entries, HParam, LogUniform, OneMinusLogUniform, Schema
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
    def _update(self, closure, evaluation: Evaluation) -> Step | Skip:
        commits = []  # (params, candidates, new states) per group and step count
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            by_step: dict[float, list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is not None:
                    t = float(self.state[p]["step"]) + 1 if self.state[p] else 1.0
                    by_step.setdefault(t, []).append(p)
            for t, ps in by_step.items():
                fresh = not self.state[ps[0]]
                gs = [p.grad for p in ps]
                ms = [torch.zeros_like(p) for p in ps] if fresh else [self.state[p]["exp_avg"] for p in ps]
                vs = [torch.zeros_like(p) for p in ps] if fresh else [self.state[p]["exp_avg_sq"] for p in ps]
                base = ps
                if wd != 0:
                    if group["decoupled"]:
                        base = torch._foreach_mul(ps, 1 - lr * wd)
                    else:
                        gs = torch._foreach_add(gs, ps, alpha=wd)
                m_new = torch._foreach_lerp(ms, gs, 1 - b1)
                v_new = torch._foreach_mul(vs, b2)
                torch._foreach_addcmul_(v_new, gs, gs, value=1 - b2)
                bc1, bc2 = 1 - b1**t, 1 - b2**t
                denom = torch._foreach_sqrt(v_new)
                torch._foreach_div_(denom, math.sqrt(bc2))
                torch._foreach_add_(denom, eps)
                size = lr / bc1
                if abs(size) <= torch.finfo(ps[0].dtype).max:
                    new = torch._foreach_addcdiv(base, m_new, denom, value=-size)
                else:  # value= cannot hold it: the saturating product overflows to inf instead
                    new = torch._foreach_sub(base, torch._foreach_div(torch._foreach_mul(m_new, size), denom))
                commits.append((ps, new, torch.tensor(t), m_new, v_new))
        if not all_finite([x for _, new, _, _, v in commits for x in (*new, *v)]):
            return Skip("non-finite update (overflow of the Adam step)")
        for ps, new, step, m_new, v_new in commits:
            torch._foreach_copy_(ps, new)
            for p, m, v in zip(ps, m_new, v_new):
                self.state[p].update(step=step.clone(), exp_avg=m, exp_avg_sq=v)
        return Step()

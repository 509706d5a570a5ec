"""RMSprop (Hinton's lecture 6e; torch's variant with momentum and centring)."""

from __future__ import annotations

import torch

from curvlab.curvature.finite import all_finite
from curvlab.hparams import HParam, LogUniform, OneMinusLogUniform, Schema
from curvlab.optimizer import CurvatureOptimizer, Evaluation, OptimizerMeta, Skip, Step

__all__ = ["RMSprop"]


class RMSprop(CurvatureOptimizer):
    r"""RMSprop, step for step identical to :class:`torch.optim.RMSprop`.

    With gradient :math:`g_t` and weight decay :math:`w`:
    :math:`d_t = g_t + w\theta_t`,
    :math:`v_t = \alpha v_{t-1} + (1-\alpha) d_t^2` (:math:`v_0 = 0`); centred:
    :math:`\bar g_t = \alpha \bar g_{t-1} + (1-\alpha) d_t` and
    :math:`\sigma_t = \sqrt{v_t - \bar g_t^2} + \epsilon`, else
    :math:`\sigma_t = \sqrt{v_t} + \epsilon`; with momentum :math:`\mu`:
    :math:`b_t = \mu b_{t-1} + d_t / \sigma_t`,
    :math:`\theta_{t+1} = \theta_t - \eta b_t`, without:
    :math:`\theta_{t+1} = \theta_t - \eta d_t / \sigma_t`. (No bias
    correction: that is Adam.) The new state and weights are computed out
    of place and committed only if all are finite. Sparse gradients are
    refused, as torch's RMSprop does.

    The K-BFGS paper's baseline (Goldfarb et al. 2020, Sec. 6): RMSprop
    with decay :math:`\alpha` and :math:`\epsilon` chosen with the learning
    rate; the search space below tunes ``lr`` and ``alpha``.

    Example:
        >>> import torch, curvlab
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = curvlab.create("rmsprop", model, lr=1e-3)
        >>> _ = opt.step(curvlab.closure(model, torch.nn.MSELoss(),
        ...                              torch.randn(5, 3), torch.randn(5, 1)))
    """

    name = "rmsprop"
    schema = Schema(
        [
            HParam("lr", float, 1e-2, "step size η", low=0.0, space=LogUniform(1e-4, 3e-2)),
            HParam("alpha", float, 0.99, "decay α of the squared-gradient average", low=0.0,
                   high=1.0, high_open=True, space=OneMinusLogUniform(1e-3, 0.1)),
            HParam("eps", float, 1e-8, "denominator guard ε", low=0.0, low_open=True),
            HParam("weight_decay", float, 0.0, "L2 coefficient w added to the gradient",
                   low=0.0),
            HParam("momentum", float, 0.0, "momentum μ of the scaled step", low=0.0, high=1.0,
                   high_open=True),
            HParam("centered", bool, False, "divide by the centred second moment"),
        ]
    )
    meta = OptimizerMeta(
        summary="RMSprop, first-order adaptive baseline",
        paper="Tieleman & Hinton, Lecture 6.5 - RMSprop, COURSERA: Neural Networks for "
        "Machine Learning, 2012",
        conformance={"lr": 1e-2},
        tags=("first-order", "baseline"),
    )

    @torch.no_grad()
    def _update(self, closure, evaluation: Evaluation) -> Step | Skip:
        commits = []  # (param, new value, new state) per parameter
        for group in self.param_groups:
            lr, alpha, eps = group["lr"], group["alpha"], group["eps"]
            wd, mom, centered = group["weight_decay"], group["momentum"], group["centered"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                d = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                v = state["square_avg"] if state else torch.zeros_like(p)
                v_new = v.mul(alpha).addcmul_(d, d, value=1 - alpha)
                new_state = {"step": torch.tensor(float(state["step"]) + 1 if state else 1.0),
                             "square_avg": v_new}
                if centered:
                    gbar = state["grad_avg"] if state else torch.zeros_like(p)
                    gbar_new = gbar.lerp(d, 1 - alpha)
                    denom = v_new.addcmul(gbar_new, gbar_new, value=-1).sqrt_().add_(eps)
                    new_state["grad_avg"] = gbar_new
                else:
                    denom = v_new.sqrt().add_(eps)
                if mom > 0:
                    buf = state["momentum_buffer"] if state else torch.zeros_like(p)
                    buf_new = buf.mul(mom).addcdiv_(d, denom)
                    new_state["momentum_buffer"] = buf_new
                    new = p.add(buf_new, alpha=-lr)
                else:
                    new = p.addcdiv(d, denom, value=-lr)
                commits.append((p, new, new_state))
        if not all_finite([t for _, new, s in commits for t in (new, s["square_avg"])]):
            return Skip("non-finite update (overflow of the RMSprop step)")
        for p, new, new_state in commits:
            p.copy_(new)
            self.state[p].update(new_state)
        return Step()

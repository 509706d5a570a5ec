r"""Sign-SGD with momentum (Signum) as a curvlab optimizer plugin.

With gradient :math:`g_t`, momentum :math:`\beta`, decoupled weight decay
:math:`w` and learning rate :math:`\alpha`:

.. math::

    m_t = \beta\, m_{t-1} + (1 - \beta)\, g_t, \qquad
    \theta_{t+1} = (1 - \alpha w)\, \theta_t - \alpha\, \operatorname{sign}(m_t),

with :math:`m_0 = 0`. With :math:`\beta = 0` this is signSGD: every weight
moves by exactly :math:`\alpha` against the sign of its gradient.

Reference: J. Bernstein, Y.-X. Wang, K. Azizzadenesheli and A. Anandkumar,
"signSGD: Compressed Optimisation for Non-Convex Problems", ICML 2018.
"""

from __future__ import annotations

import torch

from curvlab import CurvatureOptimizer, Evaluation, HParam, OptimizerMeta, Schema, Step
from curvlab.hparams import LogUniform

__all__ = ["SignSGD"]


class SignSGD(CurvatureOptimizer):
    r"""Sign of an exponential moving average of the gradient (see the module docstring).

    Example:
        >>> import torch, curvlab
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[1.0, -1.0]]))
        >>> opt = SignSGD(model, lr=0.5, momentum=0.0)
        >>> x, y = torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0]])
        >>> _ = opt.step(curvlab.closure(model, torch.nn.MSELoss(), x, y))
        >>> model.weight.tolist()  # gradient (-2, -2): each weight moves by +lr
        [[1.5, -0.5]]
    """

    name = "signsgd"
    schema = Schema(
        [
            HParam("lr", float, 1e-3, "step size α (every weight moves by α)", low=0.0,
                   space=LogUniform(1e-4, 1e-2)),
            HParam("momentum", float, 0.9, "EMA coefficient β of the gradient (0: signSGD)",
                   low=0.0, high=1.0, high_open=True),
            HParam("weight_decay", float, 0.0, "decoupled weight decay w", low=0.0),
        ]
    )
    meta = OptimizerMeta(
        summary="sign-SGD with momentum (Signum): the example third-party plugin",
        paper="Bernstein et al., signSGD: Compressed Optimisation for Non-Convex Problems, "
        "ICML 2018, arXiv:1802.04434",
        conformance={"lr": 0.05},
        tags=("first-order", "example"),
    )

    @torch.no_grad()
    def _update(self, closure, evaluation: Evaluation) -> Step:
        """One Signum step for every parameter with a gradient (frozen ones are skipped)."""
        for group in self.param_groups:
            lr, beta, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m = state["exp_avg"]
                m.mul_(beta).add_(p.grad, alpha=1 - beta)
                if wd != 0:
                    p.mul_(1 - lr * wd)
                p.add_(m.sign(), alpha=-lr)
        return Step()

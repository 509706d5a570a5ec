r"""FOOF: gradient descent on neurons (Benzing, ICML 2022) — K-FAC with :math:`G = I`.

FOOF asks, per layer, for the weight change whose effect on the
pre-activations :math:`z = W \tilde a` is closest to a gradient step on
:math:`z`; the answer preconditions only on the input side,

.. math::

    \Delta W = -\alpha\, \nabla W \,(\Sigma + \lambda I)^{-1}, \qquad
    \Sigma = \frac1N \sum_{n,t} \tilde a_{n,t} \tilde a_{n,t}^\top ,

with :math:`\tilde a = (a, 1)` (the bias is folded into :math:`W`) and,
for ``Conv2d``, :math:`a_{n,t}` the unfolded patches. The code is K-FAC's
(:class:`~curvlab.curvature.kronecker_preconditioner.KroneckerPreconditioner`)
fed with the single factor ``"A"`` = :math:`\Sigma` from forward hooks
(:class:`~curvlab.curvature.statistics.InputStatistics`): no BackPACK, no
backward statistics.

Schedule (:math:`t` counting committed steps): :math:`\Sigma` enters a
bias-corrected EMA (decay :math:`m`) in the ``stats_steps`` :math:`S`
steps up to and including each inversion (every step when ``None``); the
inverse :math:`(\Sigma + \lambda I)^{-1}` is recomputed every
``inverse_every`` :math:`T` steps (:math:`\lambda` optionally relative to
the mean eigenvalue :math:`\operatorname{tr}\Sigma/\dim\Sigma`). The step
then uses SGD momentum and weight decay (:mod:`curvlab.curvature.momentum`).

Defaults follow the paper's cheap schedule: :math:`T = 100` and
:math:`\Sigma` recorded only in the :math:`S = 10` steps up to each
inversion (the forward hooks are installed only for those passes), so 90 %
of the steps cost an SGD step plus one product
:math:`\nabla W (\Sigma+\lambda I)^{-1}` per layer (measurements of the
schedule and the command that regenerates them: ``docs/backends/foof.rst``).
A layer called several times per forward pass keeps the last call's statistics.

Scopes: ``lr``, ``damping``, ``momentum`` and ``weight_decay`` are per
param group; the schedule (``inverse_every``, ``stats_steps``), the EMA
and ``relative_damping`` are per optimizer.

Shapes: a ``Linear(d_in, d_out)`` layer with bias keeps
:math:`\Sigma \in \mathbb R^{(d_{in}+1) \times (d_{in}+1)}` (without bias, or
with a frozen one, :math:`d_{in} \times d_{in}`); a ``Conv2d`` one
:math:`(C_{in} k_h k_w + 1)^2`. Frozen parameters are never moved.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from curvlab.closure import call_closure
from curvlab.curvature.coverage import Coverage, layer_coverage
from curvlab.curvature.kl_clip import inner_products
from curvlab.curvature.kronecker import KroneckerBlock, split_matrix
from curvlab.curvature.kronecker_preconditioner import KroneckerPreconditioner
from curvlab.curvature.layers import conv_problem
from curvlab.curvature.momentum import momentum_step_
from curvlab.curvature.statistics import InputStatistics
from curvlab.hparams import OPTIMIZER, HParam, LogUniform, Schema
from curvlab.optimizer import CurvatureOptimizer, Evaluation, OptimizerMeta, Skip, Step

__all__ = ["FOOF", "foof_blocks", "records_statistics"]


def foof_blocks(layers: dict[str, nn.Module], coverage: Coverage) -> list[KroneckerBlock]:
    """One block per layer over its trainable ``(weight, bias)`` with the single factor ``A`` (:math:`G = I`).

    A frozen bias is left out of the block (no homogeneous coordinate); a
    layer with a frozen weight and a trainable bias is refused.

    Args:
        layers: ``{name: Linear/Conv2d}``.
        coverage: Which parameters the optimizer trains.

    Raises:
        ValueError: a layer's bias is trainable but its weight is not.

    Example:
        >>> import torch
        >>> from curvlab.curvature.coverage import layer_coverage
        >>> lin = nn.Linear(2, 3)
        >>> opt = torch.optim.SGD([lin.weight], lr=0.1)
        >>> cov = layer_coverage(nn.Sequential(lin), opt.param_groups, (nn.Linear,), who="foof")
        >>> [(b.name, len(b.params), b.factors) for b in foof_blocks(cov.layers, cov)]
        [('0', 1, ('A',))]
    """
    blocks = []
    for name, layer in layers.items():
        if not coverage.trainable(layer.weight):
            raise ValueError(
                f"foof preconditions a layer's weight and bias together; model.{name} has a "
                "trainable bias but a frozen weight (freeze both, or neither)"
            )
        params = [layer.weight]
        if coverage.trainable(layer.bias):
            params.append(layer.bias)
        blocks.append(KroneckerBlock(name, tuple(params), ("A",)))
    return blocks


def records_statistics(step: int, inverse_every: int, stats_steps: int | None) -> bool:
    r"""Whether step ``t`` updates :math:`\Sigma`: one of the ``S`` steps up to an inversion.

    True iff ``S`` is ``None`` or :math:`(-t \bmod T) < S`.

    Example:
        >>> [t for t in range(12) if records_statistics(t, 5, 2)]
        [0, 4, 5, 9, 10]
    """
    return stats_steps is None or (-step) % inverse_every < stats_steps


class FOOF(CurvatureOptimizer):
    """FOOF, "gradient descent on neurons" (see the module docstring).

    Example:
        >>> import torch, curvlab
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> x, t = torch.tensor([[3.0, 1.0], [1.0, 0.0]]), torch.tensor([[1.0], [-1.0]])
        >>> half_mse = lambda out, y: 0.5 * ((out - y) ** 2).mean()  # Σ is a mean too
        >>> with torch.no_grad():
        ...     _ = model.weight.zero_()
        >>> opt = curvlab.create("foof", model, half_mse, lr=1.0, damping=1e-9, momentum=0.0)
        >>> _ = opt.step(curvlab.closure(model, half_mse, x, t))
        >>> model.weight.data.round(decimals=4)  # the closed form w = (-1, 4)
        tensor([[-1.,  4.]])
    """

    name = "foof"
    schema = Schema(
        [
            HParam("lr", float, 0.01, "step size α", low=0.0, space=LogUniform(1e-3, 1.0)),
            HParam("damping", float, 0.1, "Tikhonov damping λ added to Σ", low=0.0,
                   low_open=True, space=LogUniform(1e-3, 1.0)),
            HParam("relative_damping", bool, False,
                   "λ relative to the mean eigenvalue tr Σ / dim Σ", scope=OPTIMIZER),
            HParam("ema_decay", float, 0.95, "decay m of the bias-corrected EMA of Σ", low=0.0,
                   high=1.0, high_open=True, scope=OPTIMIZER),
            HParam("inverse_every", int, 100, "recompute (Σ + λI)⁻¹ every T steps (paper: 100)",
                   low=1, scope=OPTIMIZER),
            HParam("stats_steps", int, 10,
                   "update Σ only in the S steps up to each inversion (None: every step)",
                   low=1, optional=True, scope=OPTIMIZER),
            HParam("momentum", float, 0.9, "heavy-ball coefficient μ", low=0.0, high=1.0,
                   high_open=True),
            HParam("weight_decay", float, 0.0, "L2 coefficient added after preconditioning",
                   low=0.0),
        ]
    )
    meta = OptimizerMeta(
        summary="FOOF: gradient descent on neurons, input-side (K-FAC with G = I) preconditioner",
        paper=(
            "Benzing, Gradient Descent on Neurons and its Link to Approximate Second-Order "
            "Optimization, ICML 2022 (arXiv 2201.12250)"
        ),
        layers=("Linear", "Conv2d (groups=1)"),
        losses=("any",),
        requires_closure=True,
        conformance={"lr": 0.1, "inverse_every": 5},
        tags=("second-order", "kronecker", "hooks"),
    )

    def _setup(self) -> None:
        model = self.require_model()
        self.coverage = layer_coverage(model, self.param_groups, (nn.Linear, nn.Conv2d),
                                       who=self.name, check=conv_problem)
        self.blocks = foof_blocks(self.coverage.layers, self.coverage)
        self.preconditioner = KroneckerPreconditioner(
            self.blocks, relative_damping=self.optimizer_hparams["relative_damping"]
        )
        self.recorder = InputStatistics(
            {b.name: self.coverage.layers[b.name] for b in self.blocks},
            homogeneous={b.name: len(b.params) == 2 for b in self.blocks},
        )
        self.curv_state.update({"step": 0, "blocks": {}})

    def _evaluate(self, closure: Callable[..., Tensor]) -> Evaluation[dict[str, dict[str, Tensor]]]:
        hp = self.optimizer_hparams
        self.recorder.covariances = {}
        self.recorder.recording = records_statistics(
            self.curv_state["step"], hp["inverse_every"], hp["stats_steps"]
        )
        try:
            loss = call_closure(closure, who=self.name)
        finally:
            self.recorder.recording = False
        estimates = {k: {"A": v} for k, v in self.recorder.covariances.items()}
        self.recorder.covariances = {}
        return Evaluation(loss, estimates)

    @torch.no_grad()
    def _update(self, closure, evaluation: Evaluation[dict[str, dict[str, Tensor]]]) -> Step | Skip:
        self.coverage.check_gradients(self.name)
        hp = self.optimizer_hparams
        estimates = evaluation.data or {}
        blocks = self.curv_state["blocks"]
        step = self.curv_state["step"]
        if estimates:
            new = self.preconditioner.accumulate(blocks, estimates, hp["ema_decay"])
            if new is None:
                return Skip("non-finite input statistics")
            blocks = {**blocks, **new}
        active = [b for b in self.blocks if all(p.grad is not None for p in b.params)]
        missing = [b.name for b in active if b.name not in blocks]
        if missing:
            raise ValueError(
                f"{self.name}: no input statistics for layer(s) {missing}; the closure must run "
                "the model's forward pass with autograd enabled"
            )
        if step % hp["inverse_every"] == 0 or any("A_inv" not in blocks[b.name] for b in active):
            damping = {b.name: self.coverage.group(b.params[0])["damping"] for b in self.blocks}
            inv = self.preconditioner.invert(blocks, damping)
            if inv is None:
                return Skip("damped inverse failed or is not finite")
            blocks = {**blocks, **inv}
        mats = [self.preconditioner.matrices(blocks, b) for b in active]
        # one sync: a non-finite V makes its inner product with the (finite) gradient non-finite
        if not all(map(math.isfinite, inner_products([V for _, V in mats], [M for M, _ in mats]))):
            return Skip("non-finite preconditioned gradient")
        directions = {
            p: v for b, (_, V) in zip(active, mats)
            for p, v in zip(b.params, split_matrix(V, b.params))
        }
        if not momentum_step_(self, directions):
            return Skip("non-finite update (overflow of lr · direction)")
        self.curv_state["blocks"] = blocks
        self.curv_state["step"] = step + 1
        return Step()

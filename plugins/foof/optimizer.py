r"""FOOF: gradient descent on neurons (Benzing, ICML 2022) — K-FAC with :math:`G = I`.

FOOF asks, per layer, for the weight change whose effect on the
pre-activations :math:`z = W \tilde a` is closest to a gradient step on
:math:`z`; the answer preconditions only on the input side,

.. math::

    \Delta W = -\alpha\, \nabla W \,(\Sigma + \lambda I)^{-1},

with :math:`\tilde a = (a, 1)` (the bias is folded into :math:`W`) and
:math:`\Sigma` the input-side Kronecker factor :math:`A` of K-FAC in the
convention of :mod:`curvlab.curvature.layer_factors` (weight-sharing
positions by ``kfac_approx``: *expand*
:math:`\Sigma = \frac1{NR}\sum_{n,r}\tilde a_{n,r}\tilde a_{n,r}^\top`, the
unfolded patches for ``Conv2d``, the tokens of a sequence). The same rule
for the other block types: ``Embedding`` :math:`\Delta W = -\alpha
(\operatorname{diag}(\text{token frequencies}) + \lambda I)^{-1}\nabla W`;
affine norm layers, whose unit :math:`i` is a ``Linear(1, 1)`` on
:math:`(\hat x_i, 1)`, the 2×2 input moments per unit
(:mod:`curvlab.curvature.unit_blocks`). The code is K-FAC's
(:class:`~curvlab.curvature.kronecker_preconditioner.KroneckerPreconditioner`)
fed with the single factor ``"A"`` (``"U"``) from the factor engine's
forward hooks (``need_G=False``): no backward statistics, any loss.

Schedule (:math:`t` counting committed steps): :math:`\Sigma` enters a
bias-corrected EMA (decay :math:`m`) in the ``stats_steps`` :math:`S`
steps up to and including each inversion (every step when ``None``); the
inverse :math:`(\Sigma + \lambda I)^{-1}` is recomputed every
``inverse_every`` :math:`T` steps (:math:`\lambda` optionally relative to
the mean eigenvalue :math:`\operatorname{tr}\Sigma/\dim\Sigma`). The step
then uses SGD momentum and weight decay (:mod:`curvlab.curvature.momentum`);
parameters no block covers get the declared ``fallback``
(:mod:`curvlab.curvature.fallback`) in the same step. The forward hooks are
installed only for the :math:`S` recording passes, so the other steps cost
an SGD step plus one product per layer.

Training loops: ``step(closure)`` (any closure, also PyTorch Lightning's,
which takes no keywords) or the plain loop ``loss.backward(); opt.step()``
(:mod:`curvlab.curvature.plain_loop`): while no closure is given, the
forward hooks stay on the model for the recording steps and :math:`\Sigma`
comes from the user's own forward passes, the gradients from the user's
backward. Both loops give the same steps (``tests/backends/test_plain_loop.py``).

Scopes: ``lr``, ``damping``, ``momentum``, ``weight_decay`` and the
fallback's step hyper-parameters are per param group; the schedule, the
EMA, ``relative_damping``, ``kfac_approx`` and ``fallback`` are per
optimizer. Shapes: a ``Linear(d_in, d_out)`` with a trained bias keeps
:math:`\Sigma \in \mathbb R^{(d_{in}+1) \times (d_{in}+1)}`; a ``Conv2d``
:math:`(C_{in} k_h k_w + 1)^2`; ``Embedding(V, D)`` :math:`(V,)` (expand);
a norm layer ``(U, 2, 2)``. Measurements of the schedule and of the
defaults: ``docs/backends/foof.rst``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from curvlab.closure import call_closure
from curvlab.curvature.block_plan import KFAC_APPROX
from curvlab.curvature.coverage import parameter_coverage
from curvlab.curvature.coverage_table import CoverageTable
from curvlab.curvature.descent import descend_all_
from curvlab.curvature.factor_blocks import capture_estimates, plan_blocks_for
from curvlab.curvature.factor_engine import describe_engine, make_engine
from curvlab.curvature.fallback import Fallback, fallback_hparams
from curvlab.curvature.kl_clip import inner_products
from curvlab.curvature.kronecker import split_matrix
from curvlab.curvature.kronecker_preconditioner import KroneckerPreconditioner
from curvlab.curvature.momentum import momentum_plan
from curvlab.curvature.plain_loop import PlainLoopCapture
from curvlab.hparams import OPTIMIZER, HParam, LogUniform, Schema
from curvlab.optimizer import CurvatureOptimizer, Evaluation, OptimizerMeta, Skip, Step

__all__ = ["FOOF", "records_statistics"]


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
            HParam("kfac_approx", str, "expand",
                   "weight sharing (sequences, Conv2d): positions as samples or aggregated",
                   choices=KFAC_APPROX, scope=OPTIMIZER),
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
            *fallback_hparams(),
        ]
    )
    meta = OptimizerMeta(
        summary="FOOF: gradient descent on neurons, input-side (K-FAC with G = I) preconditioner",
        paper=(
            "Benzing, Gradient Descent on Neurons and its Link to Approximate Second-Order "
            "Optimization, ICML 2022 (arXiv 2201.12250)"
        ),
        layers=("Linear (any input rank)", "Conv2d (groups=1)", "Embedding",
                "LayerNorm/RMSNorm/BatchNorm (unit-wise)", "other parameters: fallback"),
        losses=("any",),
        loop_notes=(
            "plain loop: the layer inputs come from forward hooks kept on the model while no "
            "closure is given (for the steps that record statistics only), the gradients from "
            "your own loss.backward(); any loss"
        ),
        conformance={"lr": 0.1, "inverse_every": 5},
        tags=("second-order", "kronecker", "hooks"),
    )

    def _setup(self) -> None:
        model = self.require_model()
        hp = self.optimizer_hparams
        trainable = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        self.engine = make_engine(model, None, kfac_approx=hp["kfac_approx"],
                                  bias_layout="homogeneous", trainable=trainable, seed=0,
                                  who=self.name)
        self.fallback = Fallback(self, self.engine.coverage(hp["kfac_approx"]))
        self.params_map = parameter_coverage(model, self.param_groups)
        self.blocks = plan_blocks_for(self.engine.plan, need_G=False)
        self.preconditioner = KroneckerPreconditioner(self.blocks,
                                                      relative_damping=hp["relative_damping"])
        self.curv_state.update({"step": 0, "blocks": {}})
        self.plain = PlainLoopCapture(self.engine, who=self.name, owner=self)
        self._arm()

    def _arm(self) -> None:
        """Hook the user's next forward if the next step records Σ (plain loop)."""
        hp = self.optimizer_hparams
        if records_statistics(self.curv_state["step"], hp["inverse_every"], hp["stats_steps"]):
            self.plain.arm(kfac_approx=hp["kfac_approx"], need_G=False)

    def step(self, closure: Callable[..., Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """One FOOF step: with a closure or in the plain loop (Σ from the forward passes since the last step)."""
        if closure is not None:
            self.plain.disarm()
        try:
            return super().step(closure)
        finally:
            if closure is None:
                self._arm()

    def _after_load(self) -> None:
        self.plain.disarm()
        self._arm()

    def _evaluate_plain(self) -> Evaluation[dict[str, dict[str, Tensor]]]:
        """Σ of the forward passes run since the previous step (plain loop)."""
        collected = self.plain.collect()
        if collected is None:
            return Evaluation(None)
        cap, _ = collected
        return Evaluation(None, capture_estimates(self.engine.plan, cap.factors, need_G=False))

    def coverage(self) -> CoverageTable:
        """Every parameter's block kind or fallback (see :mod:`curvlab.curvature.coverage_table`)."""
        return CoverageTable(self.fallback.table, describe_engine(self.engine) + " (forward only)")

    def _evaluate(self, closure: Callable[..., Tensor]) -> Evaluation[dict[str, dict[str, Tensor]]]:
        hp = self.optimizer_hparams
        if not records_statistics(self.curv_state["step"], hp["inverse_every"], hp["stats_steps"]):
            return Evaluation(call_closure(closure, who=self.name))
        loss, cap = self.engine.run(lambda: call_closure(closure, who=self.name),
                                    kfac_approx=hp["kfac_approx"], need_G=False)
        return Evaluation(loss, capture_estimates(self.engine.plan, cap.factors, need_G=False))

    @torch.no_grad()
    def _update(self, closure, evaluation: Evaluation[dict[str, dict[str, Tensor]]]) -> Step | Skip:
        self.params_map.check_gradients(self.name)
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
                f"{self.name}: no input statistics for layer(s) {missing}; the closure (or, in "
                "the plain loop, your code before step()) must run the model's forward pass with "
                "autograd enabled"
            )
        if step % hp["inverse_every"] == 0 or any(b.factors[0] + "_inv" not in blocks[b.name]
                                                  for b in active):
            damping = {b.name: self.params_map.group(b.params[0])["damping"] for b in self.blocks}
            inv = self.preconditioner.invert(blocks, damping)
            if inv is None:
                return Skip("damped inverse failed or is not finite")
            blocks = {**blocks, **inv}
        mats = [self.preconditioner.matrices(blocks, b) for b in active]
        # one sync: a non-finite V makes its inner product with the (finite) gradient non-finite
        if not all(map(math.isfinite, inner_products([V for _, V in mats], [M for M, _ in mats]))):
            return Skip("non-finite preconditioned gradient")
        directions = {p: v for b, (_, V) in zip(active, mats)
                      for p, v in zip(b.params, split_matrix(V, b.params, b.view))}
        main = momentum_plan(self, directions, params=list(directions))
        if not descend_all_([main, self.fallback.plan()]):
            return Skip("non-finite update (overflow of lr · direction)")
        self.curv_state["blocks"] = blocks
        self.curv_state["step"] = step + 1
        return Step()

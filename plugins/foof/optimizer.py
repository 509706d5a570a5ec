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
:math:`\nabla W (\Sigma+\lambda I)^{-1}` per layer. Measured on digits
(batch 128, 1 thread; training loss of the digits MLP, lr 0.1, T = 100,
SGD-momentum 0.021 after 150 steps): S = None (every step) 0.0007, S = 5
0.0015, S = 10 0.0021 — all alike by step 200 (≈ 6e-5); step time vs SGD
about 2.9× (MLP) / 1.4× (CNN) with S = None, 1.55× / 1.1–1.2× with S = 10.
A layer called several times per forward pass keeps the last call's statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from curvlab.closure import call_closure
from curvlab.curvature.kl_clip import inner_products
from curvlab.curvature.kronecker import KroneckerBlock, split_matrix
from curvlab.curvature.kronecker_preconditioner import KroneckerPreconditioner
from curvlab.curvature.layers import find_layers
from curvlab.curvature.momentum import momentum_step_
from curvlab.curvature.statistics import InputStatistics
from curvlab.hparams import HParam, LogUniform, Schema
from curvlab.optimizer import CurvatureOptimizer, OptimizerMeta

__all__ = ["FOOF", "foof_blocks", "records_statistics"]


def foof_blocks(layers: dict[str, nn.Module], trainable: set[int]) -> list[KroneckerBlock]:
    """One block per layer over ``(weight, bias)`` with the single factor ``A`` (:math:`G = I`).

    Args:
        layers: ``{name: Linear/Conv2d}``.
        trainable: ``id`` of the parameters the optimizer updates (others are left out).

    Example:
        >>> lin = nn.Linear(2, 3)
        >>> [(b.name, len(b.params), b.factors) for b in foof_blocks({"0": lin}, {id(lin.weight)})]
        [('0', 1, ('A',))]
    """
    blocks = []
    for name, layer in layers.items():
        if id(layer.weight) not in trainable:
            continue
        params = [layer.weight]
        if layer.bias is not None and id(layer.bias) in trainable:
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
                   "λ relative to the mean eigenvalue tr Σ / dim Σ"),
            HParam("ema_decay", float, 0.95, "decay m of the bias-corrected EMA of Σ", low=0.0,
                   high=1.0, high_open=True),
            HParam("inverse_every", int, 100, "recompute (Σ + λI)⁻¹ every T steps (paper: 100)",
                   low=1),
            HParam("stats_steps", int, 10,
                   "update Σ only in the S steps up to each inversion (None: every step)",
                   low=1, optional=True),
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

        def conv_check(name: str, module: nn.Module) -> str | None:
            if isinstance(module, nn.Conv2d) and (
                module.groups != 1 or module.padding_mode != "zeros"
                or isinstance(module.padding, str)
            ):
                return "Conv2d must have groups=1, numeric padding and padding_mode='zeros'"
            return None

        layers = find_layers(model, (nn.Linear, nn.Conv2d), who=self.name, check=conv_check)
        trainable = {id(p) for g in self.param_groups for p in g["params"]}
        self.blocks = foof_blocks(layers, trainable)
        covered = {id(p) for b in self.blocks for p in b.params}
        if trainable - covered:
            raise ValueError(
                f"{self.name}: {len(trainable - covered)} parameter(s) given to the optimizer are "
                "not the weight/bias of a Linear or Conv2d layer of the model"
            )
        self._group_of = {id(p): g for g in self.param_groups for p in g["params"]}
        self.preconditioner = KroneckerPreconditioner(
            self.blocks, relative_damping=self.defaults["relative_damping"]
        )
        self.recorder = InputStatistics(
            {b.name: layers[b.name] for b in self.blocks},
            homogeneous={b.name: len(b.params) == 2 for b in self.blocks},
        )
        self.curv_state.update({"step": 0, "blocks": {}})
        self._pending: dict[str, Any] | None = None

    def _after_load(self) -> None:
        self._pending = None

    def _evaluate(self, closure: Callable[..., Tensor]) -> Tensor:
        d = self.defaults
        self.recorder.covariances = {}
        self.recorder.recording = records_statistics(
            self.curv_state["step"], d["inverse_every"], d["stats_steps"]
        )
        try:
            loss = call_closure(closure, who=self.name)
        finally:
            self.recorder.recording = False
        self._pending = {k: {"A": v} for k, v in self.recorder.covariances.items()}
        self.recorder.covariances = {}
        return loss

    @torch.no_grad()
    def _update(self, closure, loss) -> None:
        estimates, self._pending = self._pending or {}, None
        blocks = self.curv_state["blocks"]
        step = self.curv_state["step"]
        if estimates:
            new = self.preconditioner.accumulate(blocks, estimates, self.defaults["ema_decay"])
            if new is None:
                self.skip_step("non-finite input statistics")
                return
            blocks = {**blocks, **new}
        missing = [b.name for b in self.blocks if b.name not in blocks]
        if missing:
            raise ValueError(
                f"{self.name}: no input statistics for layer(s) {missing}; the closure must run "
                "the model's forward pass with autograd enabled"
            )
        if step % self.defaults["inverse_every"] == 0 or any(
            "A_inv" not in blocks[b.name] for b in self.blocks
        ):
            damping = {b.name: self._group_of[id(b.params[0])]["damping"] for b in self.blocks}
            inv = self.preconditioner.invert(blocks, damping)
            if inv is None:
                self.skip_step("damped inverse failed or is not finite")
                return
            blocks = {**blocks, **inv}
        mats = [self.preconditioner.matrices(blocks, b) for b in self.blocks]
        # one sync: a non-finite V makes its inner product with the (finite) gradient non-finite
        if not all(map(math.isfinite, inner_products([V for _, V in mats], [M for M, _ in mats]))):
            self.skip_step("non-finite preconditioned gradient")
            return
        directions = {
            p: v for b, (_, V) in zip(self.blocks, mats)
            for p, v in zip(b.params, split_matrix(V, b.params))
        }
        self.curv_state["blocks"] = blocks
        self.curv_state["step"] = step + 1
        momentum_step_(self, directions)

r"""K-FAC with Kronecker factors from BackPACK (``KFAC``: Monte-Carlo Fisher, ``KFLR``: exact GGN).

Algorithm (one ``step(closure)``, :math:`t` counting committed steps):

1. if :math:`t \bmod T_f = 0`: run the closure inside ``with backpack(ext)``;
   BackPACK leaves ``weight.kfac = [G, A]`` and ``bias.kfac = [G]`` (``kflr``
   for the exact GGN) and the factors enter bias-corrected EMAs
   (:mod:`curvlab.curvature.ema`); otherwise a plain closure call;
2. if :math:`t \bmod T_i = 0`: damped inverses
   :math:`(G+\lambda_G I)^{-1}, (A+\lambda_A I)^{-1}` with
   :math:`\lambda_A\lambda_G = \lambda` split by the π-heuristic or equally
   (:mod:`curvlab.curvature.tikhonov`); a bias block :math:`G \otimes 1`
   gets :math:`(G+\lambda I)^{-1}`;
3. directions :math:`V = (G+\lambda_G I)^{-1} \nabla W (A+\lambda_A I)^{-1}`
   (:mod:`curvlab.curvature.kronecker_preconditioner`), optionally scaled by
   KL-clipping :math:`\nu = \min(1, \sqrt{\kappa / \sum_l \alpha^2 \langle V_l, \nabla W_l\rangle})`;
4. SGD with momentum and weight decay on the directions (:mod:`curvlab.curvature.momentum`).

NaN guard: new factors and inverses are checked before they are committed;
a non-finite one skips the step (nothing changes). The directions are
checked through the inner products :math:`\langle V_l, \nabla W_l\rangle`
that KL-clipping needs anyway (one device sync per step), and the weight
update through :func:`~curvlab.curvature.descent.descend_`. Monte-Carlo
targets are drawn from a private RNG state kept in ``curv_state`` (resume
is bitwise). Frozen parameters (``requires_grad=False`` at construction,
or without a gradient at a step) get no block and are never moved.

BackPACK's hooks are installed on the model and the loss module only for
the closure call of a factor step (:mod:`curvlab_plugins.kfac.hooks`); the
closure must use exactly these two objects. Other steps run the plain
model: a step between factor/inverse updates costs an SGD step plus two
small matrix products per layer.

Schedule defaults :math:`T_f = 5`, :math:`T_i = 50` (those of common
PyTorch K-FAC code; the measured trade-off of other schedules, and the
command that regenerates it, is in ``docs/backends/kfac.rst``).

Scopes: ``lr``, ``damping``, ``momentum`` and ``weight_decay`` are per
param group; the schedule (``factor_every``, ``inverse_every``), the EMA,
KL-clipping and the factor type (``fisher_type``, ``mc_samples``,
``damping_heuristic``) are per optimizer.

Shapes: a ``Linear(d_in, d_out)`` weight block keeps :math:`A` of shape
``(d_in, d_in)`` (BackPACK's layout: the bias is a separate block) and
:math:`G` of shape ``(d_out, d_out)``; a ``Conv2d`` weight block
:math:`A \in \mathbb R^{C_{in} k_h k_w \times C_{in} k_h k_w}`,
:math:`G \in \mathbb R^{C_{out} \times C_{out}}`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from backpack import backpack
from backpack.extensions import KFAC as BackpackKFAC
from backpack.extensions import KFLR
from backpack.extensions.secondorder.hbp.losses import (
    HBPCrossEntropyLoss,
    HBPMSELoss,
)
from torch import Tensor, nn

from curvlab.closure import call_closure
from curvlab.curvature.coverage import Coverage, layer_coverage
from curvlab.curvature.kl_clip import inner_products, kl_clip_scale
from curvlab.curvature.kronecker import KroneckerBlock
from curvlab.curvature.kronecker_preconditioner import KroneckerPreconditioner
from curvlab.curvature.layers import conv_problem
from curvlab.curvature.momentum import momentum_step_
from curvlab.curvature.rng import derive_seed
from curvlab.hparams import OPTIMIZER, HParam, LogUniform, Schema
from curvlab.optimizer import CurvatureOptimizer, Evaluation, OptimizerMeta, Skip, Step
from curvlab_plugins.kfac.backpack_bce import HBPSoftBCEWithLogitsLoss
from curvlab_plugins.kfac.hooks import BackpackHooks
from curvlab_plugins.kfac.seeded import SeededLossExtension
from curvlab_plugins.kfac.support import LAYERS, check_loss, check_model

__all__ = ["KFAC", "FactorEstimates", "kfac_blocks"]

_HOOK_WARNING = "Full backward hook is firing when gradients are computed with respect to module outputs"


def kfac_blocks(layers: dict[str, nn.Module], coverage: Coverage | None = None) -> list[KroneckerBlock]:
    """K-FAC's blocks in BackPACK's layout: ``name.weight`` (:math:`G ⊗ A`), ``name.bias`` (:math:`G`).

    Args:
        layers: ``{name: Linear/Conv2d}``.
        coverage: Only parameters it marks trainable get a block (default:
            those with ``requires_grad``).

    Example:
        >>> [(b.name, b.factors) for b in kfac_blocks({"0": nn.Linear(2, 3)})]
        [('0.weight', ('G', 'A')), ('0.bias', ('G',))]
    """
    def trainable(p: Tensor | None) -> bool:
        if coverage is not None:
            return coverage.trainable(p)
        return p is not None and p.requires_grad

    blocks = []
    for name, layer in layers.items():
        if trainable(layer.weight):
            blocks.append(KroneckerBlock(f"{name}.weight", (layer.weight,), ("G", "A")))
        if trainable(layer.bias):
            blocks.append(KroneckerBlock(f"{name}.bias", (layer.bias,), ("G",)))
    return blocks


@dataclass(frozen=True)
class FactorEstimates:
    """What a factor step's evaluation hands to the update.

    Attributes:
        estimates: ``{block: {"G": ..., "A": ...}}`` from BackPACK for this batch.
        rng: The Monte-Carlo sampler's advanced private RNG state.
    """

    estimates: dict[str, dict[str, Tensor]]
    rng: Any


class KFAC(CurvatureOptimizer):
    """K-FAC (Martens & Grosse 2015; Grosse & Martens 2016) with BackPACK's factors.

    See the module docstring for the algorithm. Supported: ``nn.Sequential``
    models of ``Linear``/``Conv2d`` layers and BackPACK's parameter-free
    modules; ``MSELoss``, ``CrossEntropyLoss``, ``BCEWithLogitsLoss`` (soft
    targets, many outputs); anything else raises :class:`ValueError` at
    construction (:mod:`curvlab_plugins.kfac.support`).

    Example:
        >>> import torch, curvlab
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3))
        >>> loss_fn = torch.nn.CrossEntropyLoss()
        >>> opt = curvlab.create("kfac", model, loss_fn, lr=0.1)
        >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        >>> losses = [float(opt.step(curvlab.closure(model, loss_fn, x, y)).detach()) for _ in range(5)]
        >>> losses[-1] < losses[0]
        True
        >>> sorted(opt.curv_state["blocks"])
        ['0.bias', '0.weight']
    """

    name = "kfac"
    schema = Schema(
        [
            HParam("lr", float, 0.01, "step size α", low=0.0, space=LogUniform(1e-3, 1.0)),
            HParam("damping", float, 0.03, "Tikhonov damping λ of the Kronecker blocks", low=0.0,
                   low_open=True, space=LogUniform(1e-3, 1.0)),
            HParam("damping_heuristic", str, "pi", "split of λ between A and G",
                   choices=("pi", "equal"), scope=OPTIMIZER),
            HParam("fisher_type", str, "mc",
                   "'mc': BackPACK KFAC (sampled Fisher); 'exact': BackPACK KFLR (exact GGN)",
                   choices=("mc", "exact"), scope=OPTIMIZER),
            HParam("mc_samples", int, 1, "Monte-Carlo samples per input (fisher_type='mc')",
                   low=1, scope=OPTIMIZER),
            HParam("ema_decay", float, 0.95, "decay of the bias-corrected factor EMAs", low=0.0,
                   high=1.0, high_open=True, scope=OPTIMIZER),
            HParam("factor_every", int, 5, "update the factors every T_f steps", low=1,
                   scope=OPTIMIZER),
            HParam("inverse_every", int, 50, "recompute the damped inverses every T_i steps",
                   low=1, scope=OPTIMIZER),
            HParam("momentum", float, 0.9, "heavy-ball coefficient μ", low=0.0, high=1.0,
                   high_open=True),
            HParam("weight_decay", float, 1e-5, "L2 coefficient added after preconditioning",
                   low=0.0),
            HParam("kl_clip", float, 1e-3, "KL-clipping bound κ (None: off)", low=0.0,
                   low_open=True, optional=True, scope=OPTIMIZER),
        ]
    )
    meta = OptimizerMeta(
        summary="K-FAC: Kronecker-factored Fisher/GGN preconditioner, factors from BackPACK",
        paper=(
            "Martens & Grosse, Optimizing Neural Networks with Kronecker-factored Approximate "
            "Curvature, ICML 2015 (arXiv 1503.05671); Grosse & Martens, ICML 2016 (conv); "
            "Dangel, Kunstner & Hennig, BackPACK, ICLR 2020"
        ),
        layers=("Linear", "Conv2d (groups=1)"),
        losses=("MSELoss", "CrossEntropyLoss", "BCEWithLogitsLoss"),
        requires_closure=True,
        needs_loss_fn=True,
        conformance={"lr": 0.1, "damping": 0.01},
        tags=("second-order", "kronecker", "backpack"),
    )

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        model = self.require_model()
        check_loss(self.loss_fn, self.name)
        check_model(model, self.name)
        self.coverage = layer_coverage(model, self.param_groups, LAYERS, who=self.name,
                                       check=conv_problem)
        self.hooks = BackpackHooks(model, self.loss_fn)
        hp = self.optimizer_hparams
        self.blocks = kfac_blocks(self.coverage.layers, self.coverage)
        self.preconditioner = KroneckerPreconditioner(self.blocks, heuristic=hp["damping_heuristic"])
        if hp["fisher_type"] == "mc":
            self.extension = BackpackKFAC(mc_samples=hp["mc_samples"])
        else:
            self.extension = KFLR()
        inner = {
            nn.MSELoss: HBPMSELoss(),
            nn.CrossEntropyLoss: HBPCrossEntropyLoss(),
            nn.BCEWithLogitsLoss: HBPSoftBCEWithLogitsLoss(),
        }[type(self.loss_fn)]
        seed = derive_seed()
        self.sampler = SeededLossExtension(inner, seed)
        self.extension.set_module_extension(type(self.loss_fn), self.sampler, overwrite=True)
        self.curv_state.update({"step": 0, "seed": seed, "rng": None, "blocks": {}})

    # --------------------------------------------------------------- closure
    def _evaluate(self, closure: Callable[..., Tensor]) -> Evaluation[FactorEstimates]:
        if self.curv_state["step"] % self.optimizer_hparams["factor_every"] != 0:
            return Evaluation(call_closure(closure, who=self.name))
        self.sampler.state = self.curv_state["rng"]
        self.sampler.seed = self.curv_state["seed"]
        savefield = self.extension.savefield
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_HOOK_WARNING)
                with self.hooks, backpack(self.extension):
                    loss = call_closure(closure, who=self.name)
        except (AssertionError, NotImplementedError) as err:
            raise ValueError(
                f"{self.name}: BackPACK could not compute the factors ({err}); the closure must "
                "evaluate the model and the loss_fn given at construction"
            ) from err
        estimates: dict[str, dict[str, Tensor]] = {}
        for block in self.blocks:
            p = block.params[0]
            factors = getattr(p, savefield, None)
            if factors is None:
                continue
            delattr(p, savefield)
            # BackPACK's layout is [G, A] (weight) / [G] (bias); keep what the block declares
            estimates[block.name] = {
                k: f for k, f in zip(("G", "A"), factors) if k in block.factors
            }
        return Evaluation(loss, FactorEstimates(estimates, self.sampler.state))

    # ----------------------------------------------------------------- update
    @torch.no_grad()
    def _update(self, closure, evaluation: Evaluation[FactorEstimates]) -> Step | Skip:
        self.coverage.check_gradients(self.name)
        hp = self.optimizer_hparams
        factors = evaluation.data
        blocks = self.curv_state["blocks"]
        step = self.curv_state["step"]
        if factors is not None and factors.estimates:
            new = self.preconditioner.accumulate(blocks, factors.estimates, hp["ema_decay"])
            if new is None:
                return Skip("non-finite Kronecker factors")
            blocks = {**blocks, **new}
        active = [b for b in self.blocks if b.params[0].grad is not None]
        missing = [b.name for b in active if b.name not in blocks]
        if missing:
            return Skip(f"no Kronecker factors yet for {', '.join(missing)} (the first step "
                        "must compute them)")
        if step % hp["inverse_every"] == 0 or any(
            b.factors[0] + "_inv" not in blocks[b.name] for b in active
        ):
            damping = {b.name: self.coverage.group(b.params[0])["damping"] for b in self.blocks}
            inv = self.preconditioner.invert(blocks, damping)
            if inv is None:
                return Skip("damped inverse failed or is not finite")
            blocks = {**blocks, **inv}
        directions = [self.preconditioner.directions(blocks, b)[0] for b in active]
        lrs = [self.coverage.group(b.params[0])["lr"] for b in active]
        dots = inner_products(directions, [b.params[0].grad for b in active])
        vg = sum(lr * lr * x for lr, x in zip(lrs, dots))
        if not math.isfinite(vg) or not all(map(math.isfinite, dots)):
            return Skip("non-finite preconditioned gradient")
        values = self._clip(directions, vg)
        if not momentum_step_(self, {b.params[0]: v for b, v in zip(active, directions)}):
            return Skip("non-finite update (overflow of lr · direction)")
        self.curv_state["blocks"] = blocks
        self.curv_state["step"] = step + 1
        if factors is not None:
            self.curv_state["rng"] = factors.rng
        return Step(counts={"kfac_steps": 1}, values=values)

    def _clip(self, directions: list[Tensor], vg: float) -> dict[str, float]:
        """Scale ``directions`` in place by KL-clipping's ν (``vg`` = Σ α²⟨v, g⟩); ``{"kl_clip_nu": ν}``."""
        kappa = self.optimizer_hparams["kl_clip"]
        if kappa is None:
            return {}
        nu = kl_clip_scale(vg, kappa)
        if nu < 1.0:
            torch._foreach_mul_(directions, nu)
        return {"kl_clip_nu": nu}

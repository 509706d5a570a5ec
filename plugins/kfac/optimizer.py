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
that KL-clipping needs anyway (one device sync per step). Monte-Carlo
targets are drawn from a private RNG state kept in ``curv_state`` (resume
is bitwise).

BackPACK's hooks are installed on the model and the loss module only for
the closure call of a factor step (:mod:`curvlab_plugins.kfac.hooks`); the
closure must use exactly these two objects. Other steps run the plain
model: a step between factor/inverse updates costs an SGD step plus two
small matrix products per layer.

Schedule defaults :math:`T_f = 5`, :math:`T_i = 50` (those of common
PyTorch K-FAC code). Measured trade-off (digits MLP 64-128-64-10, batch
128, lr 0.1, 1 thread; training loss after 100 steps, SGD-momentum 0.049;
step time vs SGD on the digits MLP / CNN from ``benchmarks/step_time.py``):
:math:`(T_f, T_i) = (1, 10)`: 0.004, 5.9× / 4.0×; :math:`(5, 50)`: 0.012,
2.4–2.5× / 1.6–1.9×; :math:`(10, 50)`: 0.008, 2.25× / 1.4×;
:math:`(10, 100)`: 0.065 (the first inverse, from one batch, is used too
long). A factor step (BackPACK's extra backward pass, its hooks and
per-module Python work) costs about 10 SGD steps on this tiny MLP and about
3.5 on the digits CNN, so :math:`T_f` sets the amortised cost.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
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
from curvlab.curvature.kl_clip import inner_products, kl_clip_scale
from curvlab.curvature.kronecker import KroneckerBlock
from curvlab.curvature.kronecker_preconditioner import KroneckerPreconditioner
from curvlab.curvature.momentum import momentum_step_
from curvlab.hparams import HParam, LogUniform, Schema
from curvlab.optimizer import CurvatureOptimizer, OptimizerMeta
from curvlab_plugins.kfac.backpack_bce import HBPSoftBCEWithLogitsLoss
from curvlab_plugins.kfac.hooks import BackpackHooks
from curvlab_plugins.kfac.seeded import SeededLossExtension
from curvlab_plugins.kfac.support import check_loss, check_model

__all__ = ["KFAC", "kfac_blocks"]

_HOOK_WARNING = "Full backward hook is firing when gradients are computed with respect to module outputs"


def kfac_blocks(layers: dict[str, nn.Module]) -> list[KroneckerBlock]:
    """K-FAC's blocks in BackPACK's layout: ``name.weight`` (:math:`G ⊗ A`), ``name.bias`` (:math:`G`).

    Example:
        >>> [(b.name, b.factors) for b in kfac_blocks({"0": nn.Linear(2, 3)})]
        [('0.weight', ('G', 'A')), ('0.bias', ('G',))]
    """
    blocks = []
    for name, layer in layers.items():
        if layer.weight.requires_grad:
            blocks.append(KroneckerBlock(f"{name}.weight", (layer.weight,), ("G", "A")))
        if layer.bias is not None and layer.bias.requires_grad:
            blocks.append(KroneckerBlock(f"{name}.bias", (layer.bias,), ("G",)))
    return blocks


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
                   choices=("pi", "equal")),
            HParam("fisher_type", str, "mc",
                   "'mc': BackPACK KFAC (sampled Fisher); 'exact': BackPACK KFLR (exact GGN)",
                   choices=("mc", "exact")),
            HParam("mc_samples", int, 1, "Monte-Carlo samples per input (fisher_type='mc')",
                   low=1),
            HParam("ema_decay", float, 0.95, "decay of the bias-corrected factor EMAs", low=0.0,
                   high=1.0, high_open=True),
            HParam("factor_every", int, 5, "update the factors every T_f steps", low=1),
            HParam("inverse_every", int, 50, "recompute the damped inverses every T_i steps",
                   low=1),
            HParam("momentum", float, 0.9, "heavy-ball coefficient μ", low=0.0, high=1.0,
                   high_open=True),
            HParam("weight_decay", float, 1e-5, "L2 coefficient added after preconditioning",
                   low=0.0),
            HParam("kl_clip", float, 1e-3, "KL-clipping bound κ (None: off)", low=0.0,
                   low_open=True, optional=True),
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
        layers = check_model(model, self.name)
        covered = {id(p) for lay in layers.values() for p in lay.parameters() if p.requires_grad}
        for group in self.param_groups:
            for p in group["params"]:
                if id(p) not in covered:
                    raise ValueError(
                        f"{self.name}: a parameter of shape {tuple(p.shape)} is not in a "
                        "Linear/Conv2d layer of the model; K-FAC preconditions only those"
                    )
        self.hooks = BackpackHooks(model, self.loss_fn)
        d = self.defaults
        self.blocks = kfac_blocks(layers)
        self._group_of = {id(p): g for g in self.param_groups for p in g["params"]}
        self.preconditioner = KroneckerPreconditioner(self.blocks, heuristic=d["damping_heuristic"])
        if d["fisher_type"] == "mc":
            self.extension = BackpackKFAC(mc_samples=d["mc_samples"])
        else:
            self.extension = KFLR()
        inner = {
            nn.MSELoss: HBPMSELoss(),
            nn.CrossEntropyLoss: HBPCrossEntropyLoss(),
            nn.BCEWithLogitsLoss: HBPSoftBCEWithLogitsLoss(),
        }[type(self.loss_fn)]
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        self.sampler = SeededLossExtension(inner, seed)
        self.extension.set_module_extension(type(self.loss_fn), self.sampler, overwrite=True)
        self.curv_state.update({"step": 0, "seed": seed, "rng": None, "blocks": {}})
        self._pending: dict[str, Any] | None = None

    def _after_load(self) -> None:
        self.sampler.seed = self.curv_state["seed"]
        self._pending = None

    # --------------------------------------------------------------- closure
    def _evaluate(self, closure: Callable[..., Tensor]) -> Tensor:
        self._pending = None
        if self.curv_state["step"] % self.defaults["factor_every"] != 0:
            return call_closure(closure, who=self.name)
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
        self._pending = {"estimates": estimates, "rng": self.sampler.state}
        return loss

    # ----------------------------------------------------------------- update
    def _damping(self) -> dict[str, float]:
        return {b.name: self._group_of[id(b.params[0])]["damping"] for b in self.blocks}

    @torch.no_grad()
    def _update(self, closure, loss) -> None:
        pending, self._pending = self._pending, None
        blocks = self.curv_state["blocks"]
        step = self.curv_state["step"]
        if pending is not None and pending["estimates"]:
            new = self.preconditioner.accumulate(
                blocks, pending["estimates"], self.defaults["ema_decay"]
            )
            if new is None:
                self.skip_step("non-finite Kronecker factors")
                return
            blocks = {**blocks, **new}
        if not blocks:
            self.skip_step("no Kronecker factors yet (the first step must compute them)")
            return
        if step % self.defaults["inverse_every"] == 0 or any(
            b.factors[0] + "_inv" not in blocks.get(b.name, ()) for b in self.blocks
        ):
            inv = self.preconditioner.invert(blocks, self._damping())
            if inv is None:
                self.skip_step("damped inverse failed or is not finite")
                return
            blocks = {**blocks, **inv}
        directions = [self.preconditioner.directions(blocks, b)[0] for b in self.blocks]
        lrs = [self._group_of[id(b.params[0])]["lr"] for b in self.blocks]
        dots = inner_products(directions, [b.params[0].grad for b in self.blocks])
        vg = sum(lr * lr * x for lr, x in zip(lrs, dots))
        if not math.isfinite(vg) or not all(map(math.isfinite, dots)):
            self.skip_step("non-finite preconditioned gradient")
            return
        self._clip(directions, vg)
        self.curv_state["blocks"] = blocks
        self.curv_state["step"] = step + 1
        if pending is not None:
            self.curv_state["rng"] = pending["rng"]
        momentum_step_(self, {b.params[0]: v for b, v in zip(self.blocks, directions)})
        self.count("kfac_steps")

    def _clip(self, directions: list[Tensor], vg: float) -> None:
        """Scale ``directions`` in place by KL-clipping's ν (``vg`` = Σ α²⟨v, g⟩)."""
        kappa = self.defaults["kl_clip"]
        if kappa is None:
            return
        nu = kl_clip_scale(vg, kappa)
        self.stats["kl_clip_nu"] = nu
        if nu < 1.0:
            torch._foreach_mul_(directions, nu)

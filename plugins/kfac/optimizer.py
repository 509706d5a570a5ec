r"""K-FAC with Kronecker factors for every layer type of a modern network.

Algorithm (one ``step(closure)``, :math:`t` counting committed steps):

1. if :math:`t \bmod T_f = 0`: run the closure inside a factor capture
   (:mod:`curvlab.curvature.factor_engine`: BackPACK's ``KFAC``/``KFLR`` or
   curvlab's hooks, chosen per model) and measure the scale :math:`c`
   between the closure's loss and ``loss_fn`` at the network outputs
   (:mod:`curvlab.curvature.loss_scale`); the factors of the loss module,
   output side multiplied by :math:`c`, enter bias-corrected EMAs
   (:mod:`curvlab.curvature.ema`); otherwise a plain closure call;
2. if :math:`t \bmod T_i = 0`: damped inverses of the factors
   (:mod:`curvlab.curvature.kronecker_preconditioner`: :math:`\lambda_A\lambda_G = \lambda`
   by the π-heuristic or equally for Kronecker blocks, :math:`U_i + \lambda I`
   for the unit-wise blocks of norm layers);
3. directions per block, e.g. :math:`V = (G+\lambda_G I)^{-1} \nabla W (A+\lambda_A I)^{-1}`
   for ``Linear``/``Conv2d``, :math:`(A+\lambda_A I)^{-1} \nabla W (G+\lambda_G I)^{-1}`
   for ``Embedding``, optionally scaled by KL-clipping
   :math:`\nu = \min(1, \sqrt{\kappa / \sum_l \alpha^2 \langle V_l, \nabla W_l\rangle})`;
4. SGD with momentum and weight decay on the directions
   (:mod:`curvlab.curvature.momentum`); parameters no block covers get the
   declared ``fallback`` (:mod:`curvlab.curvature.fallback`) in the same,
   all-or-nothing step.

Blocks (:mod:`curvlab.curvature.block_plan`, kinds in ``opt.coverage()``):
``Linear`` on inputs of any rank and ``Conv2d`` (``groups=1``): weight
:math:`G \otimes A`, bias :math:`G`, weight-sharing positions by
``kfac_approx`` (Eschenhagen et al. 2023: ``"expand"``, positions are extra
samples; ``"reduce"``, positions aggregated first); ``Embedding``:
:math:`A \otimes G` with :math:`A` the token frequencies (a diagonal for
expand); ``LayerNorm``/``RMSNorm``/``BatchNorm1d/2d``: exact 2×2 (or 1×1)
blocks per unit (unit-wise, as ASDL). Shapes: ``Linear(d_in, d_out)``:
:math:`A` ``(d_in, d_in)``, :math:`G` ``(d_out, d_out)``; ``Conv2d``:
:math:`A` ``(C_in k_h k_w)²``, :math:`G` ``(C_out)²``; ``Embedding(V, D)``:
:math:`A` ``(V,)`` (expand) or ``(V, V)`` (reduce), :math:`G` ``(D, D)``;
norm layers: ``(U, 2, 2)``.

NaN guard: new factors and inverses are checked before they are committed;
a non-finite one skips the step (nothing changes). The directions are
checked through the inner products :math:`\langle V_l, \nabla W_l\rangle`
(one device sync per step), the weight update through
:func:`~curvlab.curvature.descent.descend_all_`. Monte-Carlo targets come
from the engine's private generator whose state is kept in ``curv_state``
(resume is bitwise). Frozen parameters are never moved.

Training loops: ``step(closure)`` as above (any closure, also one without
the contract keywords, e.g. PyTorch Lightning's automatic optimization), or
the plain loop ``loss = loss_fn(model(x), y); loss.backward(); opt.step()``
(:mod:`curvlab.curvature.plain_loop`): while no closure is given, curvlab's
hooks stay on the model for the factor steps and record the user's own
forward and backward; ``fisher_type="empirical"`` takes :math:`G` from that
backward's gradients, ``"mc"``/``"exact"`` back-propagate the sampled targets
(the loss Hessian's columns) when the user's code calls ``loss_fn``. Both
loops give the same steps (``tests/backends/test_plain_loop.py``).

Scopes: ``lr``, ``damping``, ``momentum``, ``weight_decay`` and the
fallback's ``fallback_lr``/``fallback_betas``/``fallback_eps`` are per param
group; the schedule, the EMA, KL-clipping, the factor type, ``kfac_approx``
and ``fallback`` are per optimizer. Defaults, measurements and the engine
rules: ``docs/backends/kfac.rst``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from curvlab.closure import call_closure
from curvlab.curvature.block_plan import KFAC_APPROX
from curvlab.curvature.coverage import parameter_coverage
from curvlab.curvature.coverage_table import CoverageTable
from curvlab.curvature.descent import descend_all_
from curvlab.curvature.factor_blocks import capture_estimates, plan_blocks_for
from curvlab.curvature.factor_engine import FactorCapture, describe_engine, make_engine
from curvlab.curvature.fallback import Fallback, fallback_hparams
from curvlab.curvature.finite import all_finite
from curvlab.curvature.inverse import damped_inverse
from curvlab.curvature.kl_clip import inner_products, kl_clip_scale
from curvlab.curvature.kronecker import KroneckerBlock, split_matrix
from curvlab.curvature.kronecker_preconditioner import KroneckerPreconditioner
from curvlab.curvature.loss_curvature import check_loss_module
from curvlab.curvature.loss_scale import LossScaleProbe
from curvlab.curvature.momentum import momentum_plan
from curvlab.curvature.plain_loop import PlainLoopCapture
from curvlab.curvature.rng import derive_seed
from curvlab.hparams import OPTIMIZER, HParam, LogUniform, Schema
from curvlab.optimizer import CurvatureOptimizer, Evaluation, OptimizerMeta, Skip, Step

__all__ = ["KFAC", "FactorEstimates", "foof_inverses", "update_cosine"]


@dataclass(frozen=True)
class FactorEstimates:
    """What a factor step's evaluation hands to the update.

    Attributes:
        estimates: ``{block: {"G": ..., "A": ...}}`` (``{"U": ...}`` for unit
            blocks) of this batch, output side already multiplied by ``scale``;
            empty when ``scale`` could not be measured (no gradient at the outputs).
        rng: The Monte-Carlo sampler's advanced private RNG state.
        scale: The measured loss scale :math:`c` (``nan``: not measurable).
    """

    estimates: dict[str, dict[str, Tensor]]
    rng: Any
    scale: float


def foof_inverses(entries: dict[str, dict[str, Any]], blocks: list[KroneckerBlock],
                  damping: dict[str, float]) -> dict[str, dict[str, Any]] | None:
    r"""``entries`` with ``A_foof_inv`` = :math:`(A + \lambda I)^{-1}` for the two-factor ``out_in`` blocks (FOOF's).

    ``None`` when an inverse fails or is not finite.
    """
    out = dict(entries)
    for b in blocks:
        entry = entries.get(b.name)
        if entry is None or not _two_factor(b, entry):
            continue
        try:
            inv = damped_inverse(entry["A"], damping[b.name])
        except torch.linalg.LinAlgError:
            return None
        if not all_finite([inv]):
            return None
        out[b.name] = {**entry, "A_foof_inv": inv}
    return out


def _two_factor(block: KroneckerBlock, entry: dict[str, Any]) -> bool:
    r"""A ``Linear``/``Conv2d`` weight block :math:`G \otimes A` (``out_in`` view, both factors as matrices)."""
    A = entry.get("A")
    return block.view == "out_in" and entry.get("G") is not None and A is not None and A.dim() == 2


def update_cosine(state: dict[str, dict[str, Any]], blocks: list[KroneckerBlock],
                  mats: list[tuple[Tensor, Tensor]]) -> float:
    r"""Cosine between K-FAC's and FOOF's updates in the :math:`A` inner product (Benzing 2022, Fig. 3).

    With :math:`U_l` K-FAC's direction and :math:`F_l = M_l (A_l + \lambda I)^{-1}`
    FOOF's (same damping :math:`\lambda`) for every ``Linear``/``Conv2d``
    weight block :math:`G_l \otimes A_l`,
    :math:`\langle U, F\rangle_A = \sum_l \operatorname{tr}(U_l A_l F_l^\top)` (the
    inner product of the changes of the pre-activations, :math:`A = \frac1{NR}\sum a a^\top`)
    and the result is :math:`\langle U, F\rangle_A / (\|U\|_A \|F\|_A)`;
    ``nan`` when no block has both factors or a norm is 0.

    Example:
        >>> from curvlab.curvature.kronecker import KroneckerBlock
        >>> w = torch.nn.Parameter(torch.zeros(1, 2))
        >>> b = KroneckerBlock("0", (w,), ("G", "A"))
        >>> A = torch.diag(torch.tensor([1.0, 4.0]))
        >>> state = {"0": {"A": A, "G": torch.eye(1), "A_foof_inv": torch.linalg.inv(A)}}
        >>> M = torch.ones(1, 2)
        >>> update_cosine(state, [b], [(M, M @ torch.linalg.inv(A))])
        1.0
    """
    dot = uu = ff = torch.zeros((), dtype=torch.float64)
    for b, (M, U) in zip(blocks, mats):
        entry = state[b.name]
        if not _two_factor(b, entry) or "A_foof_inv" not in entry:
            continue
        A = entry["A"].to(torch.float64)
        U64 = U.to(torch.float64)
        F = M.to(torch.float64) @ entry["A_foof_inv"].to(torch.float64)
        UA, FA = U64 @ A, F @ A
        dot = dot + (UA * F).sum()
        uu = uu + (UA * U64).sum()
        ff = ff + (FA * F).sum()
    den = float((uu * ff).sqrt())
    return float(dot) / den if den > 0 else math.nan


class KFAC(CurvatureOptimizer):
    """K-FAC (Martens & Grosse 2015; Grosse & Martens 2016; Eschenhagen et al. 2023).

    See the module docstring for the algorithm. Losses: ``MSELoss``,
    ``CrossEntropyLoss``, ``BCEWithLogitsLoss`` (mean or sum; soft targets
    and many outputs); the closure may return any positive multiple of
    ``loss_fn`` plus parameter penalties (the multiple is measured). Any
    ``nn.Module``: every ``Linear``, ``Conv2d``, ``Embedding`` and affine
    norm layer gets a block, every other trainable parameter the fallback
    (``opt.coverage()`` lists them).

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
        >>> print(opt.coverage())  # doctest: +NORMALIZE_WHITESPACE
        parameter  shape   kind              block
        0.weight   (3, 4)  kronecker-expand  0
        0.bias     (3,)    kronecker-expand  0
        Kronecker factors from BackPACK's KFAC/KFLR (nn.Sequential of supported layers; curvlab's hooks from the first capture that needs them)
    """

    name = "kfac"
    schema = Schema(
        [
            HParam("lr", float, 0.01, "step size α", low=0.0, space=LogUniform(1e-3, 1.0)),
            HParam("damping", float, 0.03, "Tikhonov damping λ of the blocks", low=0.0,
                   low_open=True, space=LogUniform(1e-3, 1.0)),
            HParam("damping_heuristic", str, "pi",
                   "'pi'/'equal': split λ between A and G; 'standard': exact (G⊗A + λI)⁻¹ "
                   "through the eigenbases", choices=("pi", "equal", "standard"), scope=OPTIMIZER),
            HParam("fisher_type", str, "mc",
                   "'mc': sampled Fisher; 'exact': exact GGN; 'empirical': empirical Fisher",
                   choices=("mc", "exact", "empirical"), scope=OPTIMIZER),
            HParam("mc_samples", int, 1, "Monte-Carlo samples per input (fisher_type='mc')",
                   low=1, scope=OPTIMIZER),
            HParam("kfac_approx", str, "expand",
                   "weight sharing (sequences, Conv2d): positions as samples or aggregated",
                   choices=KFAC_APPROX, scope=OPTIMIZER),
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
            HParam("diagnostics", bool, False,
                   "record opt.stats['update_cosine'] every step: cosine of K-FAC's and FOOF's "
                   "updates in the A inner product", scope=OPTIMIZER),
            *fallback_hparams(),
        ]
    )
    meta = OptimizerMeta(
        summary="K-FAC: Kronecker-factored Fisher/GGN preconditioner (BackPACK or curvlab's hooks)",
        paper=(
            "Martens & Grosse, Optimizing Neural Networks with Kronecker-factored Approximate "
            "Curvature, ICML 2015 (arXiv 1503.05671); Grosse & Martens, ICML 2016 (conv); "
            "Eschenhagen et al., Kronecker-Factored Approximate Curvature for Modern Neural "
            "Network Architectures, NeurIPS 2023; Dangel, Kunstner & Hennig, BackPACK, ICLR 2020"
        ),
        layers=("Linear (any input rank)", "Conv2d (groups=1)", "Embedding",
                "LayerNorm/RMSNorm/BatchNorm (unit-wise)", "other parameters: fallback"),
        losses=("MSELoss", "CrossEntropyLoss", "BCEWithLogitsLoss"),
        needs_loss_fn=True,
        loop_notes=(
            "plain loop: the layer inputs and outputs are hooked while no closure is given "
            "(hooks installed for the factor steps only); fisher_type='empirical' takes G from the "
            "gradients of your own loss.backward() (no extra pass); 'mc' and 'exact' back-propagate "
            "the sampled targets / the loss Hessian's columns from the outputs when your code calls "
            "loss_fn (one extra partial backward per sample or column, on the forward graph, which "
            "your backward frees before step()); the loss scale of your backward is measured"
        ),
        conformance={"lr": 0.1, "damping": 0.01},
        tags=("second-order", "kronecker", "backpack", "hooks"),
    )

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        model = self.require_model()
        check_loss_module(self.loss_fn, self.name)
        hp = self.optimizer_hparams
        trainable = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        self.engine = make_engine(model, self.loss_fn, kfac_approx=hp["kfac_approx"],
                                  bias_layout="separate", seed=derive_seed(), trainable=trainable,
                                  who=self.name)
        self.fallback = Fallback(self, self.engine.coverage(hp["kfac_approx"]))
        self.params_map = parameter_coverage(model, self.param_groups)
        self.blocks = plan_blocks_for(self.engine.plan, need_G=True)
        self.preconditioner = KroneckerPreconditioner(self.blocks, heuristic=hp["damping_heuristic"])
        self.probe = LossScaleProbe(self.loss_fn, who=self.name)
        self.plain = PlainLoopCapture(self.engine, who=self.name,
                                      probe=LossScaleProbe(self.loss_fn, who=self.name), owner=self)
        self.curv_state.update({"step": 0, "seed": self.engine.seed, "rng": None, "blocks": {},
                                "loss_scale": None})
        self._arm()

    def _arm(self) -> None:
        """Hook the user's next forward/backward if the next step updates the factors (plain loop)."""
        hp = self.optimizer_hparams
        if self.curv_state["step"] % hp["factor_every"] != 0:
            return
        self.engine.seed = self.curv_state["seed"]
        self.engine.rng_state = self.curv_state["rng"]
        self.plain.arm(fisher_type=hp["fisher_type"], kfac_approx=hp["kfac_approx"],
                       mc_samples=hp["mc_samples"])

    def step(self, closure: Callable[..., Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """One K-FAC step: with a closure (``step(curvlab.closure(...))``) or in the plain loop.

        Without a closure, the factors come from the forward and backward
        passes run since the previous step (module docstring, "Training loops").
        """
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

    def coverage(self) -> CoverageTable:
        """Every parameter's block kind or fallback (see :mod:`curvlab.curvature.coverage_table`)."""
        return CoverageTable(self.fallback.table, describe_engine(self.engine))

    # --------------------------------------------------------------- closure
    def _evaluate(self, closure: Callable[..., Tensor]) -> Evaluation[FactorEstimates]:
        hp = self.optimizer_hparams
        if self.curv_state["step"] % hp["factor_every"] != 0:
            return Evaluation(call_closure(closure, who=self.name))
        self.engine.seed = self.curv_state["seed"]
        self.engine.rng_state = self.curv_state["rng"]

        def call():
            with self.probe:
                loss = call_closure(closure, who=self.name)
            return loss, self.probe.measure(loss)

        (loss, measured), cap = self.engine.run(
            call, fisher_type=hp["fisher_type"], kfac_approx=hp["kfac_approx"],
            mc_samples=hp["mc_samples"],
        )
        return Evaluation(loss, self._estimates(cap, measured.scale))

    def _evaluate_plain(self) -> Evaluation[FactorEstimates]:
        """The factors of the forward/backward run since the previous step (plain loop)."""
        collected = self.plain.collect()
        if collected is None:  # not a factor step (or the last step had a closure)
            return Evaluation(None)
        cap, measured = collected
        assert measured is not None
        return Evaluation(None, self._estimates(cap, measured.scale))

    def _estimates(self, cap: FactorCapture, c: float) -> FactorEstimates:
        """The capture's factors with the output side multiplied by the measured loss scale ``c``."""
        if math.isfinite(c) and c <= 0:
            raise ValueError(
                f"{self.name}: the loss back-propagated is {c:.3g} × loss_fn (measured at the "
                "network outputs); K-FAC's curvature needs a positive multiple of the loss it "
                "minimises"
            )
        estimates = (capture_estimates(self.engine.plan, cap.factors, need_G=True, scale=c)
                     if math.isfinite(c) else {})
        return FactorEstimates(estimates, cap.rng_state, c)

    # ----------------------------------------------------------------- update
    @torch.no_grad()
    def _update(self, closure, evaluation: Evaluation[FactorEstimates]) -> Step | Skip:
        self.params_map.check_gradients(self.name)
        hp = self.optimizer_hparams
        factors = evaluation.data
        blocks = self.curv_state["blocks"]
        step = self.curv_state["step"]
        if factors is not None and factors.estimates:
            new = self.preconditioner.accumulate(blocks, factors.estimates, hp["ema_decay"])
            if new is None:
                return Skip("non-finite Kronecker factors")
            blocks = {**blocks, **new}
        active = [b for b in self.blocks if all(p.grad is not None for p in b.params)]
        missing = [b.name for b in active if b.name not in blocks]
        if missing:
            return Skip(f"no Kronecker factors yet for {', '.join(missing)} (the first step "
                        "must compute them; in the plain loop, the step after one with a "
                        "closure has no statistics of its own)")
        if step % hp["inverse_every"] == 0 or any(
            not self.preconditioner.inverted(blocks, b) for b in active
        ):
            damping = {b.name: self.params_map.group(b.params[0])["damping"] for b in self.blocks}
            inv = self.preconditioner.invert(blocks, damping)
            if inv is None:
                return Skip("damped inverse failed or is not finite")
            if hp["diagnostics"]:
                inv = foof_inverses(inv, self.blocks, damping)
                if inv is None:
                    return Skip("damped inverse failed or is not finite")
            blocks = {**blocks, **inv}
        mats = [self.preconditioner.matrices(blocks, b) for b in active]
        diagnostics = ({"update_cosine": update_cosine(blocks, active, mats)}
                       if hp["diagnostics"] else {})
        lrs = [self.params_map.group(b.params[0])["lr"] for b in active]
        dots = inner_products([V for _, V in mats], [M for M, _ in mats])
        vg = sum(lr * lr * x for lr, x in zip(lrs, dots))
        if not math.isfinite(vg) or not all(map(math.isfinite, dots)):
            return Skip("non-finite preconditioned gradient")
        values = {**self._clip([V for _, V in mats], vg), **diagnostics}
        directions = {p: v for b, (_, V) in zip(active, mats)
                      for p, v in zip(b.params, split_matrix(V, b.params, b.view))}
        main = momentum_plan(self, directions, params=list(directions))
        if not descend_all_([main, self.fallback.plan()]):
            return Skip("non-finite update (overflow of lr · direction)")
        self.curv_state["blocks"] = blocks
        self.curv_state["step"] = step + 1
        if factors is not None:
            self.curv_state["rng"] = factors.rng
            if math.isfinite(factors.scale):
                self.curv_state["loss_scale"] = factors.scale
                values["loss_scale"] = factors.scale
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

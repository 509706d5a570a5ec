r"""GroupedNewton: one exact Newton-like step size per subset of parameters.

Wolinski, "Adapting Newton's Method to Neural Networks through a Summary of
Higher-Order Derivatives", arXiv 2312.03885 (v3, 2025).

Algorithm (one call of ``step(closure)``; t counts the steps):

1. ``closure()`` evaluates the loss on the current batch and back-propagates.
2. A first-order direction u is updated from the gradients
   (:mod:`~curvlab_plugins.groupednewton.direction`; SGD momentum by default).
3. When the tensors are due — ``period`` steps after the last computation,
   or earlier once the norm ‖u_s‖ of a subset that moves (η_s > 0) exceeds
   κ = ``recompute_growth`` times its value at the last computation — the
   loss is evaluated on a *separate* mini-batch (``closure(backward=False,
   fresh=True)``, which returns it with its graph) and the exact partition
   tensors ḡ, H̄ (and the diagonal of D for order 3) along u are computed
   by nested autodiff (:mod:`~curvlab_plugins.groupednewton.tensors`). The
   step sizes η_new = H̄⁻¹ḡ (order 2) or the cubic-regularised solution
   (order 3, :mod:`~curvlab_plugins.groupednewton.cubic`) follow, in
   float64. A failed solve gives η_new = 0 (``stats["solve_failures"]``);
   subsets along which the model is unbounded below (no cubic term, no
   positive curvature) get η_s = 0 and the others are solved
   (``stats["dropped_subsets"]``). Negative entries are clipped to 0
   (``clip_negative``; ``stats["clipped_step_sizes"]``) and η ← β η +
   (1 − β) η_new (β = ``eta_ema``; η = η_new the first time and after an
   early computation); ``ema_before_clip`` smooths the raw values and clips
   afterwards, as the paper's code does.
4. θ_s ← θ_s − λ₁ · η_s · u_s for every subset s, λ₁ = ``lr`` × the
   plateau scale (``lr`` is the paper's λ₁, the damping of the step sizes;
   every curvlab optimizer names its global step factor ``lr`` so that LR
   schedulers drive it).

Between computations η is reused with the current u. Why a growing u
forces a recomputation: η_s is a step per unit of u_s, checked for the u
of the computation; on the digits auto-encoder u grew 100× within a period
after the first step and the reused η turned the loss into NaN at step 6.
The test compares two norms of the same subset, so it is scale-free (u_s →
a_s u_s) and shift-free, and keeps the invariance below; ``None`` restores
the paper's fixed period.

Safeguard (``safeguard``, on by default; adaptive cubic regularisation in
the manner of Cartis, Gould & Toint's ARC): at a computation the step
θ − λ₁·η·u is tried on the *current* batch (one extra forward pass,
``closure(backward=False)``; parameters and the model's buffers, e.g.
BatchNorm's running statistics, are restored afterwards) and ρ = (actual
decrease) / (decrease of the cubic model m at e = λ₁·η, with the solver's
𝒟, :func:`~curvlab_plugins.groupednewton.cubic.effective_d`) is formed. The
step is rejected if the loss does not decrease (or is not finite), or if
ρ < RHO_MIN = 0.1 while the model predicts a decrease (a model that
predicts none, e.g. at a smoothed η, only asks for an actual decrease). On
rejection the regularisation is multiplied by 10 (λ_eff = σ·λ_int,
σ ← 10σ; order 2: η_new/σ), the EMA history of η is dropped and the step
sizes are solved again, up to ``MAX_REJECTIONS`` times
(``stats["rejected_steps"]``). If every candidate fails, η = 0 until the
next computation (``stats["safeguard_failures"]``). An accepted step with
ρ ≥ RHO_GOOD = 0.9 sets σ ← max(1, σ/10), otherwise σ is kept, so λ_int
stays the lower bound. σ lives in ``curv_state["reg_scale"]``. Loss values
and σ do not depend on the parametrisation, so the check keeps the affine
invariance. A computed step that moves a subset by more than
``HUGE_STEP`` = 1e3 times its norm is reported once
(:class:`GroupedNewtonWarning`, naming the subset and the hyper-parameters
to change; the report reads ‖θ_s‖, which is not shift-invariant, but it
changes nothing in the trajectory). Why these safeguards are on by
default, with the measurements behind them and the commands that
regenerate them: ``docs/backends/groupednewton.rst``.

λ₁ plateau schedule (``plateau_patience``; off by default, the paper's
experiments use it): the loss of every step is averaged over windows of
``plateau_window`` steps; a window whose mean is not below the best mean
by the relative margin 1e-4 counts as bad, and after more than
``plateau_patience`` bad windows in a row λ₁ is multiplied by
``plateau_factor`` and the best restarts at the current mean (the paper's
``ReduceDampingOnPlateau``, stepped once per epoch on the mean training
loss). The scale lives in ``curv_state["lr_scale"]`` and multiplies the
groups' ``lr``, so an LR scheduler still works on top of it.

Diagnostics: after every step ``stats`` holds the per-subset learning
rates λ₁·η_s as ``lr/<subset>`` (:attr:`GroupedNewton.learning_rates`),
``reg_scale`` (σ) and ``lr_scale`` besides the counters above and
``tensor_computations``/``early_computations``.

Invariance: with SGD-momentum or gradient directions the trajectory is
invariant under θ_s = a_s θ'_s + b_s per subset (scalars a_s ≠ 0, b_s);
all thresholds are scale-free for that reason.

Scopes: ``lr`` is per param group (LR schedulers drive it); every other
hyper-parameter is per optimizer (one partition, one solve per step).

Shapes: with S subsets, ḡ is ``(S,)``, H̄ ``(S, S)``, D's diagonal ``(S,)``
(``full_third_order``: D ``(S, S, S)``), η ``(S,)``, all float64.

The tensors, step sizes and counters live in ``curv_state`` (saved with
``state_dict``); :attr:`GroupedNewton.last_tensors` exposes the last ḡ, H̄,
D and η for inspection.

Example:
    >>> import torch, curvlab
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 1))
    >>> opt = curvlab.create("groupednewton", net, torch.nn.MSELoss(), partition="trivial")
    >>> opt.subset_names
    ('all',)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from curvlab.closure import call_closure
from curvlab.curvature.finite import all_finite
from curvlab.hparams import OPTIMIZER, HParam, LogUniform, Schema
from curvlab.optimizer import CurvatureOptimizer, Evaluation, OptimizerMeta, Skip, Step
from curvlab_plugins.groupednewton.cubic import StepSizes as SolveResult
from curvlab_plugins.groupednewton.cubic import cubic_step_sizes, effective_d, newton_step_sizes
from curvlab_plugins.groupednewton.direction import DIRECTIONS, direction_step
from curvlab_plugins.groupednewton.partition import PARTITIONS, build_partition
from curvlab_plugins.groupednewton.tensors import partition_tensors

__all__ = ["GroupedNewton", "GroupedNewtonTensors", "GroupedNewtonWarning"]

#: Factor by which the regularisation grows after a rejected step (and shrinks after a very successful one).
REG_GROWTH = 10.0
#: Least ratio ρ = actual / predicted decrease for a step to be accepted.
RHO_MIN = 0.1
#: Ratio ρ from which an accepted step counts as very successful (σ shrinks by ``REG_GROWTH``).
RHO_GOOD = 0.9
#: Rejections allowed per recomputation before η is set to 0 for the period.
MAX_REJECTIONS = 12
#: A recomputed step moving a subset by more than this many times its norm is reported (once).
HUGE_STEP = 1e3
#: Relative improvement of the windowed mean loss that resets the plateau count (the paper's 1e-4).
PLATEAU_THRESHOLD = 1e-4


class GroupedNewtonWarning(UserWarning):
    """GroupedNewton took a step its Taylor model cannot vouch for (reported once per optimizer)."""


@dataclass(frozen=True)
class GroupedNewtonTensors:
    """The last computed tensors and step sizes (float64), for inspection.

    Attributes:
        names: Subset names (parameter names, layer names, ...), length S.
        gbar: ḡ, ``(S,)``.
        hbar: H̄, ``(S, S)``.
        d: Diagonal of D ``(S,)``, full D ``(S, S, S)`` (``full_third_order``)
            or ``None`` (order 2).
        eta_raw: Solution of the step-size problem before clipping and EMA.
        eta: Step sizes in use (clipped, smoothed).
        step: Optimizer step at which the tensors were computed.
        reg_scale: σ of the accepted solve (λ_eff = σ·λ_int; 1 without rejections).

    Example:
        >>> t = GroupedNewtonTensors(("w",), torch.ones(1), torch.ones(1, 1), None,
        ...                          torch.ones(1), torch.ones(1), 0)
        >>> t.names
        ('w',)
    """

    names: tuple[str, ...]
    gbar: Tensor
    hbar: Tensor
    d: Tensor | None
    eta_raw: Tensor
    eta: Tensor
    step: int
    reg_scale: float = 1.0


@dataclass(frozen=True)
class StepSizes:
    """Outcome of one solve-and-accept round (:meth:`GroupedNewton._step_sizes`).

    Attributes:
        eta_raw: Solution before clipping and smoothing, ``(S,)``.
        eta: Step sizes to use, ``(S,)``.
        sigma: σ of the accepted solve (λ_eff = σ·λ_int).
        reg_scale: New ``curv_state["reg_scale"]`` (``None``: unchanged).
        kept: The value the EMA of η carries on (``ema_before_clip``: unclipped).
        counts: Counters of the round (``solve_failures``, ``rejected_steps``,
            ``safeguard_failures``).
    """

    eta_raw: Tensor
    eta: Tensor
    sigma: float
    reg_scale: float | None = None
    kept: Tensor | None = None
    counts: dict[str, int] = field(default_factory=dict)


class GroupedNewton(CurvatureOptimizer):
    r"""GroupedNewton (exact partition tensors; see the module docstring).

    Requires ``step(closure)`` with a closure that honours ``backward`` and
    ``fresh`` (build it with :func:`curvlab.closure` and pass ``batches=``
    to draw separate mini-batches for the tensors). A custom partition is
    given as param groups with ``partition="groups"`` (see
    :func:`~curvlab_plugins.groupednewton.partition.groups_by` to build them
    from a callable).

    Example:
        >>> import torch, curvlab
        >>> torch.manual_seed(0) and None
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        >>> x, y = torch.randn(16, 3), torch.randn(16, 1)
        >>> opt = curvlab.create("groupednewton", net, torch.nn.MSELoss())
        >>> losses = [float(opt.step(curvlab.closure(net, torch.nn.MSELoss(), x, y)).detach())
        ...           for _ in range(30)]
        >>> losses[-1] < losses[0]
        True
        >>> opt.last_tensors.hbar.shape
        torch.Size([4, 4])
    """

    name = "groupednewton"
    schema = Schema(
        [
            HParam("lr", float, 0.1, "λ₁: factor on the step sizes, θ_s ← θ_s − lr·η_s·u_s",
                   low=0.0, space=LogUniform(1e-2, 1.0)),
            HParam("lambda_int", float, 10.0, "λ_int: strength of the cubic regularisation "
                   "(order 3)", low=0.0, low_open=True, space=LogUniform(1.0, 100.0),
                   scope=OPTIMIZER),
            HParam("order", int, 3, "2: η = H̄⁻¹ḡ; 3: cubic-regularised with diag(D)",
                   choices=(2, 3), scope=OPTIMIZER),
            HParam("period", int, 10, "recompute ḡ, H̄, D every `period` steps", low=1,
                   scope=OPTIMIZER),
            HParam("eta_ema", float, 0.5, "EMA coefficient β of η (0: no smoothing)",
                   low=0.0, high=1.0, high_open=True, scope=OPTIMIZER),
            HParam("clip_negative", bool, True, "clip negative step sizes to 0 (stability)",
                   scope=OPTIMIZER),
            HParam("direction", str, "sgd-momentum", "first-order direction u",
                   choices=DIRECTIONS, scope=OPTIMIZER),
            HParam("momentum", float, 0.9, "momentum μ of the direction (Adam: β₁)",
                   low=0.0, high=1.0, high_open=True, scope=OPTIMIZER),
            HParam("dampening", float, 0.9, "dampening τ of the SGD-momentum direction",
                   low=0.0, high=1.0, scope=OPTIMIZER),
            HParam("beta2", float, 0.999, "β₂ of the Adam direction", low=0.0, high=1.0,
                   high_open=True, scope=OPTIMIZER),
            HParam("partition", str, "tensor", "how parameters are split into subsets",
                   choices=PARTITIONS, scope=OPTIMIZER),
            HParam("safeguard", bool, True, "reject a recomputed step that raises the loss on "
                   "the current batch; raise the regularisation ×10 and re-solve",
                   scope=OPTIMIZER),
            HParam("recompute_growth", float, 2.0, "recompute ḡ, H̄, D before the period ends "
                   "once ‖u_s‖ of a moving subset has grown by this factor since the last "
                   "computation (None: fixed period, as the paper)", low=1.0, optional=True,
                   scope=OPTIMIZER),
            HParam("ema_before_clip", bool, False, "smooth the raw η and clip after (the paper "
                   "code's maintain_true_lrs); False: clip, then smooth", scope=OPTIMIZER),
            HParam("plateau_patience", int, None, "λ₁ plateau schedule: multiply λ₁ by "
                   "plateau_factor once the mean loss of a plateau_window has not improved "
                   "(rel. 1e-4) for more than this many windows (None: off; the paper: 0)",
                   low=0, optional=True, scope=OPTIMIZER),
            HParam("plateau_window", int, 500, "steps per plateau measurement (the paper: one "
                   "epoch)", low=1, scope=OPTIMIZER),
            HParam("plateau_factor", float, 0.5, "factor on λ₁ at a plateau (the paper: 0.5)",
                   low=0.0, high=1.0, low_open=True, high_open=True, scope=OPTIMIZER),
            HParam("full_third_order", bool, False, "compute the full S×S×S tensor D for "
                   "inspection (S(S+1)/2 extra passes; the step uses its diagonal)",
                   scope=OPTIMIZER),
        ]
    )
    meta = OptimizerMeta(
        summary="one exact Newton step size per parameter subset from ḡ, H̄, D along u",
        paper="Wolinski, Adapting Newton's Method to Neural Networks through a Summary of "
        "Higher-Order Derivatives, arXiv 2312.03885",
        requires_closure=True,
        closure_options=("backward", "fresh"),
        conformance={"lr": 1.0, "period": 1},
        tags=("second-order", "exact", "partition"),
    )

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        params, group_of = [], []
        for gi, group in enumerate(self.param_groups):
            for p in group["params"]:
                if p.requires_grad:
                    params.append(p)
                    group_of.append(gi)
        names = [g.get("name", f"group{i}") for i, g in enumerate(self.param_groups)]
        subsets = build_partition(self.optimizer_hparams["partition"], params, model=self.model,
                                  group_of=group_of, group_names=names)
        self._params: list[Tensor] = params
        self._group_of: list[int] = group_of
        self._subset_names = tuple(n for n, _ in subsets)
        self._subsets = [idx for _, idx in subsets]
        self._subset_of = [0] * len(params)
        for s, idx in enumerate(self._subsets):
            for k in idx:
                self._subset_of[k] = s

    @property
    def subset_names(self) -> tuple[str, ...]:
        """Names of the S subsets, in the order of η's entries."""
        return self._subset_names

    @property
    def last_tensors(self) -> GroupedNewtonTensors | None:
        """The last ḡ, H̄, D and η (``None`` before the first computation)."""
        t = self.curv_state.get("tensors")
        if t is None:
            return None
        return GroupedNewtonTensors(self._subset_names, t["gbar"], t["hbar"], t.get("d"),
                                    t["eta_raw"], self.curv_state["eta"], t["step"],
                                    float(t.get("reg_scale", 1.0)))

    @property
    def learning_rates(self) -> dict[str, float]:
        """The per-subset learning rates in use, λ₁·η_s (λ₁ = ``lr`` × plateau scale), by subset name.

        These are the numbers the paper logs ("lrs"); they also appear in
        :attr:`stats` as ``lr/<subset>`` after every step, so the harness
        records them with the other counters. Empty before the first step.
        """
        eta = self.curv_state.get("eta")
        if eta is None:
            return {}
        lr = self._lr_vector()
        return {n: float(lr[i] * eta[i]) for i, n in enumerate(self._subset_names)}

    # ------------------------------------------------------------------- step
    def _lr_vector(self) -> Tensor:
        """λ₁ of each subset (its first parameter's group ``lr`` × the plateau scale), float64."""
        scale = float(self.curv_state.get("lr_scale", 1.0))
        return torch.tensor([self.param_groups[self._group_of[idx[0]]]["lr"] * scale
                             for idx in self._subsets], dtype=torch.float64)

    def _solve(self, tensors, sigma: float = 1.0) -> SolveResult:
        hp = self.optimizer_hparams
        if hp["order"] == 2:
            out = newton_step_sizes(tensors.hbar, tensors.gbar)
            return replace(out, eta=out.eta / sigma)
        return cubic_step_sizes(tensors.hbar, tensors.gbar, tensors.d_diag, sigma * hp["lambda_int"])

    def _subset_norms(self, tensors: list[Tensor]) -> Tensor:
        """‖x_s‖ per subset (float64, ``(S,)``) of per-parameter tensors ``x``."""
        per = torch.stack([torch.linalg.vector_norm(x.detach()).to(torch.float64) for x in tensors])
        index = torch.tensor(self._subset_of)
        return torch.zeros(len(self._subsets), dtype=torch.float64).index_add_(
            0, index, per.cpu().pow(2)).sqrt()

    def _candidate(self, dirs: list[Tensor | None], eta: Tensor) -> list[tuple[Tensor, Tensor]]:
        """(p, p − λ₁·η_s·u_s) for every parameter that moves."""
        scale = float(self.curv_state.get("lr_scale", 1.0))
        out = []
        with torch.no_grad():
            for k, (p, d) in enumerate(zip(self._params, dirs)):
                lr = self.param_groups[self._group_of[k]]["lr"] * scale
                step_size = float(eta[self._subset_of[k]])
                if d is None or lr == 0 or step_size == 0.0:
                    continue
                # d · scalar (not alpha=) so that an overflow yields inf instead of raising
                out.append((p, p - d * (lr * step_size)))
        return out

    def _predicted(self, tensors, eta: Tensor, lam: float, active: list[int] | None = None) -> float:
        r"""Model decrease ḡᵀe − ½eᵀH̄e − (λ/6)‖𝒟e‖³ at e_s = λ₁·η_s (order 2: no cubic term)."""
        active = list(range(len(self._subsets))) if active is None else active
        e = self._lr_vector()[active] * eta.to(torch.float64)
        pred = float(tensors.gbar @ e - 0.5 * e @ tensors.hbar @ e)
        if tensors.d is not None:
            # the solver's 𝒟 (negligible d_s count as 0: unregularised subsets)
            d = effective_d(tensors.hbar, tensors.d_diag)
            pred -= lam / 6.0 * float(torch.linalg.vector_norm(d * e)) ** 3
        return pred

    def _trial_ratio(self, closure, new_params: list[tuple[Tensor, Tensor]], loss0: float,
                     pred: float) -> float:
        r"""ρ = actual decrease on the current batch / predicted decrease (acceptance: ρ ≥ ``RHO_MIN``).

        No move gives ρ = 1; a non-finite candidate or trial loss, or no actual
        decrease, gives ρ = −inf; a model that predicts no decrease (pred ≤ 0,
        e.g. at a smoothed η) gives ρ = 1 when the loss decreases. The trial
        forward pass leaves no trace: parameters *and* the model's buffers
        (BatchNorm running statistics, counters) are restored afterwards.
        """
        if not new_params:
            return 1.0
        if not all_finite(v for _, v in new_params):
            return float("-inf")
        buffers = [] if self.model is None else list(self.model.buffers())
        with torch.no_grad():
            old = [p.detach().clone() for p, _ in new_params]
            old_buffers = [b.clone() for b in buffers]
            for p, v in new_params:
                p.copy_(v)
        try:
            trial = float(call_closure(closure, who=self.name, backward=False).detach())
        finally:
            with torch.no_grad():
                for (p, _), o in zip(new_params, old):
                    p.copy_(o)
                for b, o in zip(buffers, old_buffers):
                    b.copy_(o)
        actual = loss0 - trial
        if not actual > 0:
            return float("-inf")
        return 1.0 if pred <= 0 else actual / pred

    def _scatter(self, values: Tensor, active: list[int], fill: Tensor | None = None) -> Tensor:
        """A length-S vector: ``values`` at the ``active`` subsets, ``fill`` (or 0) elsewhere."""
        if len(active) == len(self._subsets):
            return values
        out = torch.zeros(len(self._subsets), dtype=values.dtype) if fill is None else fill.clone()
        out[active] = values
        return out

    def _smooth(self, eta_raw: Tensor, old_raw: Tensor | None) -> tuple[Tensor, Tensor]:
        """(η to use, the value the EMA keeps) from a new solution and the EMA's last value."""
        hp = self.optimizer_hparams
        beta, clip = hp["eta_ema"], hp["clip_negative"]
        if hp["ema_before_clip"]:  # the paper's code: smooth the raw η, clip for use
            kept = eta_raw.clone() if old_raw is None else beta * old_raw + (1.0 - beta) * eta_raw
            return (kept.clamp(min=0.0) if clip else kept), kept
        new = eta_raw.clamp(min=0.0) if clip else eta_raw
        kept = new.clone() if old_raw is None else beta * old_raw + (1.0 - beta) * new
        return kept, kept

    def _step_sizes(self, tensors, closure, dirs, loss0: float | None,
                    active: list[int], *, smooth: bool = True) -> StepSizes:
        """Solve, clip, smooth and (safeguard) accept the step sizes of the ``active`` subsets.

        ``smooth=False`` drops the EMA history (an early computation: the old η belong to a
        direction of another magnitude).
        """
        hp = self.optimizer_hparams
        cs = self.curv_state
        sigma0 = float(cs.get("reg_scale", 1.0))
        sigma = sigma0
        old = cs.get("eta_kept", cs.get("eta")) if smooth else None
        old = None if old is None else old[active]
        check = hp["safeguard"] and loss0 is not None and loss0 == loss0
        counts = {"solve_failures": 0}
        for _ in range(MAX_REJECTIONS + 1):
            sol = self._solve(tensors, sigma)
            counts["solve_failures"] += int(not sol.ok)
            if sol.dropped:
                counts["dropped_subsets"] = counts.get("dropped_subsets", 0) + len(sol.dropped)
            eta, kept = self._smooth(sol.eta, old)
            if not check:
                return StepSizes(sol.eta, eta, sigma, kept=kept, counts=counts)
            rho = self._trial_ratio(closure, self._candidate(dirs, self._scatter(eta, active)),
                                    loss0,
                                    self._predicted(tensors, eta, sigma * hp["lambda_int"], active))
            if rho >= RHO_MIN:
                reg = max(1.0, sigma / REG_GROWTH) if rho >= RHO_GOOD else sigma
                return StepSizes(sol.eta, eta, sigma, reg_scale=reg, kept=kept, counts=counts)
            counts["rejected_steps"] = counts.get("rejected_steps", 0) + 1
            sigma *= REG_GROWTH
            old = None  # the smoothed η belongs to older directions: retry without it
        counts["safeguard_failures"] = 1
        zero = torch.zeros_like(sol.eta)
        return StepSizes(sol.eta, zero, sigma0, kept=zero, counts=counts)

    def _full_tensors(self, tensors, sizes: StepSizes, active: list[int], t: int) -> dict[str, Any]:
        """The tensors for ``curv_state`` over all S subsets (frozen subsets: zeros)."""
        out = {"gbar": tensors.gbar, "hbar": tensors.hbar, "d": tensors.d,
               "eta_raw": sizes.eta_raw, "step": t, "reg_scale": sizes.sigma}
        if len(active) == len(self._subsets):
            return out
        S, idx = len(self._subsets), torch.tensor(active)
        hbar = torch.zeros(S, S, dtype=torch.float64)
        hbar[idx[:, None], idx[None, :]] = tensors.hbar
        out.update(gbar=self._scatter(tensors.gbar, active), hbar=hbar,
                   d=None if tensors.d is None else self._scatter(tensors.d_diag, active),
                   eta_raw=self._scatter(sizes.eta_raw, active))
        return out

    def _due(self, t: int, norms: Tensor | None) -> tuple[bool, bool]:
        """(recompute now?, early?): the period is over, or a moving subset's ‖u_s‖ grew ≥ κ×."""
        cs = self.curv_state
        last = cs.get("tensors")
        if last is None or "eta" not in cs:
            return True, False
        if t - int(last["step"]) >= self.optimizer_hparams["period"]:
            return True, False
        kappa = self.optimizer_hparams["recompute_growth"]
        if kappa is None or norms is None or "u_norm" not in cs:
            return False, False
        grown = (cs["eta"] > 0) & (norms > kappa * cs["u_norm"])
        return bool(grown.any()), bool(grown.any())

    def _check_step_length(self, eta: Tensor, norms: Tensor, t: int) -> None:
        """Warn once when a recomputed step moves a subset by more than ``HUGE_STEP``× its norm."""
        if self.curv_state.get("warned_huge_step"):
            return
        steps = self._lr_vector() * eta.to(torch.float64) * norms
        sizes = self._subset_norms(self._params)
        ratio = torch.where(sizes > 0, steps / sizes.clamp_min(torch.finfo(torch.float64).tiny),
                            torch.zeros_like(steps))
        worst = int(ratio.argmax())
        if not ratio[worst] > HUGE_STEP:
            return
        self.curv_state["warned_huge_step"] = True
        warnings.warn(
            f"{self.name}: at step {t} the step sizes move subset {self._subset_names[worst]!r} "
            f"by {float(ratio[worst]):.3g}× its norm (η = {float(eta[worst]):.3g}); the Taylor "
            "model is not trusted that far (a parameter with a mathematically zero gradient, "
            "e.g. a bias before a normalisation layer, gives such η). If the loss degrades, "
            "lower lr (λ₁), raise lambda_int, freeze that parameter or use partition='layer'. "
            "Reported once.",
            GroupedNewtonWarning, stacklevel=5)

    def _plateau(self, loss: float) -> dict[str, Any]:
        """The paper's λ₁ schedule: updates of ``curv_state`` after a step with this loss."""
        hp = self.optimizer_hparams
        if hp["plateau_patience"] is None or not loss == loss:
            return {}
        st = dict(self.curv_state.get("plateau", {"sum": 0.0, "n": 0, "best": math.inf, "bad": 0}))
        st["sum"] += loss
        st["n"] += 1
        out: dict[str, Any] = {"plateau": st}
        if st["n"] < hp["plateau_window"]:
            return out
        mean = st["sum"] / st["n"]
        st["sum"], st["n"] = 0.0, 0
        if mean < st["best"] * (1.0 - PLATEAU_THRESHOLD):
            st["best"], st["bad"] = mean, 0
        else:
            st["bad"] += 1
        if st["bad"] > hp["plateau_patience"]:
            # as the paper's ReduceDampingOnPlateau: scale λ₁, restart from the current mean
            out["lr_scale"] = float(self.curv_state.get("lr_scale", 1.0)) * hp["plateau_factor"]
            st["bad"], st["best"] = 0, mean
        return out

    def _update(self, closure: Callable[..., Tensor] | None, evaluation: Evaluation) -> Step | Skip:
        hp = self.optimizer_hparams
        cs = self.curv_state
        loss = evaluation.loss
        loss0 = None if loss is None else float(loss.detach())
        t = int(cs.get("step", 0))
        params = self._params
        dirs, new_states = direction_step(
            hp["direction"], [p.grad for p in params], [self.state[p] for p in params],
            momentum=hp["momentum"], dampening=hp["dampening"], beta2=hp["beta2"],
            step=int(cs.get("direction_steps", 0)) + 1,
        )
        u = [torch.zeros_like(p) if d is None else d for p, d in zip(params, dirs)]
        updates: dict[str, Any] = {"step": t + 1, "direction_steps": int(cs.get("direction_steps", 0)) + 1}
        counts: dict[str, int] = {}
        norms = self._subset_norms(u) if hp["recompute_growth"] is not None else None
        due, early = self._due(t, norms)
        if due:
            # parameters frozen since construction (requires_grad=False) take no part
            live = [k for k, p in enumerate(params) if p.requires_grad]
            where = {k: n for n, k in enumerate(live)}
            subsets = [[where[k] for k in idx if k in where] for idx in self._subsets]
            active = [i for i, idx in enumerate(subsets) if idx]
            if not active:
                return Step()
            fresh = call_closure(closure, who=self.name, backward=False, fresh=True)
            tensors = partition_tensors(fresh, [params[k] for k in live], [u[k] for k in live],
                                        [subsets[i] for i in active], order=hp["order"],
                                        full=hp["full_third_order"] and len(active) == len(subsets))
            del fresh
            if not all_finite([tensors.gbar, tensors.hbar, tensors.d]):
                return Skip("non-finite partition tensors")
            sizes = self._step_sizes(tensors, closure, dirs, loss0, active, smooth=not early)
            counts = {"tensor_computations": 1, "early_computations": int(early), **sizes.counts}
            if hp["clip_negative"]:
                counts["clipped_step_sizes"] = int((sizes.eta_raw < 0).sum())
            if sizes.reg_scale is not None:
                updates["reg_scale"] = sizes.reg_scale
            updates["eta"] = self._scatter(sizes.eta, active, cs.get("eta"))
            updates["eta_kept"] = self._scatter(sizes.kept, active, cs.get("eta_kept", cs.get("eta")))
            updates["tensors"] = self._full_tensors(tensors, sizes, active, t)
            updates["u_norm"] = self._subset_norms(u) if norms is None else norms
        eta = updates.get("eta", cs.get("eta"))
        new_params = self._candidate(dirs, eta)
        with torch.no_grad():
            if not all_finite(v for _, v in new_params):
                return Skip("non-finite update (overflow of lr·η·u)")
        if due:
            self._check_step_length(eta, updates["u_norm"], t)
        if loss0 is not None:
            updates.update(self._plateau(loss0))
        with torch.no_grad():
            cs.update(updates)
            for p, st in zip(params, new_states):
                if st:
                    self.state[p].update(st)
            for p, v in new_params:
                p.copy_(v)
        values = {f"lr/{n}": v for n, v in self.learning_rates.items()}
        values["reg_scale"] = float(cs.get("reg_scale", 1.0))
        values["lr_scale"] = float(cs.get("lr_scale", 1.0))
        return Step(counts=counts, values=values)

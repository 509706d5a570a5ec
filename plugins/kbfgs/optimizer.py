r"""K-BFGS and K-BFGS(L) (Goldfarb, Ren & Bahamou, NeurIPS 2020, arXiv 2006.08877).

Block-diagonal over ``Linear`` layers. For a layer with homogeneous input
:math:`a = (x, 1)` and pre-activation :math:`h = W a` (bias folded into the
last column of :math:`W`), the Hessian block is approximated by the
Kronecker product :math:`A \otimes G`, whose inverse is kept as
:math:`H_a \otimes H_g`. One step on the mini-batch :math:`B`:

1. Evaluate the loss and gradients at :math:`\theta` (hooks record
   :math:`\frac1N\sum a a^\top`, :math:`\bar a`, :math:`\bar h`,
   :math:`\bar g = \overline{\partial \ell/\partial h}`).
2. :math:`A \leftarrow \beta A + (1-\beta)\frac1N\sum a a^\top`
   (:math:`A` starts at the first batch's value, and
   :math:`H_a = (A + \lambda_A I)^{-1}` is inverted explicitly that once);
   afterwards :math:`H_a` gets one Hessian-action BFGS update per step with
   :math:`s_a = H_a \bar a`, :math:`y_a = (A + \lambda_A I) s_a`,
   :math:`\lambda_A = \sqrt\lambda`.
3. Gradient momentum :math:`M \leftarrow \mu M + (1-\mu)(\nabla_W L +
   w W)`; direction :math:`P = H_g M H_a`; :math:`W \leftarrow W - \alpha P`.
4. Evaluate the same batch again at the new point :math:`\theta^+` (with
   ``backward=False`` and ``torch.autograd.grad`` w.r.t. the layer outputs
   when the closure accepts that keyword, as :func:`curvlab.closure` does:
   no weight gradients are computed and ``.grad`` keeps the gradients at
   :math:`\theta`; a plain closure is just called again, leaving the
   gradients at :math:`\theta^+` in ``.grad``);
   :math:`s = \bar h(\theta^+) - \bar h(\theta)`,
   :math:`y = \bar g(\theta^+) - \bar g(\theta)`, momentum
   :math:`s \leftarrow \mu_{sy} s + (1-\mu_{sy}) s_{new}` (same for
   :math:`y`), double damping (Powell with :math:`\mu_1`, LM with
   :math:`\mu_2 = \sqrt\lambda`) against the current :math:`H_g`, then a BFGS
   update of :math:`H_g` (K-BFGS) or a push into the L-BFGS memory
   (K-BFGS(L), :math:`H_0 = I`). Unsafe pairs are skipped and counted.

:math:`\bar g` is the mean per-example gradient of the *summed* loss (the
closure's loss is taken as a batch mean and its gradient scaled by the
number of rows :math:`N`; a ``loss_fn`` with ``reduction="sum"`` is not
scaled); see :mod:`curvlab_plugins.kbfgs.capture`. Counters in
``optimizer.stats``: ``pairs`` (pairs formed), ``powell_damped``,
``lm_damped``, ``skipped_pairs`` (pairs not used: zero, non-finite, or not
safely positive after damping).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from curvlab.closure import call_closure
from curvlab.curvature.bfgs import bfgs_inverse_update, safe_curvature
from curvlab.curvature.double_damping import double_damping
from curvlab.curvature.layers import find_layers
from curvlab.curvature.lbfgs import LBFGSMemory
from curvlab.hparams import HParam, Schema
from curvlab.optimizer import CurvatureOptimizer, OptimizerMeta
from curvlab_plugins.kbfgs.capture import PreactivationCapture

__all__ = ["KBFGS", "KBFGSL"]

_PAPER = (
    "Goldfarb, Ren & Bahamou, Practical Quasi-Newton Methods for Training Deep Neural "
    "Networks, NeurIPS 2020, arXiv 2006.08877"
)

_COMMON = [
    HParam("lr", float, 0.3, "step size α", low=0.0, grid=(1.0, 0.3, 0.1, 0.03)),
    HParam("damping", float, 0.3, "λ: H_a damping λ_A = √λ and LM threshold μ₂ = √λ",
           low=0.0, high=1.0, low_open=True, grid=(0.3, 0.1, 0.03)),
    HParam("stat_decay", float, 0.9, "EMA decay β of A = E[a aᵀ]", low=0.0, high=1.0,
           high_open=True),
    HParam("momentum", float, 0.9, "gradient momentum μ: M ← μ M + (1-μ) g", low=0.0,
           high=1.0, high_open=True),
    HParam("sy_momentum", float, 0.9, "momentum of the pre-activation pair (s, y)", low=0.0,
           high=1.0, high_open=True),
    HParam("mu1", float, 0.2, "Powell damping threshold μ₁", low=0.0, high=1.0, low_open=True,
           high_open=True),
    HParam("weight_decay", float, 1e-5, "L2 coefficient w added to the gradient", low=0.0),
]


def _layer_matrix(weight: Tensor, bias: Tensor | None) -> Tensor:
    """``[W | b]`` of shape ``(out, in + 1)`` (or ``W`` without bias)."""
    return weight if bias is None else torch.cat([weight, bias[:, None]], dim=1)


def _accepts_backward(closure: Callable[..., Tensor]) -> bool:
    """Whether the closure takes the contract's ``backward=`` keyword (or ``**kwargs``)."""
    try:
        params = inspect.signature(closure).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "backward" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _sums_finite(tensors: list[Tensor]) -> bool:
    """True when every tensor is finite (a sum is NaN/Inf iff an entry is, or it overflows)."""
    return not tensors or bool(torch.isfinite(torch.stack([t.sum() for t in tensors])).all())


class _KBFGSBase(CurvatureOptimizer):
    """Shared K-BFGS machinery; subclasses choose how H_g is stored and applied."""

    meta = OptimizerMeta(summary="")

    # ----------------------------------------------------------- H_g storage
    def _hg_init(self, dim: int, like: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        raise NotImplementedError

    def _hg_apply(self, entry: dict[str, Tensor], v: Tensor, group: dict[str, Any]) -> Tensor:
        raise NotImplementedError

    def _hg_update(
        self, entry: dict[str, Tensor], s: Tensor, y: Tensor, group: dict[str, Any]
    ) -> tuple[dict[str, Tensor], Tensor]:
        raise NotImplementedError

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        model = self.require_model()
        layers = find_layers(model, (nn.Linear,), who=self.name)
        group_of = {id(p): g for g in self.param_groups for p in g["params"]}
        owned = {id(p) for m in layers.values() for p in m.parameters(recurse=False)}
        for g in self.param_groups:
            for p in g["params"]:
                if id(p) not in owned:
                    raise ValueError(
                        f"{self.name} optimises only parameters of Linear layers of the model; "
                        f"got a parameter of shape {tuple(p.shape)} outside them"
                    )
        self._layers = {n: m for n, m in layers.items() if id(m.weight) in group_of}
        self._group_of = group_of
        loss_is_sum = getattr(self.loss_fn, "reduction", None) == "sum"
        self._capture = PreactivationCapture(self._layers, loss_is_sum=loss_is_sum, who=self.name)
        self._first: dict[str, dict[str, Tensor]] = {}

    def _evaluate(self, closure: Callable[..., Tensor]) -> Tensor:
        with self._capture.recording(inputs=True) as records:
            loss = call_closure(closure, who=self.name)
        self._first = records
        return loss

    # ------------------------------------------------------------------- step
    @torch.no_grad()
    def _update(self, closure: Callable[..., Tensor] | None, loss: Tensor | None) -> None:
        assert closure is not None  # meta.requires_closure
        first, self._first = self._first, {}
        new_curv: dict[str, dict[str, Tensor]] = {}
        new_mom: dict[Tensor, Tensor] = {}
        directions: list[tuple[nn.Module, Tensor]] = []
        for name, mod in self._layers.items():
            rec = first.get(name, {})
            if mod.weight.grad is None or "g_mean" not in rec:
                continue
            group = self._group_of[id(mod.weight)]
            entry = self._input_side(name, rec, mod.weight, group)
            M = []
            for p in (mod.weight, mod.bias):
                if p is None:
                    continue
                g = self._group_of.get(id(p), group)
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                if g["weight_decay"] != 0:
                    grad = grad.add(p, alpha=g["weight_decay"])
                buf = self.state[p].get("momentum_buffer")
                mu = g["momentum"]
                m = grad * (1 - mu) if buf is None else buf * mu + grad * (1 - mu)
                new_mom[p] = m
                M.append(m)
            Mat = _layer_matrix(M[0], M[1] if len(M) > 1 else None)
            P = self._hg_apply(entry, Mat, group) @ entry["H_a"]
            new_curv[name] = entry
            directions.append((mod, P))
        # new A and H_a, and P (which involves H_g and the momenta); one sync for all layers
        checks = [e[k] for e in new_curv.values() for k in ("A", "H_a")]
        checks += [P for _, P in directions]
        if not _sums_finite(checks):
            self.skip_step("non-finite K-BFGS curvature or direction")
            return
        # commit phase 1
        for p, m in new_mom.items():
            self.state[p]["momentum_buffer"] = m
        self.curv_state.update(new_curv)
        for mod, P in directions:
            cols = mod.weight.shape[1]
            mod.weight.sub_(P[:, :cols] * self._group_of[id(mod.weight)]["lr"])
            if mod.bias is not None and id(mod.bias) in self._group_of:
                mod.bias.sub_(P[:, cols] * self._group_of[id(mod.bias)]["lr"])
        self._pre_activation_pairs(closure, first, list(new_curv))

    def _input_side(
        self, name: str, rec: dict[str, Tensor], weight: Tensor, group: dict[str, Any]
    ) -> dict[str, Tensor]:
        """New state entry with A (EMA) and H_a (explicit inverse once, then Hessian-action BFGS)."""
        lam_a = math.sqrt(group["damping"])
        old = self.curv_state.get(name)
        if old is None:
            A = rec["A"]
            eye = torch.eye(A.shape[0], dtype=torch.float64, device=A.device)
            L, info = torch.linalg.cholesky_ex(A.double() + lam_a * eye)
            H_a = torch.cholesky_inverse(L) if int(info) == 0 else torch.full_like(eye, math.nan)
            H_a = ((H_a + H_a.T) / 2).to(A.dtype)
            d_out = weight.shape[0]
            zeros = torch.zeros(d_out, dtype=weight.dtype, device=weight.device)
            return {"A": A, "H_a": H_a, "s": zeros, "y": zeros.clone(),
                    **self._hg_init(d_out, weight, group)}
        entry = dict(old)
        beta = group["stat_decay"]
        A = old["A"] * beta + rec["A"] * (1 - beta)
        s_a = old["H_a"] @ rec["a_mean"]
        y_a = A @ s_a + lam_a * s_a
        entry["A"] = A
        entry["H_a"], _ = bfgs_inverse_update(old["H_a"], s_a, y_a)
        return entry

    def _pre_activation_pairs(
        self, closure: Callable[..., Tensor], first: dict[str, dict[str, Tensor]], names: list[str]
    ) -> None:
        """Second evaluation at θ⁺ on the same batch, then the damped H_g updates."""
        with self._capture.recording(inputs=False) as second, torch.enable_grad():
            if _accepts_backward(closure):
                # only ∂L/∂h is needed: skip the weight gradients and leave .grad alone
                loss = call_closure(closure, who=self.name, backward=False)
                outs = list(self._capture.outputs.values())
                if outs and isinstance(loss, Tensor) and loss.requires_grad:
                    torch.autograd.grad(loss, outs, allow_unused=True)
            else:
                call_closure(closure, who=self.name)
        flags = []
        for name in names:
            r0, r1 = first[name], second.get(name, {})
            if "g_mean" not in r1:
                flags.append(torch.tensor([False, False, True]))
                continue
            group = self._group_of[id(self._layers[name].weight)]
            entry = self.curv_state[name]
            s_new, y_new = r1["h_mean"] - r0["h_mean"], r1["g_mean"] - r0["g_mean"]
            fresh = torch.isfinite(s_new).all() & torch.isfinite(y_new).all()
            c = group["sy_momentum"]
            s = torch.where(fresh, entry["s"] * c + s_new * (1 - c), entry["s"])
            y = torch.where(fresh, entry["y"] * c + y_new * (1 - c), entry["y"])
            pair = double_damping(
                s, y, self._hg_apply(entry, y, group), mu1=group["mu1"],
                mu2=math.sqrt(group["damping"]),
            )
            ps, py = pair.s, pair.y
            hg, applied = self._hg_update(entry, ps, py, group)
            applied = applied & pair.valid & fresh
            self.curv_state[name] = {**entry, "s": s, "y": y, **hg}
            flags.append(torch.stack([pair.powell, pair.lm, ~applied]).cpu())
        if flags:
            powell, lm, skipped = torch.stack(flags).sum(0).tolist()
            self.count("pairs", len(flags))
            self.count("powell_damped", powell)
            self.count("lm_damped", lm)
            self.count("skipped_pairs", skipped)


class KBFGS(_KBFGSBase):
    r"""K-BFGS: Kronecker-factored BFGS with double damping, dense :math:`H_g`.

    See :mod:`curvlab_plugins.kbfgs.optimizer` for the algorithm. Each
    ``Linear`` layer keeps :math:`A`, :math:`H_a` (``(in+1)²``), :math:`H_g`
    (``out²``) and the smoothed pair :math:`(s, y)` in ``curv_state[layer]``;
    momentum buffers live in ``state[p]``. Needs ``step(closure)``: the closure
    is called twice per step on the same batch.

    Example:
        >>> import torch, curvlab
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
        >>> opt = curvlab.create("kbfgs", model, torch.nn.MSELoss(), lr=0.1)
        >>> x, y = torch.randn(16, 3), torch.randn(16, 2)
        >>> for _ in range(3):
        ...     _ = opt.step(curvlab.closure(model, torch.nn.MSELoss(), x, y))
        >>> opt.stats["pairs"], sorted(opt.curv_state["0"])
        (6, ['A', 'H_a', 'H_g', 's', 'y'])
    """

    name = "kbfgs"
    schema = Schema(_COMMON)
    meta = OptimizerMeta(
        summary="K-BFGS: Kronecker-factored BFGS with double damping (dense H_g)",
        paper=_PAPER,
        layers=("Linear",),
        requires_closure=True,
        conformance={"lr": 0.3},
        tags=("quasi-newton", "kronecker"),
    )

    def _hg_init(self, dim: int, like: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        return {"H_g": torch.eye(dim, dtype=like.dtype, device=like.device)}

    def _hg_apply(self, entry: dict[str, Tensor], v: Tensor, group: dict[str, Any]) -> Tensor:
        return entry["H_g"] @ v

    def _hg_update(
        self, entry: dict[str, Tensor], s: Tensor, y: Tensor, group: dict[str, Any]
    ) -> tuple[dict[str, Tensor], Tensor]:
        H, applied = bfgs_inverse_update(entry["H_g"], s, y)
        return {"H_g": H}, applied


class KBFGSL(_KBFGSBase):
    r"""K-BFGS(L): K-BFGS with :math:`H_g` applied by L-BFGS (memory ``memory``, :math:`H_0 = I`).

    Identical to :class:`KBFGS` except that :math:`H_g` is never formed: the
    damped pairs are kept in ``curv_state[layer]["S"]``/``["Y"]`` (``(k,
    out)``, oldest first) and applied with the two-loop recursion. With
    ``memory`` at least the number of steps it equals K-BFGS.

    Example:
        >>> import torch, curvlab
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2))
        >>> opt = curvlab.create("K-BFGS(L)", model, torch.nn.MSELoss(), memory=2)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 2)
        >>> for _ in range(4):
        ...     _ = opt.step(curvlab.closure(model, torch.nn.MSELoss(), x, y))
        >>> opt.curv_state["0"]["S"].shape[0] <= 2
        True
    """

    name = "kbfgsl"
    schema = Schema([*_COMMON, HParam("memory", int, 100, "L-BFGS memory (pairs kept per layer)",
                                      low=1)])
    meta = OptimizerMeta(
        summary="K-BFGS(L): Kronecker-factored BFGS with double damping, L-BFGS for H_g",
        paper=_PAPER,
        layers=("Linear",),
        requires_closure=True,
        conformance={"lr": 0.3},
        tags=("quasi-newton", "kronecker", "limited-memory"),
    )

    def _memory(self, entry: dict[str, Tensor], group: dict[str, Any]) -> LBFGSMemory:
        return LBFGSMemory.from_state(entry, size=group["memory"])

    def _hg_init(self, dim: int, like: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        return LBFGSMemory(dim, group["memory"], dtype=like.dtype, device=like.device).state_dict()

    def _hg_apply(self, entry: dict[str, Tensor], v: Tensor, group: dict[str, Any]) -> Tensor:
        return self._memory(entry, group).apply(v)

    def _hg_update(
        self, entry: dict[str, Tensor], s: Tensor, y: Tensor, group: dict[str, Any]
    ) -> tuple[dict[str, Tensor], Tensor]:
        mem = self._memory(entry, group)
        applied = safe_curvature(s, y)
        if bool(applied):
            mem.push(s, y)
        return mem.state_dict(), applied

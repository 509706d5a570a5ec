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

Loss normalisation: the hyper-parameters refer to the paper's loss, the
mean over examples of a per-example loss summed over outputs; gradients and
:math:`\bar g` (the mean per-example gradient of the summed loss) are
converted to it from the ``loss_fn``'s reduction and the model's output
shape (:mod:`curvlab_plugins.kbfgs.normalisation`; e.g. ×64 for a
``BCEWithLogitsLoss()`` with the default mean reduction on 64 pixels), so
the paper's defaults mean the same whatever the reduction. Counters in
``optimizer.stats``: ``pairs`` (pairs formed), ``powell_damped``,
``lm_damped``, ``skipped_pairs`` (pairs not used: zero, non-finite, or not
safely positive after damping; then :math:`H_g` is left unchanged).

Scopes: every hyper-parameter is per param group (a layer uses the group
of its weight). Shapes per ``Linear(d_in, d_out)`` layer: :math:`A, H_a`
``(d_in + 1, d_in + 1)`` with a trainable bias (``(d_in, d_in)`` without
one, or with a frozen one: a frozen bias is a constant, not part of the
block), :math:`H_g` ``(d_out, d_out)``, :math:`s, y` ``(d_out,)``. Frozen
parameters are never moved; a layer with a frozen weight and a trainable
bias is refused at construction. The forward hooks exist only during the
two evaluations of a step (:mod:`curvlab_plugins.kbfgs.capture`).

Cost: the per-layer work is a few matrix products (the EMA of :math:`A` is
one ``addmm``, :math:`P` two products); the small scalar algebra of all
layers is batched (BFGS updates as :math:`H + V^\top C V` with :math:`C`
from the Gram matrix of :math:`V = [s; y; Hy]`, double damping on the
concatenated pre-activation vectors, see
:mod:`curvlab_plugins.kbfgs.blocks`), and each phase syncs the device once:
after the direction (a non-finite :math:`A`, :math:`H_a` or :math:`P`, overflow
included, skips the whole step) and after the pair updates (for the counters).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from curvlab.closure import accepts, call_closure
from curvlab.curvature.bfgs import bfgs_gram_coefficients
from curvlab.curvature.coverage import layer_coverage
from curvlab.curvature.descent import descend_
from curvlab.curvature.double_damping import DampedPair, double_damping, double_damping_blocks
from curvlab.curvature.finite import all_finite, finite_flags
from curvlab.curvature.lbfgs import LBFGSMemory, compact_apply, compact_factors
from curvlab.hparams import HParam, LogUniform, Schema
from curvlab.optimizer import CurvatureOptimizer, Evaluation, OptimizerMeta, Skip, Step
from curvlab_plugins.kbfgs.blocks import Blocks
from curvlab_plugins.kbfgs.capture import PreactivationCapture, Recording
from curvlab_plugins.kbfgs.normalisation import paper_loss_scale

__all__ = ["KBFGS", "KBFGSL", "LayerStatistics"]

_PAPER = (
    "Goldfarb, Ren & Bahamou, Practical Quasi-Newton Methods for Training Deep Neural "
    "Networks, NeurIPS 2020, arXiv 2006.08877"
)

_COMMON = [
    HParam("lr", float, 0.3, "step size α", low=0.0, space=LogUniform(1e-2, 1.0)),
    HParam("damping", float, 0.3, "λ: H_a damping λ_A = √λ and LM threshold μ₂ = √λ",
           low=0.0, high=1.0, low_open=True, space=LogUniform(1e-2, 1.0)),
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


def _meta(summary: str, *tags: str) -> OptimizerMeta:
    """What K-BFGS and K-BFGS(L) declare alike (Linear layers, a closure evaluated twice)."""
    return OptimizerMeta(summary=summary, paper=_PAPER, layers=("Linear",), requires_closure=True,
                         conformance={"lr": 0.3}, tags=("quasi-newton", "kronecker", *tags),
                         closure_reason=(
                             "it evaluates the loss a second time on the same batch after moving "
                             "the weights (its curvature pairs are the change of the layer "
                             "inputs and output gradients), which only a closure can do; any "
                             "closure works, also one without keywords (PyTorch Lightning's)"))


@dataclass(frozen=True)
class LayerStatistics:
    r"""One evaluation's per-layer statistics, in the paper's loss normalisation.

    Attributes:
        records: ``{layer: {"h_mean", "g_mean", ["x"]}}`` with
            :math:`\bar g = c \sum_n \partial L/\partial h_n`
            (:mod:`~curvlab_plugins.kbfgs.capture`).
        scale: The factor :math:`c` (:func:`~curvlab_plugins.kbfgs.normalisation.paper_loss_scale`),
            also applied to the weight gradients.
    """

    records: dict[str, dict[str, Tensor]]
    scale: float


def _bfgs_blocks(Hs: list[Tensor], Vs: list[Tensor]) -> tuple[list[Tensor], Tensor]:
    r"""Guarded BFGS updates of several matrices, scalar algebra batched over them.

    ``Vs[b]`` is :math:`[s; y; H_b y]` (``(3, d_b)``, finite); returns the
    candidates :math:`H_b + V_b^\top C_b V_b` (``H_b`` itself, exactly, where
    the pair is rejected) and the ``(n,)`` acceptance flags. Overflow in a
    candidate is left for the caller's finiteness check.
    """
    C, ok = bfgs_gram_coefficients(torch.stack([V @ V.T for V in Vs]))
    return [torch.addmm(H, V.T, c @ V) for H, V, c in zip(Hs, Vs, C.unbind(0))], ok


class _KBFGSBase(CurvatureOptimizer):
    """Shared K-BFGS machinery; subclasses choose how H_g is stored and applied."""

    meta = OptimizerMeta(summary="")

    # ----------------------------------------------------------- H_g storage
    def _hg_init(self, dim: int, like: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        raise NotImplementedError

    def _hg_prepare(self, entry: dict[str, Tensor], group: dict[str, Any]) -> Any:
        """Whatever :meth:`_hg_apply` needs for this step (computed once per step)."""
        raise NotImplementedError

    def _hg_apply(self, prepared: Any, v: Tensor) -> Tensor:
        raise NotImplementedError

    def _hg_candidates(
        self, prepared: list[Any], s: list[Tensor], y: list[Tensor], blocks: Blocks,
        s_flat: Tensor, y_flat: Tensor,
    ) -> tuple[list[Any], Tensor, list[Tensor]]:
        """Candidates for the damped pairs: (per-layer candidates, ok flags (n,), tensors to check)."""
        raise NotImplementedError

    def _hg_commit(self, entry: dict[str, Tensor], candidate: Any, s: Tensor, y: Tensor,
                   group: dict[str, Any]) -> dict[str, Tensor]:
        raise NotImplementedError

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        model = self.require_model()
        coverage = layer_coverage(model, self.param_groups, (nn.Linear,), who=self.name)
        for name, mod in coverage.layers.items():
            if not coverage.trainable(mod.weight):
                raise ValueError(
                    f"{self.name} preconditions a layer's weight and bias together; model.{name} "
                    "has a trainable bias but a frozen weight (freeze both, or neither)"
                )
        self.coverage = coverage
        self._layers = dict(coverage.layers)
        #: the trainable bias of each layer (None: no bias, or a frozen one)
        self._bias = {n: (m.bias if coverage.trainable(m.bias) else None)
                      for n, m in self._layers.items()}
        self._capture = PreactivationCapture(self._layers, model=model, who=self.name)
        self._blocks: dict[tuple[str, ...], Blocks] = {}

    def _statistics(self, rec: Recording) -> LayerStatistics:
        r"""The recording in the paper's normalisation (:math:`\bar g = c\,` ``g_sum``)."""
        out = rec.model_output
        scale = paper_loss_scale(self.loss_fn, out) if out is not None else 1.0
        records = {}
        for name, r in rec.records.items():
            entry = {k: v for k, v in r.items() if k != "g_sum"}
            if "g_sum" in r:
                entry["g_mean"] = r["g_sum"].mul(scale) if scale != 1.0 else r["g_sum"]
            records[name] = entry
        return LayerStatistics(records, scale)

    def _evaluate(self, closure: Callable[..., Tensor]) -> Evaluation[LayerStatistics]:
        with self._capture.recording(inputs=True) as rec:
            loss = call_closure(closure, who=self.name)
        return Evaluation(loss, self._statistics(rec))

    def _blocks_for(self, names: list[str], like: Tensor) -> Blocks:
        """The (cached) concatenation layout of the layers' output widths."""
        key = tuple(names)
        if key not in self._blocks:
            dims = [self._layers[n].weight.shape[0] for n in names]
            self._blocks[key] = Blocks(dims, device=like.device)
        return self._blocks[key]

    # ------------------------------------------------------------------- step
    def _momenta(self, names: list[str], scale: float) -> dict[Tensor, Tensor]:
        r"""New gradient momenta :math:`\mu M + (1-\mu)(c\,g + w\,p)` (foreach, per hparam set)."""
        by_key: dict[tuple[float, float], list[Tensor]] = {}
        for name in names:
            for p in (self._layers[name].weight, self._bias[name]):
                if p is not None:
                    g = self.coverage.group(p)
                    by_key.setdefault((g["momentum"], g["weight_decay"]), []).append(p)
        new: dict[Tensor, Tensor] = {}
        for (mu, wd), ps in by_key.items():
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in ps]
            if scale != 1.0:  # to the paper's loss normalisation
                grads = torch._foreach_mul(grads, scale)
            if wd != 0:
                grads = torch._foreach_add(grads, ps, alpha=wd)
            bufs = [self.state[p].get("momentum_buffer") for p in ps]
            if all(b is None for b in bufs):
                ms = torch._foreach_mul(grads, 1 - mu)
            else:
                bufs = [torch.zeros_like(p) if b is None else b for p, b in zip(ps, bufs)]
                ms = torch._foreach_mul(bufs, mu)
                torch._foreach_add_(ms, grads, alpha=1 - mu)
            new.update(zip(ps, ms))
        return new

    @torch.no_grad()
    def _update(self, closure: Callable[..., Tensor] | None,
                evaluation: Evaluation[LayerStatistics]) -> Step | Skip:
        assert closure is not None and evaluation.data is not None  # meta.requires_closure
        self.coverage.check_gradients(self.name)
        first = evaluation.data.records
        names = [
            n for n, m in self._layers.items()
            if m.weight.grad is not None and "g_mean" in first.get(n, {})
        ]
        if not names:
            return Step()
        new_mom = self._momenta(names, evaluation.data.scale)
        entries: dict[str, dict[str, Tensor]] = {}
        upd_names, upd_H, upd_V = [], [], []
        for name in names:
            mod = self._layers[name]
            group = self.coverage.group(mod.weight)
            x = first[name]["x"]
            X = F.pad(x, (0, 1), value=1.0) if self._bias[name] is not None else x
            old = self.curv_state.get(name)
            if old is None:
                entries[name] = self._first_entry(X, mod.weight, group)
                continue
            # A ← βA + (1-β) XᵀX/N in one GEMM; Hessian-action pair s_a = H_a ā, y_a = (A + λ_A I) s_a
            beta = group["stat_decay"]
            A = torch.addmm(old["A"], X.T, X, beta=beta, alpha=(1 - beta) / X.shape[0])
            H_a = old["H_a"]
            s_a = H_a @ X.mean(0)
            y_a = torch.addmv(s_a, A, s_a, beta=math.sqrt(group["damping"]))
            entries[name] = {**old, "A": A}
            upd_names.append(name)
            upd_H.append(H_a)
            upd_V.append(torch.stack([s_a, y_a, H_a @ y_a]))
        if upd_names:
            new_H, _ = _bfgs_blocks(upd_H, upd_V)
            for name, H in zip(upd_names, new_H):
                entries[name]["H_a"] = H
        prepared, directions = {}, []
        for name in names:
            entry, bias = entries[name], self._bias[name]
            group = self.coverage.group(self._layers[name].weight)
            mW = new_mom[self._layers[name].weight]
            Mat = mW if bias is None else torch.cat([mW, new_mom[bias][:, None]], dim=1)
            prepared[name] = self._hg_prepare(entry, group)
            directions.append(self._hg_apply(prepared[name], Mat @ entry["H_a"]))
        # new A and H_a (overflow included), and P: one sync for all layers
        if not all_finite([t for e in entries.values() for t in (e["A"], e["H_a"])] + directions):
            return Skip("non-finite K-BFGS curvature or direction")
        params, steps, lrs = [], [], []
        for name, P in zip(names, directions):
            mod, bias = self._layers[name], self._bias[name]
            cols = mod.weight.shape[1]
            for p, d in ((mod.weight, P[:, :cols]), (bias, P[:, cols] if bias is not None else None)):
                if p is not None and d is not None and p.grad is not None:
                    params.append(p)
                    steps.append(d)
                    lrs.append(self.coverage.group(p)["lr"])
        if not descend_(params, steps, lrs):
            return Skip("non-finite update (overflow of lr · direction)")
        # committed: momenta and curvature of phase 1, then the pairs at θ⁺
        for p, m in new_mom.items():
            self.state[p]["momentum_buffer"] = m
        self.curv_state.update(entries)
        return Step(counts=self._pre_activation_pairs(closure, first, names, prepared))

    def _first_entry(self, X: Tensor, weight: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """State of a layer's first step: A from the batch, H_a = (A + λ_A I)⁻¹ explicitly, H_g = I."""
        A = (X.T @ X).div_(X.shape[0])
        eye = torch.eye(A.shape[0], dtype=torch.float64, device=A.device)
        L, info = torch.linalg.cholesky_ex(A.double() + math.sqrt(group["damping"]) * eye)
        H_a = torch.cholesky_inverse(L) if int(info) == 0 else torch.full_like(eye, math.nan)
        H_a = ((H_a + H_a.T) / 2).to(A.dtype)
        d_out = weight.shape[0]
        zeros = torch.zeros(d_out, dtype=weight.dtype, device=weight.device)
        return {"A": A, "H_a": H_a, "s": zeros, "y": zeros.clone(), **self._hg_init(d_out, weight, group)}

    def _pre_activation_pairs(
        self, closure: Callable[..., Tensor], first: dict[str, dict[str, Tensor]], names: list[str],
        prepared: dict[str, Any],
    ) -> dict[str, int]:
        """Second evaluation at θ⁺ on the same batch, then the damped H_g updates (one sync).

        Returns:
            The step's counters (``pairs``, ``powell_damped``, ``lm_damped``, ``skipped_pairs``).
        """
        with self._capture.recording(inputs=False) as rec, torch.enable_grad():
            if accepts(closure, "backward"):
                # only ∂L/∂h is needed: skip the weight gradients and leave .grad alone
                loss = call_closure(closure, who=self.name, backward=False)
                outs = list(rec.outputs.values())
                if outs and isinstance(loss, Tensor) and loss.requires_grad:
                    torch.autograd.grad(loss, outs, allow_unused=True)
            else:
                call_closure(closure, who=self.name)
        second = self._statistics(rec).records
        pair_names = [n for n in names if "g_mean" in second.get(n, {})]
        missing = len(names) - len(pair_names)
        counts = [0, 0, missing]
        if pair_names:
            counts = [c + v for c, v in zip(counts, self._damped_updates(first, second, pair_names,
                                                                          prepared))]
        return {"pairs": len(names), "powell_damped": counts[0], "lm_damped": counts[1],
                "skipped_pairs": counts[2]}

    def _damped_updates(
        self, first: dict[str, dict[str, Tensor]], second: dict[str, dict[str, Tensor]],
        names: list[str], prepared: dict[str, Any],
    ) -> list[int]:
        """Smoothed pairs, double damping and H_g candidates for all layers at once; commit."""
        entries = [self.curv_state[n] for n in names]
        groups = [self.coverage.group(self._layers[n].weight) for n in names]
        blocks = self._blocks_for(names, entries[0]["s"])
        cat = torch.cat
        s_new = cat([second[n]["h_mean"] for n in names]) - cat([first[n]["h_mean"] for n in names])
        y_new = cat([second[n]["g_mean"] for n in names]) - cat([first[n]["g_mean"] for n in names])
        s_old, y_old = cat([e["s"] for e in entries]), cat([e["y"] for e in entries])
        # a layer's new pair is used only if finite (a sum is non-finite iff an entry is, or overflow)
        fresh = torch.isfinite(blocks.dots([(s_new + y_new, torch.ones_like(s_new))])[:, 0])
        fresh_e = blocks.expand(fresh)
        cs = {g["sy_momentum"] for g in groups}
        c = cs.pop() if len(cs) == 1 else blocks.expand(
            torch.tensor([g["sy_momentum"] for g in groups], dtype=s_old.dtype, device=s_old.device))
        s = torch.where(fresh_e, s_old * c + s_new * (1 - c), s_old)
        y = torch.where(fresh_e, y_old * c + y_new * (1 - c), y_old)
        s_parts, y_parts = blocks.split(s), blocks.split(y)
        prep = [prepared[n] for n in names]
        Hy = cat([self._hg_apply(pr, yb) for pr, yb in zip(prep, y_parts)])
        mus = {(g["mu1"], g["damping"]) for g in groups}
        if len(mus) == 1:
            mu1, lam = mus.pop()
            pair = double_damping_blocks(s, y, Hy, blocks.index, blocks.n, mu1=mu1,
                                         mu2=math.sqrt(lam))
        else:  # per-group damping thresholds: damp layer by layer
            ps = [double_damping(sb, yb, hb, mu1=g["mu1"], mu2=math.sqrt(g["damping"]))
                  for sb, yb, hb, g in zip(s_parts, y_parts, blocks.split(Hy), groups)]
            pair = DampedPair(*(cat([p[i].reshape(-1) for p in ps]) for i in range(5)))
        cands, ok, checks = self._hg_candidates(
            prep, blocks.split(pair.s), blocks.split(pair.y), blocks, pair.s, pair.y)
        applied = ok & pair.valid & fresh
        if checks:
            applied = applied & finite_flags(checks)
        flags = torch.stack([pair.powell, pair.lm, applied]).tolist()
        st_parts, yt_parts = blocks.split(pair.s), blocks.split(pair.y)
        for i, (name, entry, group) in enumerate(zip(names, entries, groups)):
            new = {**entry, "s": s_parts[i], "y": y_parts[i]}
            if flags[2][i]:
                new.update(self._hg_commit(entry, cands[i], st_parts[i], yt_parts[i], group))
            self.curv_state[name] = new
        return [sum(flags[0]), sum(flags[1]), len(names) - sum(flags[2])]


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
    meta = _meta("K-BFGS: Kronecker-factored BFGS with double damping (dense H_g)")

    def _hg_init(self, dim: int, like: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        return {"H_g": torch.eye(dim, dtype=like.dtype, device=like.device)}

    def _hg_prepare(self, entry: dict[str, Tensor], group: dict[str, Any]) -> Tensor:
        return entry["H_g"]

    def _hg_apply(self, prepared: Tensor, v: Tensor) -> Tensor:
        return prepared @ v

    def _hg_candidates(
        self, prepared: list[Tensor], s: list[Tensor], y: list[Tensor], blocks: Blocks,
        s_flat: Tensor, y_flat: Tensor,
    ) -> tuple[list[Tensor], Tensor, list[Tensor]]:
        Vs = [torch.stack([sb, yb, H @ yb]) for H, sb, yb in zip(prepared, s, y)]
        new_H, ok = _bfgs_blocks(prepared, Vs)
        return new_H, ok, new_H

    def _hg_commit(self, entry: dict[str, Tensor], candidate: Tensor, s: Tensor, y: Tensor,
                   group: dict[str, Any]) -> dict[str, Tensor]:
        return {"H_g": candidate}


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
    meta = _meta("K-BFGS(L): Kronecker-factored BFGS with double damping, L-BFGS for H_g",
                 "limited-memory")

    def _hg_init(self, dim: int, like: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        return LBFGSMemory(dim, group["memory"], dtype=like.dtype, device=like.device).state_dict()

    def _hg_prepare(self, entry: dict[str, Tensor], group: dict[str, Any]) -> Any:
        S, Y = entry["S"][-group["memory"]:], entry["Y"][-group["memory"]:]
        return S, Y, (compact_factors(S, Y) if S.shape[0] else None)

    def _hg_apply(self, prepared: Any, v: Tensor) -> Tensor:
        S, Y, factors = prepared
        return compact_apply(S, Y, v, factors=factors) if factors is not None else v

    def _hg_candidates(
        self, prepared: list[Any], s: list[Tensor], y: list[Tensor], blocks: Blocks,
        s_flat: Tensor, y_flat: Tensor,
    ) -> tuple[list[Any], Tensor, list[Tensor]]:
        # the pushed pair must pass the BFGS safety test (cosine of s̃, ỹ above machine epsilon)
        ss, sy, yy = blocks.dots([(s_flat, s_flat), (s_flat, y_flat), (y_flat, y_flat)]).unbind(1)
        bound = torch.finfo(s_flat.dtype).eps * ss.sqrt() * yy.sqrt()
        ok = (sy > bound) & torch.isfinite(sy) & torch.isfinite(bound) & torch.isfinite(1.0 / sy)
        return [None] * len(s), ok, []

    def _hg_commit(self, entry: dict[str, Tensor], candidate: Any, s: Tensor, y: Tensor,
                   group: dict[str, Any]) -> dict[str, Tensor]:
        mem = LBFGSMemory.from_state(entry, size=group["memory"])
        mem.push(s, y)
        return mem.state_dict()

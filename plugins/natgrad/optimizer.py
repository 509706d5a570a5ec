r"""Exact natural gradient on the mini-batch Fisher, solved through the Gram matrix.

For the closure's loss :math:`L` on a mini-batch of :math:`N` examples with
outputs :math:`f_n` and a supported loss module, the Fisher (equal to the
generalised Gauss-Newton matrix for MSE, cross-entropy and BCE-with-logits)

.. math::

    F = s \sum_n J_n^\top H_n J_n = U U^\top, \qquad
    U = \sqrt{s}\,\big[J_1^\top V_1, \dots, J_N^\top V_N\big] \in \mathbb R^{P \times NK},

with :math:`J_n = \partial f_n/\partial\theta`, :math:`H_n = V_n V_n^\top` the
output Hessian of ``loss_fn`` (its reduction included:
:mod:`~curvlab_plugins.natgrad.output_roots`) and :math:`s` the factor between
the closure's loss and ``loss_fn`` at the outputs, *measured* at every step
(:class:`~curvlab.curvature.loss_scale.LossScaleProbe`; 1 for
``curvlab.closure``). So for ``CrossEntropyLoss()`` (mean) :math:`F =
\frac1N \sum_n J_n^\top(\operatorname{diag}p_n - p_n p_n^\top)J_n`, for
``reduction="sum"`` :math:`N` times that, and whatever multiple of the loss
the closure returns, :math:`F` is that multiple's Fisher.

``fisher_type="true"`` uses the exact roots (:math:`K` = output entries of an
example), ``"mc"`` :math:`K` = ``mc_samples`` targets sampled from the model's
predictive distribution (the MC Fisher; private seeded generator saved in the
state). The step direction is the damped natural gradient by the Woodbury
identity (:mod:`~curvlab_plugins.natgrad.woodbury`),

.. math::

    d = (F + \lambda I)^{-1} g = \tfrac1\lambda\big(g - U(\lambda I + U^\top U)^{-1}U^\top g\big),

an :math:`NK \times NK` solve; :math:`U` comes from per-example
vector-Jacobian products with ``torch.func`` (:mod:`~curvlab_plugins.natgrad.jacobians`)
on the inputs the closure gave the model (:mod:`~curvlab_plugins.natgrad.observation`).
``block_diagonal=True`` applies the same per layer (module owning the
parameters), with :math:`U` restricted to that layer's rows. With
``relative_damping=True`` the damping of a block is :math:`\lambda \cdot
\operatorname{tr}F_b / P_b` (the block's mean eigenvalue). Per-group damping
values are exact too: :math:`D = \operatorname{diag}(\lambda_i)` in
:math:`(F + D)^{-1} g`. The step is then SGD's: momentum and weight decay
added after preconditioning (:mod:`curvlab.curvature.momentum`),
:math:`\theta \leftarrow \theta - \alpha\, d`.

Models: any module whose trainable parameters all belong to the model and
whose examples do not interact; refused at construction (naming the
module): BatchNorm in training mode, dropout with :math:`p > 0` in training
mode, and parameters outside the model. A model whose outputs the
example-by-example recomputation does not reproduce is refused at the step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from curvlab.closure import call_closure
from curvlab.curvature.coverage import Coverage, layer_coverage
from curvlab.curvature.finite import all_finite
from curvlab.curvature.loss_curvature import check_loss_module, num_exact_columns
from curvlab.curvature.loss_scale import LossScale, LossScaleError, LossScaleProbe
from curvlab.curvature.momentum import momentum_step_
from curvlab.curvature.rng import derive_seed
from curvlab.hparams import OPTIMIZER, HParam, Schema
from curvlab.optimizer import CurvatureOptimizer, Evaluation, OptimizerMeta, Skip, Step
from curvlab_plugins.natgrad.columns import Columns, DenseColumns, KroneckerColumns
from curvlab_plugins.natgrad.jacobians import fisher_columns
from curvlab_plugins.natgrad.observation import ClosureObserver, ObservedCall
from curvlab_plugins.natgrad.output_roots import exact_roots, mc_roots
from curvlab_plugins.natgrad.woodbury import damped_solve, gram_trace

__all__ = ["NaturalGradient", "Observation", "coupling_modules"]

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
             nn.FeatureAlphaDropout)
_RECURRENT = (nn.RNNBase,)


def coupling_modules(model: nn.Module) -> list[str]:
    """Modules that make the per-example recomputation differ from the batch: their descriptions.

    BatchNorm in training mode (batch statistics couple the examples),
    dropout with ``p > 0`` and recurrent layers with ``dropout > 0`` in
    training mode (a recomputation draws other masks).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Dropout(0.0))
        >>> coupling_modules(net)
        ['BatchNorm1d at model.1 (in training mode: batch statistics couple the examples)']
        >>> coupling_modules(net.eval())
        []
    """
    found = []
    for name, m in model.named_modules():
        where = f"model.{name}" if name else "model"
        if not m.training:
            continue
        if isinstance(m, _BATCH_NORMS):
            found.append(f"{type(m).__name__} at {where} (in training mode: batch statistics "
                         "couple the examples)")
        elif isinstance(m, _DROPOUTS) and m.p > 0:
            found.append(f"{type(m).__name__} at {where} (p={m.p} in training mode: the "
                         "per-example recomputation would draw other masks)")
        elif isinstance(m, _RECURRENT) and m.dropout > 0:
            found.append(f"{type(m).__name__} at {where} (dropout={m.dropout} in training mode)")
    return found


@dataclass(frozen=True)
class Observation:
    r"""What one closure call gives the update: the (model, loss) calls and the loss scale.

    Attributes:
        calls: The observed calls (:class:`~curvlab_plugins.natgrad.observation.ObservedCall`).
        scale: :math:`s` measured by :class:`~curvlab.curvature.loss_scale.LossScaleProbe`.
        rng: The Monte-Carlo generator's advanced state (``None`` for the true Fisher);
            committed only if the step is applied.
        columns: :math:`M = \sum N K`, the columns of :math:`U`.
    """

    calls: list[ObservedCall]
    scale: LossScale
    rng: Tensor | None
    columns: int


class _Roots:
    """The observer's root callable for one closure call: exact, or sampled from the private stream."""

    def __init__(self, opt: NaturalGradient) -> None:
        self.opt = opt
        self.generator: torch.Generator | None = None
        self.columns = 0

    def __call__(self, f: Tensor, targets: Any) -> Tensor:
        opt, hp = self.opt, self.opt.optimizer_hparams
        k = hp["mc_samples"] if hp["fisher_type"] == "mc" else num_exact_columns(opt.loss_fn, f)
        self.columns += int(f.shape[0]) * k
        if self.columns > hp["max_columns"]:
            raise ValueError(
                f"{opt.name}: the Gram matrix would have {self.columns} columns (N·K over the "
                f"batch, K = {k} per example), above max_columns={hp['max_columns']}; use "
                "fisher_type='mc' (K = mc_samples), a smaller batch, or raise max_columns"
            )
        if hp["fisher_type"] == "true":
            return exact_roots(opt.loss_fn, f, targets)
        if self.generator is None:
            self.generator = torch.Generator(device=f.device)
            state = opt.curv_state["rng"]
            if state is None:
                self.generator.manual_seed(opt.curv_state["seed"])
            else:
                self.generator.set_state(state)
        return mc_roots(opt.loss_fn, f, self.generator, hp["mc_samples"], targets)

    def rng_state(self) -> Tensor | None:
        """The advanced generator state (``None``: nothing sampled)."""
        return None if self.generator is None else self.generator.get_state()


class NaturalGradient(CurvatureOptimizer):
    r"""Exact (subsampled) natural gradient with the Woodbury solve (see the module docstring).

    Example:
        >>> import torch, curvlab
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        >>> loss_fn = torch.nn.CrossEntropyLoss()
        >>> x = torch.randn(32, 4)
        >>> y = (x @ torch.randn(4, 3)).argmax(1)                # a learnable labelling
        >>> opt = curvlab.create("natgrad", model, loss_fn)   # true Fisher, λ = 1, lr 0.1, μ 0.9
        >>> losses = [opt.step(curvlab.closure(model, loss_fn, x, y)).item() for _ in range(20)]
        >>> losses[-1] < 0.5 * losses[0]
        True
        >>> opt.stats["fisher_columns"]    # N·K = 32 examples × 3 classes
        96.0
    """

    name = "natgrad"
    schema = Schema(
        [
            HParam("lr", float, 0.1, "step size α", low=0.0, grid=(1.0, 0.3, 0.1, 0.03)),
            HParam("damping", float, 1.0, "Tikhonov damping λ in (F + λI)⁻¹ g", low=0.0,
                   low_open=True, grid=(1.0, 0.1, 0.01, 0.001)),
            HParam("relative_damping", bool, False,
                   "λ relative to the (block's) mean eigenvalue tr F / P", scope=OPTIMIZER),
            HParam("fisher_type", str, "true",
                   "'true': exact output-Hessian roots; 'mc': sampled targets (MC Fisher)",
                   choices=("true", "mc"), scope=OPTIMIZER),
            HParam("mc_samples", int, 1, "sampled targets per example (fisher_type='mc')",
                   low=1, scope=OPTIMIZER),
            HParam("block_diagonal", bool, False,
                   "one Woodbury solve per layer instead of the full Fisher", scope=OPTIMIZER),
            HParam("momentum", float, 0.9, "heavy-ball coefficient μ", low=0.0, high=1.0,
                   high_open=True),
            HParam("weight_decay", float, 0.0, "L2 coefficient added after preconditioning",
                   low=0.0),
            HParam("max_columns", int, 4096,
                   "largest Gram size N·K per step (refused above: use fisher_type='mc')",
                   low=1, scope=OPTIMIZER),
        ]
    )
    meta = OptimizerMeta(
        summary="exact natural gradient on the mini-batch Fisher (true or MC), Woodbury solve",
        paper=(
            "Amari, Natural Gradient Works Efficiently in Learning, Neural Computation 1998; "
            "Martens, New Insights and Perspectives on the Natural Gradient Method, JMLR 2020 "
            "(arXiv 1412.1193); Ren & Goldfarb, Efficient Subsampled Gauss-Newton and Natural "
            "Gradient Methods for Training Neural Networks, 2019 (arXiv 1906.02353); Benzing, "
            "Gradient Descent on Neurons and its Link to Approximate Second-Order Optimization, "
            "ICML 2022 (arXiv 2201.12250)"
        ),
        layers=("any parameterised module of the model (torch.func.functional_call); not "
                "BatchNorm or dropout in training mode",),
        losses=("MSELoss", "CrossEntropyLoss", "BCEWithLogitsLoss"),
        requires_closure=True,
        needs_loss_fn=True,
        conformance={"lr": 0.5, "damping": 0.01, "momentum": 0.0},
        tags=("second-order", "natural-gradient", "exact", "torch.func"),
        closure_reason=(
            "it recomputes the per-example output Jacobians from the inputs the closure feeds "
            "the model, inside step(); any closure works, also one without keywords "
            "(PyTorch Lightning's)"),
    )

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        model = self.require_model()
        check_loss_module(self.loss_fn, self.name)
        hp = self.optimizer_hparams
        if hp["fisher_type"] == "true" and hp["mc_samples"] != 1:
            raise ValueError(
                f"{self.name}: mc_samples applies to fisher_type='mc' only; got mc_samples="
                f"{hp['mc_samples']} with fisher_type='true'"
            )
        self._refuse_coupling(model)
        names = {id(p): n for n, p in model.named_parameters()}
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad and id(p) not in names:
                    raise ValueError(
                        f"{self.name} needs the Jacobian of the model's outputs for every "
                        f"parameter; a parameter of shape {tuple(p.shape)} is not in the model "
                        "(it may act in the loss, whose parameters the Fisher does not cover)"
                    )
        self._coverage: Coverage = layer_coverage(model, self.param_groups, (nn.Module,),
                                                 who=self.name)
        self.param_names = names
        owner = {}
        for mname, module in model.named_modules():
            for p in module.parameters(recurse=False):
                owner.setdefault(id(p), mname)
        self.owner = owner
        #: ``Linear`` layers whose columns are Kronecker-structured when observed exactly.
        self.linear = {name: m for name, m in self._coverage.layers.items() if type(m) is nn.Linear}
        self.probe = LossScaleProbe(self.loss_fn, who=self.name)
        self.curv_state.update({"step": 0})
        if hp["fisher_type"] == "mc":
            self.curv_state.update({"seed": derive_seed(), "rng": None})

    def _refuse_coupling(self, model: nn.Module) -> None:
        found = coupling_modules(model)
        if found:
            raise ValueError(
                f"{self.name} computes per-example Jacobians and cannot handle "
                + "; ".join(found) + " (put the module in eval mode, or use another optimizer)"
            )

    # --------------------------------------------------------------- closure
    def _evaluate(self, closure: Callable[..., Tensor]) -> Evaluation[Observation]:
        model = self.require_model()
        self._refuse_coupling(model)
        roots = _Roots(self)
        observer = ClosureObserver(model, self.loss_fn, layers=self.linear, roots=roots,
                                   who=self.name)
        with observer, self.probe:
            loss = call_closure(closure, who=self.name)
        calls = observer.calls()
        if isinstance(loss, Tensor) and not all_finite([loss.detach()]):
            return Evaluation(loss, None)  # the base class skips the step
        try:
            scale = self.probe.measure(loss)
        except LossScaleError:
            if not all_finite(self._grads()):
                return Evaluation(loss, None)  # the base class skips the non-finite gradient
            raise
        return Evaluation(loss, Observation(calls, scale, roots.rng_state(), roots.columns))

    # ---------------------------------------------------------------- update
    def _columns(self, observation: Observation, active: list[Tensor]) -> dict[int, Columns]:
        """:math:`U_i` for every active parameter over all observed calls (rows call-major)."""
        calls = observation.calls
        root = math.sqrt(observation.scale.scale)
        structured = set.intersection(*(
            {name for name, rec in c.layers.items() if rec.grads is not None} for c in calls
        ))
        fast: dict[int, tuple[str, str]] = {}
        for name in structured:
            layer = self.linear[name]
            for kind in ("weight", "bias"):
                p = getattr(layer, kind)
                if p is not None and any(p is q for q in active):
                    fast[id(p)] = (name, kind)
        generic = [p for p in active if id(p) not in fast]
        dense: dict[int, list[Tensor]] = {id(p): [] for p in active}
        inputs: dict[str, list[Tensor]] = {name: [] for name in structured}
        example, offset = [], 0
        for call in calls:
            k = call.roots.shape[1]
            device = call.outputs.device
            example.append(torch.arange(offset, offset + call.examples, device=device)
                           .repeat_interleave(k))
            offset += call.examples
            for name in structured:
                rec = call.layers[name]
                inputs[name].append(rec.inputs)
                g = rec.grads.reshape(-1, rec.grads.shape[-1]) * root
                bias = self.linear[name].bias
                if bias is not None and id(bias) in fast:
                    dense[id(bias)].append(g)
                dense.setdefault(("G", name), []).append(g)  # type: ignore[call-overload]
            if generic:
                for p, cols in zip(generic, self._generic_columns(call, generic, root)):
                    dense[id(p)].append(cols)
        out: dict[int, Columns] = {}
        rows = torch.cat(example)
        for p in active:
            if fast.get(id(p), ("", ""))[1] == "weight":
                name = fast[id(p)][0]
                out[id(p)] = KroneckerColumns(torch.cat(dense[("G", name)]),  # type: ignore[index]
                                              torch.cat(inputs[name]), rows)
            else:
                out[id(p)] = DenseColumns(torch.cat(dense[id(p)]))
        return out

    def _generic_columns(self, call: ObservedCall, generic: list[Tensor], root: float) -> list[Tensor]:
        """Columns ``(N·K, *p.shape)`` of ``generic`` by the per-example recomputation."""
        params = {self.param_names[id(p)]: p for p in generic}
        try:
            with torch.enable_grad():
                outputs, cols = fisher_columns(self.require_model(), params, call, call.roots * root)
        except (RuntimeError, NotImplementedError) as err:
            raise ValueError(
                f"{self.name} could not recompute the model example by example with "
                f"torch.func (functional_call + vmap): {err}"
            ) from err
        self._check_outputs(outputs, call.outputs)
        return [cols[self.param_names[id(p)]].reshape(-1, *p.shape) for p in generic]

    def _check_outputs(self, outputs: Tensor, observed: Tensor) -> None:
        if outputs.shape != observed.shape:
            raise ValueError(
                f"{self.name}: the model recomputed example by example returns shape "
                f"{tuple(outputs.shape)}, the closure's call returned {tuple(observed.shape)}"
            )
        eps = torch.finfo(observed.dtype).eps if observed.is_floating_point() else 1e-7
        tol = max(1e-6, 10 * math.sqrt(eps))
        diff = float((outputs - observed).double().norm())
        size = float(observed.double().norm())
        if not diff <= tol * max(size, 1e-12):
            raise ValueError(
                f"{self.name}: the model recomputed example by example differs from the "
                f"closure's outputs (relative difference {diff / max(size, 1e-300):.3g}); the "
                "model has hidden randomness or state, or its examples interact"
            )

    @torch.no_grad()
    def _update(self, closure, evaluation: Evaluation[Observation]) -> Step | Skip:
        self._coverage.check_gradients(self.name)
        observation = evaluation.data
        if observation is None:
            return Skip("nothing observed")
        active = [p for g in self.param_groups for p in g["params"]
                  if p.grad is not None and self._coverage.trainable(p)]
        if not active:
            return Step()
        s = observation.scale.scale
        if math.isnan(s):
            return Skip("loss scale not measurable (zero gradient at every network output)")
        if s < 0 or not math.isfinite(s):
            raise ValueError(
                f"{self.name}: the closure's loss is {s:.4g} × loss_fn at the outputs; the Fisher "
                "needs a non-negative multiple (return the loss, not its negative)"
            )
        if not observation.calls:
            raise ValueError(f"{self.name}: the closure did not call the model and loss_fn")
        if any(c.roots is None for c in observation.calls):
            return Skip("non-finite network outputs")
        columns = self._columns(observation, active)
        blocks = self._blocks(active)
        grads = {id(p): p.grad for p in active}
        directions: dict[Tensor, Tensor] = {}
        for block in blocks:
            damping = self._damping(block, columns)
            if damping is None:
                return Skip("relative damping with a zero Fisher block")
            solved = damped_solve({id(p): columns[id(p)] for p in block},
                                  {id(p): grads[id(p)] for p in block}, damping)
            if solved is None:
                return Skip("non-finite Fisher or failed Gram solve")
            directions.update({p: solved[id(p)] for p in block})
        if not momentum_step_(self, directions):
            return Skip("non-finite update (overflow of lr · direction)")
        if observation.rng is not None:
            self.curv_state["rng"] = observation.rng
        self.curv_state["step"] += 1
        return Step(values={"fisher_columns": float(observation.columns), "loss_scale": s})

    def _blocks(self, active: list[Tensor]) -> list[list[Tensor]]:
        if not self.optimizer_hparams["block_diagonal"]:
            return [active]
        by_layer: dict[str, list[Tensor]] = {}
        for p in active:
            by_layer.setdefault(self.owner[id(p)], []).append(p)
        return list(by_layer.values())

    def _damping(self, block: list[Tensor], columns: dict[int, Columns]) -> dict[int, float] | None:
        lam = {id(p): float(self._coverage.group(p)["damping"]) for p in block}
        if not self.optimizer_hparams["relative_damping"]:
            return lam
        mean = gram_trace(columns, [id(p) for p in block]) / sum(p.numel() for p in block)
        if not mean > 0 or not math.isfinite(mean):
            return None
        return {k: v * mean for k, v in lam.items()}

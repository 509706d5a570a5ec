r"""curvlab's own forward/backward hooks as a :class:`~curvlab.curvature.factor_engine.FactorEngine`.

During :meth:`HookEngine.capture` (and only then; other passes run on the
untouched model):

* a forward hook on every covered module records its input statistics at
  once (:class:`~curvlab.curvature.kronecker_factors.KroneckerAccumulator`,
  :class:`~curvlab.curvature.unit_blocks.UnitAccumulator`: :math:`X^\top X`
  or :math:`\hat x`, no reference to the activation is kept) and the
  *gradient edge* of its output (:func:`torch.autograd.graph.get_gradient_edge`):
  the edge is taken before any later in-place operation (``ReLU(inplace=True)``)
  rewrites the output tensor, so gradients through it are those of the
  layer's own output;
* a forward hook on the loss module, for ``"mc"``/``"exact"``, takes the
  loss input :math:`f` and back-propagates each column :math:`v`
  (:mod:`~curvlab.curvature.loss_curvature`) from :math:`f` to all recorded
  edges in one ``torch.autograd.grad`` call (``retain_graph=True``, needed
  because the user's own backward follows on the same graph; no parameter
  gradient is computed, so a column costs less than a backward pass);
* for ``"empirical"`` no extra pass runs: tensor hooks on the layer outputs
  receive the user's own backward's gradients, and a hook on the loss value
  its incoming gradient :math:`s` (1 for ``loss.backward()``), so that
  :math:`g/(s\sqrt c)` are the per-term gradients of the *summed* loss
  whatever scaling the closure applied.

The Monte-Carlo targets come from a private ``torch.Generator`` on the
outputs' device (:attr:`HookEngine.rng_state` saves and restores it); the
global RNG stream is never touched.

Costs per factor step: forward hooks' :math:`X^\top X` (one ``(d, NR) @ (NR, d)``
product per layer); ``"mc"``: ``mc_samples`` partial backward passes;
``"exact"``: :func:`~curvlab.curvature.loss_curvature.num_exact_columns`
partial backward passes (refused above ``max_exact_columns``).

Limits (each raises a :class:`ValueError` naming the module): the loss
module called more than once per closure call (micro-batches), a covered
module not called, calls of one shared module with different batch sizes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge
from torch.utils.hooks import RemovableHandle

from curvlab.curvature.block_plan import BlockPlan, ParamCoverage, plan_blocks
from curvlab.curvature.factor_engine import (
    BIAS_LAYOUTS,
    FactorCapture,
    check_capture_options,
    check_choice,
    run_capture,
)
from curvlab.curvature.kronecker_factors import KroneckerAccumulator
from curvlab.curvature.loss_curvature import (
    check_loss_module,
    exact_columns,
    mc_samples,
    num_exact_columns,
    reduction_scale,
)
from curvlab.curvature.unit_blocks import UnitAccumulator

__all__ = ["HookEngine"]


class HookEngine:
    """Kronecker / unit-wise factors from curvlab's hooks (see the module docstring).

    Args:
        model: The network.
        loss_fn: ``MSELoss``, ``CrossEntropyLoss`` or ``BCEWithLogitsLoss`` (mean/sum);
            ``None`` for an engine that only captures input-side statistics
            (``need_G=False``, e.g. FOOF's).
        bias_layout: ``"separate"`` or ``"homogeneous"``.
        seed: Seed of the private generator (default: drawn from the global generator).
        trainable: Parameters the optimizer updates (default: ``requires_grad``).
        max_exact_columns: Most backward passes ``"exact"`` may take per capture.
        who: Backend name for messages.

    Raises:
        ValueError: an unsupported loss, ``bias_layout`` or ``max_exact_columns < 1``.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 2))
        >>> engine = HookEngine(net, nn.CrossEntropyLoss(), seed=0)
        >>> x, y = torch.randn(8, 5, 3), torch.randint(0, 2, (8, 5))
        >>> with engine.capture(fisher_type="exact") as cap:
        ...     nn.CrossEntropyLoss()(net(x).transpose(1, 2), y).backward()
        Traceback (most recent call last):
        ...
        ValueError: the closure must call the loss_fn given to the engine (CrossEntropyLoss); it was not called in this capture
        >>> loss_fn = engine.loss_fn
        >>> with engine.capture(fisher_type="exact") as cap:
        ...     loss_fn(net(x).transpose(1, 2), y).backward()
        >>> {k: (tuple(f.A.shape), tuple(f.G.shape)) for k, f in cap.factors.items()}
        {'0': ((3, 3), (4, 4)), '2': ((4, 4), (2, 2))}
    """

    #: Engine name (reported by backends).
    name = "hooks"

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module | None,
        *,
        bias_layout: str = "separate",
        seed: int | None = None,
        trainable: Iterable[Tensor] | None = None,
        max_exact_columns: int = 1024,
        who: str = "curvature",
    ) -> None:
        if loss_fn is not None:
            check_loss_module(loss_fn, who)
        check_choice("bias_layout", bias_layout, BIAS_LAYOUTS)
        if max_exact_columns < 1:
            raise ValueError(f"max_exact_columns must be >= 1; got {max_exact_columns}")
        self.model = model
        self.loss_fn = loss_fn
        self.bias_layout = bias_layout
        self.who = who
        self.max_exact_columns = max_exact_columns
        self.plan: BlockPlan = plan_blocks(model, trainable=trainable)
        self.seed = int(torch.randint(0, 2**62, (), dtype=torch.int64)) if seed is None else int(seed)
        self._rng_state: Tensor | None = None
        self._handles: list[RemovableHandle] = []

    # ------------------------------------------------------------- protocol
    def coverage(self, kfac_approx: str = "expand") -> list[ParamCoverage]:
        """Coverage rows (:meth:`~curvlab.curvature.block_plan.BlockPlan.coverage`)."""
        return self.plan.coverage(kfac_approx)

    @property
    def rng_state(self) -> Tensor | None:
        """State of the private Monte-Carlo generator (``None``: not used yet, seeded with :attr:`seed`)."""
        return self._rng_state

    @rng_state.setter
    def rng_state(self, state: Tensor | None) -> None:
        self._rng_state = None if state is None else state.clone()

    def remove(self) -> None:
        """Remove any hook still installed (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def run(self, call, **options):
        """``(call(), capture)``: ``call`` (the closure call) inside :meth:`capture` (``options``)."""
        return run_capture(self, call, **options)

    def _generator(self, device: torch.device) -> torch.Generator:
        gen = torch.Generator(device=device)
        if self._rng_state is None:
            gen.manual_seed(self.seed)
        else:
            gen.set_state(self._rng_state)
        return gen

    @contextmanager
    def capture(
        self, *, fisher_type: str = "mc", kfac_approx: str = "expand", mc_samples: int = 1,
        need_G: bool = True,
    ) -> Iterator[FactorCapture]:
        """Install the hooks for the block; the yielded capture holds the factors on exit.

        Raises:
            ValueError: invalid options; (on exit) the loss module was not
                called or called twice, a covered module was not called,
                ``"empirical"`` without a backward pass through the loss,
                ``"exact"`` needing more than ``max_exact_columns`` passes.
        """
        check_capture_options(fisher_type, kfac_approx, mc_samples)
        if need_G and self.loss_fn is None:
            raise ValueError(f"{self.who}: this engine has no loss module; it captures need_G=False only")
        result = FactorCapture(fisher_type, kfac_approx)
        homogeneous = self.bias_layout == "homogeneous"
        accs: dict[str, Any] = {
            name: UnitAccumulator(g, kfac_approx) if g.family == "norm"
            else KroneckerAccumulator(g, kfac_approx=kfac_approx, homogeneous=homogeneous)
            for name, g in self.plan.groups.items()
        }
        run = _Run(self, accs, fisher_type, mc_samples, need_G)
        if self._handles:
            raise RuntimeError("HookEngine.capture blocks cannot be nested")
        for name, group in self.plan.groups.items():
            for module in group.modules:
                self._handles.append(module.register_forward_hook(run.layer_hook(name)))
        if need_G:
            self._handles.append(self.loss_fn.register_forward_hook(run.loss_hook))
        try:
            yield result
        finally:
            self.remove()
        run.finish()
        result.factors = {name: acc.result(need_G=need_G) for name, acc in accs.items()}
        if run.rng_state is not None:
            self._rng_state = run.rng_state
        result.rng_state = self._rng_state


def _gradient_target(output: Tensor) -> tuple[Tensor, Tensor | None]:
    """``(tensor to take gradients at, replacement output or None)`` for a layer output.

    A later in-place operation on an output that is a *view* (``Linear`` on
    N-D inputs returns a reshaped matrix product) rebases the view's base and
    bypasses the view's own autograd node, so an edge or hook on the view
    would see no gradient. A view of its whole base is replaced by that base
    (reshaped by the caller); any other view is handed on as a copy (the
    forward hook's return value), so nothing downstream can rewrite it.
    """
    base = output._base
    if base is None:
        return output, None
    if base.numel() == output.numel() and base.requires_grad:
        return base, None
    return output, output.clone()


class _Run:
    """State of one capture: hooks' closures, recorded edges, empirical gradients."""

    def __init__(self, engine: HookEngine, accs: dict[str, Any], fisher_type: str,
                 samples: int, need_G: bool) -> None:
        self.engine = engine
        self.accs = accs
        self.fisher_type = fisher_type
        self.samples = samples
        self.need_G = need_G
        self.edges: list[tuple[str, int, Any, torch.Size]] = []  # (block, use, edge, shape)
        self.empirical: dict[tuple[str, int], Tensor] = {}
        self.loss_calls = 0
        self.scale: float | None = None
        self.root_grad: Tensor | None = None
        self.rng_state: Tensor | None = None

    def layer_hook(self, name: str):
        def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor | None:
            if not torch.is_grad_enabled():
                return None
            use = self.accs[name].add_input(module, args[0])
            if not self.need_G or not output.requires_grad:
                return None
            target, replaced = _gradient_target(output)
            shape = output.shape
            if self.fisher_type == "empirical":
                def record(g: Tensor, key: tuple[str, int] = (name, use)) -> None:
                    self.empirical[key] = g.detach().reshape(shape)

                target.register_hook(record)
            else:
                self.edges.append((name, use, get_gradient_edge(target), shape))
            return replaced

        return hook

    def loss_hook(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        if not torch.is_grad_enabled():
            return
        self.loss_calls += 1
        if self.loss_calls > 1:
            raise ValueError(
                f"{self.engine.who}: loss_fn was called twice in one closure call (or, in the plain "
                "loop, between two step() calls); the hook engine captures one loss evaluation per "
                "factor step (no micro-batches; run evaluations under torch.no_grad())"
            )
        f = args[0]
        if not f.requires_grad:
            raise ValueError(f"{self.engine.who}: the loss input does not require grad; run the closure with autograd on")
        targets = args[1] if len(args) > 1 and isinstance(args[1], Tensor) else None
        self.scale = reduction_scale(module, f, targets)
        if self.fisher_type == "empirical":
            def root(g: Tensor) -> None:
                self.root_grad = g.detach()

            output.register_hook(root)
            return
        if self.fisher_type == "exact":
            cols = num_exact_columns(module, f)
            if cols > self.engine.max_exact_columns:
                raise ValueError(
                    f"{self.engine.who}: fisher_type='exact' needs {cols} backward passes per factor "
                    f"step here (one per output entry of a sample, loss input shape "
                    f"{tuple(f.shape)}); the limit max_exact_columns is "
                    f"{self.engine.max_exact_columns}; use fisher_type='mc'"
                )
            vectors = exact_columns(module, f, targets)
        else:
            gen = self.engine._generator(f.device)
            vectors = mc_samples(module, f, gen, self.samples, targets)
        if not self.edges:
            return
        inputs = [e for _, _, e, _ in self.edges]
        for v in vectors:
            grads = torch.autograd.grad(f, inputs, grad_outputs=v, retain_graph=True, allow_unused=True)
            self._dispatch({
                (n, u): None if g is None else g.reshape(shape)
                for (n, u, _, shape), g in zip(self.edges, grads)
            })
        if self.fisher_type == "mc":
            self.rng_state = gen.get_state()

    def _dispatch(self, grads: dict[tuple[str, int], Tensor | None], weight: float = 1.0) -> None:
        for name, acc in self.accs.items():
            per_use = [grads.get((name, u)) for u in range(acc.uses)]
            acc.add_column(per_use, weight)

    def finish(self) -> None:
        if not self.need_G:
            return
        if self.loss_calls == 0:
            raise ValueError(
                f"the closure must call the loss_fn given to the engine "
                f"({type(self.engine.loss_fn).__name__}); it was not called in this capture"
            )
        if self.fisher_type == "empirical":
            if self.root_grad is None:
                raise ValueError(
                    f"{self.engine.who}: fisher_type='empirical' uses the closure's backward pass, "
                    "but no gradient reached loss_fn's output (call loss.backward() in the closure)"
                )
            s = float(self.root_grad)
            if s == 0.0 or not math.isfinite(s):
                raise ValueError(f"{self.engine.who}: the closure back-propagated {s} × loss_fn's output")
            factor = 1.0 / (s * s * self.scale)
            self._dispatch(self.empirical, factor)

r"""BackPACK's ``KFAC``/``KFLR`` as a :class:`~curvlab.curvature.factor_engine.FactorEngine`.

The path K-FAC has used so far, behind the shared interface: during
:meth:`BackpackEngine.capture` BackPACK's hooks are installed
(:class:`curvlab.curvature.backpack_hooks.BackpackHooks`) and the closure runs under
``with backpack(KFAC(mc_samples))`` (``"mc"``) or ``KFLR()`` (``"exact"``);
the loss's module extension is wrapped in
:class:`curvlab.curvature.backpack_sampling.SeededLossExtension` (private RNG state)
and ``BCEWithLogitsLoss`` uses the soft-target, many-output extension
:class:`curvlab.curvature.backpack_bce.HBPSoftBCEWithLogitsLoss`.
BackPACK leaves ``weight.kfac = [G, A]`` and ``bias.kfac = [G]``; they are
converted to the engine convention of :mod:`~curvlab.curvature.layer_factors`:

* ``Linear`` (2-D inputs): unchanged;
* ``Conv2d``: BackPACK's factors are neither of the two weight-sharing
  approximations. Its :math:`G` (``HBPConvNd._factor_from_sqrt``) sums the
  back-propagated square root over the output positions *before* the outer
  product, :math:`\sum_v\sum_n \hat g_n \hat g_n^\top` with
  :math:`\hat g_n = \sum_r g_{n,r}` — exactly the *reduce* :math:`G` — while
  its :math:`A = \frac1N\sum_{n,r} a a^\top` is :math:`R` times the *expand*
  :math:`A` (its docstring notes the factor :math:`|\mathcal T| = R` against
  Grosse & Martens' KFC). So this engine serves ``Conv2d`` only with
  ``kfac_approx="reduce"``: :math:`G` from BackPACK, :math:`A` (mean patches)
  from a forward hook; ``"expand"`` is refused (use the hook engine);
* ``bias_layout="homogeneous"``: BackPACK has no weight-bias cross term, so
  :math:`A` over ``[a, 1]`` comes from a forward hook
  (:class:`~curvlab.curvature.kronecker_factors.KroneckerAccumulator`) and
  only :math:`G` from BackPACK.

``need_G=False`` runs no BackPACK at all (forward hooks only). Refused at
capture time, with a message pointing to ``engine="hooks"``: ``"empirical"``
(BackPACK has no such K-FAC extension) and ``kfac_approx="expand"`` on a
``Conv2d`` (see above). A ``Linear`` input that is not 2-D and
``CrossEntropyLoss`` targets equal to ``ignore_index`` (BackPACK's square
root counts those terms) raise :class:`~curvlab.curvature.factor_engine.EngineUnsupported`
from a forward pre-hook, before BackPACK computes anything (so
:class:`~curvlab.curvature.factor_engine.AutoEngine` can switch to the hook
engine and call the closure again).

Loss scale: BackPACK's factors are those of the loss module's own output
(its square root starts from the module's inputs), whatever the closure does
with that output afterwards. A closure that rescales it (``loss_fn(out, y) /
len(x)``) makes BackPACK warn "The output of ... seems to have been
modified" at every factor step; the engine's contract is the module's
factors (the optimizer multiplies them by the scale it measures,
:mod:`~curvlab.curvature.loss_scale`), so that warning is filtered inside
the capture.

Supported structure (:func:`backpack_supports`): ``nn.Sequential``
containers whose leaves are ``Linear``, ``Conv2d`` (``groups = 1``, numeric
padding, ``padding_mode="zeros"``) and the parameter-free modules BackPACK
passes factors through (``ReLU``, ``Sigmoid``, ``Tanh`` not in place,
``Flatten``, ``MaxPool2d``, ``AvgPool2d``, ``ZeroPad2d``, ``Dropout``,
``Identity``), every trainable parameter in such a layer, no shared
parameters, and ``MSELoss``/``CrossEntropyLoss``/``BCEWithLogitsLoss``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from backpack import backpack
from backpack.extensions import KFAC as BackpackKFAC
from backpack.extensions import KFLR
from backpack.extensions.secondorder.hbp.losses import HBPCrossEntropyLoss, HBPMSELoss
from torch import Tensor, nn

from curvlab.curvature.backpack_bce import HBPSoftBCEWithLogitsLoss
from curvlab.curvature.backpack_hooks import BackpackHooks
from curvlab.curvature.backpack_sampling import SeededLossExtension
from curvlab.curvature.block_plan import BlockPlan, ParamCoverage, plan_blocks
from curvlab.curvature.factor_engine import (
    BIAS_LAYOUTS,
    EngineUnsupported,
    FactorCapture,
    check_capture_options,
    check_choice,
    run_capture,
)
from curvlab.curvature.kronecker_factors import KroneckerAccumulator
from curvlab.curvature.layer_factors import LayerFactors
from curvlab.curvature.loss_curvature import check_loss_module, term_mask

__all__ = ["PASS_THROUGH", "BackpackEngine", "backpack_structure", "backpack_supports"]

_HOOK_WARNING = "Full backward hook is firing when gradients are computed with respect to module outputs"
_MODIFIED_WARNING = r"The output of .* seems to have been modified"

#: Parameter-free modules BackPACK's K-FAC passes factors through.
PASS_THROUGH: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.Sigmoid, nn.Tanh, nn.Flatten, nn.MaxPool2d, nn.AvgPool2d, nn.ZeroPad2d,
    nn.Dropout, nn.Identity,
)


def backpack_structure(model: nn.Module) -> str | None:
    """``None`` if ``model``'s modules form a chain BackPACK's K-FAC handles, else the reason.

    Example:
        >>> backpack_structure(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))) is None
        True
        >>> backpack_structure(nn.Sequential(nn.Linear(2, 3), nn.ReLU(inplace=True)))
        "in-place ReLU at model.1 breaks BackPACK's hooks"
    """
    for name, module in model.named_modules():
        path = f"model.{name}" if name else "model"
        if next(module.children(), None) is not None:
            if not isinstance(module, nn.Sequential):
                return (f"container {type(module).__name__} at {path} is not nn.Sequential "
                        "(its forward is opaque to BackPACK)")
            continue
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        if not isinstance(module, PASS_THROUGH):
            return f"BackPACK's K-FAC has no {type(module).__name__} (at {path})"
        if getattr(module, "inplace", False):
            return f"in-place {type(module).__name__} at {path} breaks BackPACK's hooks"
    return None


def backpack_supports(
    model: nn.Module,
    loss_fn: object,
    trainable: Iterable[Tensor] | None = None,
    kfac_approx: str | None = None,
) -> str | None:
    """``None`` if BackPACK's K-FAC handles ``model`` and ``loss_fn``, else the reason.

    ``kfac_approx="expand"`` also excludes models with a ``Conv2d`` (see the
    module docstring); ``None`` checks the structure only.

    Example:
        >>> backpack_supports(nn.Sequential(nn.Linear(2, 2)), nn.MSELoss()) is None
        True
        >>> backpack_supports(nn.Sequential(nn.LayerNorm(2)), nn.MSELoss())
        "BackPACK's K-FAC has no LayerNorm (at model.0)"
    """
    try:
        check_loss_module(loss_fn)
    except ValueError as err:
        return str(err)
    structure = backpack_structure(model)
    if structure is not None:
        return structure
    plan = plan_blocks(model, trainable=trainable)
    for row in plan.rows:
        if row.kind == "uncovered":
            return f"{row.name} is not covered: {row.reason}"
    for group in plan.groups.values():
        if len(group.modules) > 1:
            return f"parameters shared by {' and '.join(group.paths)}"
        if group.family == "conv2d" and kfac_approx == "expand":
            return f"BackPACK's Conv2d factors are not kfac_approx='expand' ({group.paths[0]})"
    return None


class BackpackEngine:
    """Kronecker factors from BackPACK (see the module docstring).

    Args:
        model: An ``nn.Sequential`` BackPACK supports.
        loss_fn: ``MSELoss``, ``CrossEntropyLoss`` or ``BCEWithLogitsLoss`` (mean/sum).
        bias_layout: ``"separate"`` or ``"homogeneous"``.
        seed: Seed of the private sampler state (default: drawn from the global generator).
        trainable: Parameters the optimizer updates (default: ``requires_grad``).
        who: Backend name for messages.

    Raises:
        ValueError: BackPACK does not support the model or loss (the reason is named).

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net, loss_fn = nn.Sequential(nn.Linear(3, 2)), nn.MSELoss()
        >>> engine = BackpackEngine(net, loss_fn)
        >>> with engine.capture(fisher_type="exact") as cap:
        ...     loss_fn(net(torch.randn(4, 3)), torch.randn(4, 2)).backward()
        >>> f = cap.factors["0"]
        >>> tuple(f.A.shape), tuple(f.G.shape), f.params
        ((3, 3), (2, 2), ('0.weight', '0.bias'))
    """

    #: Engine name (reported by backends).
    name = "backpack"

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        *,
        bias_layout: str = "separate",
        seed: int | None = None,
        trainable: Iterable[Tensor] | None = None,
        who: str = "curvature",
    ) -> None:
        check_loss_module(loss_fn, who)
        check_choice("bias_layout", bias_layout, BIAS_LAYOUTS)
        trainable = list(trainable) if trainable is not None else None
        reason = backpack_supports(model, loss_fn, trainable)
        if reason is not None:
            raise ValueError(f"{who}: BackPACK engine cannot handle this model: {reason}; use engine='hooks'")
        self.model = model
        self.loss_fn = loss_fn
        self.bias_layout = bias_layout
        self.who = who
        self.plan: BlockPlan = plan_blocks(model, trainable=trainable)
        self.seed = int(torch.randint(0, 2**62, (), dtype=torch.int64)) if seed is None else int(seed)
        self._rng_state: Tensor | None = None
        self._hooks = BackpackHooks(model, loss_fn)
        self._inner = {
            nn.MSELoss: HBPMSELoss, nn.CrossEntropyLoss: HBPCrossEntropyLoss,
            nn.BCEWithLogitsLoss: HBPSoftBCEWithLogitsLoss,
        }[type(loss_fn)]

    def coverage(self, kfac_approx: str = "expand") -> list[ParamCoverage]:
        """Coverage rows (:meth:`~curvlab.curvature.block_plan.BlockPlan.coverage`)."""
        return self.plan.coverage(kfac_approx)

    @property
    def rng_state(self) -> Tensor | None:
        """State of the sampler BackPACK's ``KFAC`` draws from (``None``: seeded with :attr:`seed`)."""
        return self._rng_state

    @rng_state.setter
    def rng_state(self, state: Tensor | None) -> None:
        self._rng_state = None if state is None else state.clone()

    def remove(self) -> None:
        """Nothing stays installed between captures (kept for the protocol)."""

    def run(self, call, **options):
        """``(call(), capture)``: ``call`` (the closure call) inside :meth:`capture` (``options``)."""
        return run_capture(self, call, **options)

    def _check_options(self, fisher_type: str, kfac_approx: str) -> None:
        if fisher_type == "empirical":
            raise EngineUnsupported(
                f"{self.who}: the BackPACK engine has no empirical-Fisher K-FAC; "
                "fisher_type must be 'mc' or 'exact' here, or use engine='hooks'"
            )
        if kfac_approx == "expand" and any(g.family == "conv2d" for g in self.plan.groups.values()):
            raise EngineUnsupported(
                f"{self.who}: BackPACK's Conv2d G sums the output-gradient square root over "
                "positions before the outer product (the reduce G), so the BackPACK engine serves "
                "Conv2d only with kfac_approx='reduce'; use engine='hooks' for 'expand'"
            )

    @contextmanager
    def capture(
        self, *, fisher_type: str = "mc", kfac_approx: str = "expand", mc_samples: int = 1,
        need_G: bool = True,
    ) -> Iterator[FactorCapture]:
        """Run the block under BackPACK; the yielded capture holds the factors on exit.

        Raises:
            ValueError: invalid or unsupported options (see the module
                docstring), a ``Linear`` input that is not 2-D, a layer not
                reached by BackPACK, or BackPACK's own refusal.
        """
        check_capture_options(fisher_type, kfac_approx, mc_samples)
        self._check_options(fisher_type, kfac_approx)
        result = FactorCapture(fisher_type, kfac_approx)
        homogeneous = self.bias_layout == "homogeneous"
        accs = {
            name: KroneckerAccumulator(g, kfac_approx=kfac_approx, homogeneous=True)
            for name, g in self.plan.groups.items()
        }
        handles = []
        for name, group in self.plan.groups.items():
            module = group.modules[0]
            if need_G:  # without G no BackPACK runs, so any input shape is fine
                handles.append(module.register_forward_pre_hook(self._check_input(name)))
            handles.append(module.register_forward_hook(self._record(name, accs)))
        ext: Any = None
        sampler: SeededLossExtension | None = None
        if need_G:
            handles.append(self.loss_fn.register_forward_pre_hook(self._check_targets))
            ext = BackpackKFAC(mc_samples=mc_samples) if fisher_type == "mc" else KFLR()
            sampler = SeededLossExtension(self._inner(), self.seed)
            sampler.state = self._rng_state
            ext.set_module_extension(type(self.loss_fn), sampler, overwrite=True)
        try:
            with ExitStack() as stack:
                if need_G:
                    stack.enter_context(warnings.catch_warnings())
                    warnings.filterwarnings("ignore", message=_HOOK_WARNING)
                    warnings.filterwarnings("ignore", message=_MODIFIED_WARNING)
                    stack.enter_context(self._hooks)
                    stack.enter_context(backpack(ext))
                try:
                    yield result
                except (AssertionError, NotImplementedError) as err:
                    raise ValueError(
                        f"{self.who}: BackPACK could not compute the factors ({err}); the closure "
                        "must evaluate the model and the loss_fn given to the engine"
                    ) from err
        finally:
            for h in handles:
                h.remove()
        factors = {}
        for name, group in self.plan.groups.items():
            own = accs[name].result(need_G=False)
            G = None
            A = own.A
            if need_G:
                G, A_bp = self._collect(group, ext.savefield)
                if not homogeneous and group.weight is not None and group.family == "linear":
                    A = A_bp
            if not homogeneous and group.weight is not None and (not need_G or group.family == "conv2d"):
                A = _drop_bias_column(A, group)
            if not homogeneous and group.weight is None:
                A = None
            factors[name] = LayerFactors(
                name=name, kind=f"kronecker-{kfac_approx}", params=own.params, A=A, G=G,
                homogeneous=homogeneous and group.bias is not None, batch_size=own.batch_size,
                positions=own.positions,
            )
        result.factors = factors
        if sampler is not None and sampler.state is not None and fisher_type == "mc":
            self._rng_state = sampler.state
        result.rng_state = self._rng_state

    def _check_targets(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if len(args) > 1 and isinstance(args[1], Tensor) and term_mask(module, args[0], args[1]) is not None:
            raise EngineUnsupported(
                f"{self.who}: CrossEntropyLoss targets equal to ignore_index={module.ignore_index}: "
                "BackPACK's factors would count those terms; use engine='hooks'"
            )

    def _check_input(self, name: str):
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            if isinstance(module, nn.Linear) and x.dim() != 2:
                raise EngineUnsupported(
                    f"{self.who}: BackPACK's KFAC takes 2-D Linear inputs; got shape "
                    f"{tuple(x.shape)} at model.{name}; use engine='hooks' (kfac_approx applies)"
                )

        return hook

    @staticmethod
    def _record(name: str, accs: dict[str, KroneckerAccumulator]):
        def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
            if torch.is_grad_enabled():
                accs[name].add_input(module, args[0])

        return hook

    def _collect(self, group, savefield: str) -> tuple[Tensor, Tensor | None]:
        """``(G, A)`` from BackPACK's fields (removed from the parameters)."""
        G = A = None
        for p in group.params:
            found = getattr(p, savefield, None)
            if found is None:
                raise ValueError(
                    f"{self.who}: BackPACK computed no factors for {group.paths[0]} (is it on the "
                    "path from the loss to the inputs?)"
                )
            delattr(p, savefield)
            if p is group.weight:
                G, A = found[0], found[1]
            elif G is None:
                G = found[0]
        return G, A


def _drop_bias_column(A: Tensor, group) -> Tensor:
    """The weight-only part of a homogeneous ``A`` (drop the last row/column if it is the bias's)."""
    return A[:-1, :-1] if group.bias is not None else A

"""The common optimizer interface: :class:`CurvatureOptimizer`.

Every curvlab optimizer (second-order backends and first-order baselines,
built in or third-party) subclasses :class:`CurvatureOptimizer`, itself a
:class:`torch.optim.Optimizer`, so param groups, ``zero_grad``, LR
schedulers and ``state_dict`` work as usual.

Training-loop contract (see :mod:`curvlab.closure`)::

    opt = curvlab.create("kfac", model, loss_fn, lr=1e-2)
    for x, y in loader:
        loss = opt.step(curvlab.closure(model, loss_fn, x, y))

A subclass declares its hyper-parameters once (:attr:`schema`), describes
itself (:attr:`meta`) and implements :meth:`CurvatureOptimizer._update`.
The base class validates hyper-parameters, guards against non-finite
losses and gradients (the step is skipped, nothing changes, a
:class:`NonFiniteStepWarning` is issued and ``stats["skipped_steps"]``
counts it) and saves all curvature state in ``state_dict``.

State layout: per-parameter first-order state (momentum buffers) lives in
``self.state[p]`` as in torch; curvature state (Kronecker factors,
inverses, BFGS matrices, step-size EMAs, random generators, ...) lives in
``self.curv_state``, a dict keyed by strings (e.g. module names). It is
saved and restored *verbatim* (no dtype casting, unlike torch's per-param
state), so float64 factors of a float32 model survive a round trip and a
resumed run is bitwise identical.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from curvlab.closure import call_closure
from curvlab.hparams import Schema

__all__ = ["CurvatureOptimizer", "NonFiniteStepWarning", "OptimizerMeta"]


class NonFiniteStepWarning(RuntimeWarning):
    """A step was skipped because the loss, a gradient or an update was NaN/Inf."""


@dataclass(frozen=True)
class OptimizerMeta:
    """What :func:`curvlab.info` reports about an optimizer besides its hparams.

    Args:
        summary: One-line description.
        paper: Reference (authors, title, venue, arXiv id).
        layers: Parametrised layer types the method handles (``("any",)``:
            it treats parameters generically).
        losses: Loss modules the method handles (``("any",)``: any scalar loss).
        requires_closure: ``step()`` must be given a closure.
        closure_options: Contract options (``backward``, ``create_graph``,
            ``fresh``) the method passes to the closure; see :mod:`curvlab.closure`.
        needs_loss_fn: The method needs ``loss_fn`` at construction.
        conformance: Hyper-parameters the conformance suite uses on its small
            convex problem (e.g. a suitable ``lr``).
        tags: Free-form labels (``"first-order"``, ``"kronecker"``, ...).

    Example:
        >>> OptimizerMeta(summary="plain SGD").layers
        ('any',)
    """

    summary: str
    paper: str = ""
    layers: tuple[str, ...] = ("any",)
    losses: tuple[str, ...] = ("any",)
    requires_closure: bool = False
    closure_options: tuple[str, ...] = ()
    needs_loss_fn: bool = False
    conformance: Mapping[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()


def _tensors_finite(tensors: Iterable[Tensor | None]) -> bool:
    checks = [torch.isfinite(t).all() for t in tensors if t is not None]
    return bool(torch.stack(checks).all()) if checks else True


class CurvatureOptimizer(torch.optim.Optimizer):
    """Base class of every curvlab optimizer.

    Args:
        model: The network (an :class:`torch.nn.Module`); curvature methods
            hook its layers. A plain iterable of parameters is accepted for
            methods that do not need the model (first-order baselines).
        loss_fn: The loss module (needed by methods that use the output
            distribution, e.g. K-FAC's Fisher).
        params: Parameters or param groups to optimise; default: all of
            ``model.parameters()``. Group entries may override hparams.
        **hparams: Keyword-only hyper-parameters, validated against
            :attr:`schema` (defaults from the papers).

    Raises:
        ValueError: unknown or out-of-range hyper-parameter (message names
            it, the value and the allowed range); missing ``loss_fn`` where
            required.

    Example:
        >>> import torch, curvlab
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = curvlab.create("sgd", model, lr=0.1)
        >>> isinstance(opt, CurvatureOptimizer)
        True
        >>> sorted(opt.state_dict())
        ['curvlab', 'param_groups', 'state']
    """

    #: Registry name (normalised); set by each subclass.
    name: ClassVar[str] = ""
    #: Hyper-parameter declarations; set by each subclass.
    schema: ClassVar[Schema] = Schema()
    #: Description for :func:`curvlab.info`; set by each subclass.
    meta: ClassVar[OptimizerMeta] = OptimizerMeta(summary="")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        base = [
            inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("loss_fn", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
            inspect.Parameter("params", inspect.Parameter.KEYWORD_ONLY, default=None),
        ]
        hps = [
            inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=p.default)
            for p in cls.schema
        ]
        cls.__signature__ = inspect.Signature(base + hps)  # type: ignore[attr-defined]

    def __init__(
        self,
        model: nn.Module | Iterable[Any],
        loss_fn: Callable[..., Tensor] | None = None,
        *,
        params: Iterable[Any] | None = None,
        **hparams: Any,
    ) -> None:
        defaults = self.schema.validate(hparams)
        if isinstance(model, nn.Module):
            self.model: nn.Module | None = model
            if params is None:
                params = model.parameters()
        else:
            self.model = None
            if params is None:
                params = model
        if self.meta.needs_loss_fn and loss_fn is None:
            raise ValueError(f"{self.name or type(self).__name__} needs loss_fn at construction")
        self.loss_fn = loss_fn
        self.curv_state: dict[str, Any] = {}
        self.stats: dict[str, float] = {"steps": 0, "skipped_steps": 0}
        super().__init__(params, defaults)
        self._setup()

    # ------------------------------------------------------------------ hooks
    def _setup(self) -> None:
        """Subclass hook run at the end of ``__init__`` (check layers, register hooks)."""

    def _evaluate(self, closure: Callable[..., Tensor]) -> Tensor:
        """Run the closure for the step (override to wrap it, e.g. in a BackPACK context)."""
        opts = self.meta.closure_options
        return call_closure(closure, who=self.name, create_graph="create_graph" in opts)

    def _update(self, closure: Callable[..., Tensor] | None, loss: Tensor | None) -> None:
        """Apply one update; gradients are finite when this is called."""
        raise NotImplementedError

    # ---------------------------------------------------------------- helpers
    def require_model(self) -> nn.Module:
        """Return the model or raise if the optimizer was built from bare parameters."""
        if self.model is None:
            raise ValueError(f"{self.name} needs the model (an nn.Module) at construction")
        return self.model

    def skip_step(self, reason: str) -> None:
        """Count a skipped step and warn; callers must leave all state unchanged."""
        self.stats["skipped_steps"] += 1
        warnings.warn(
            f"{self.name}: step skipped ({reason}); parameters and state unchanged",
            NonFiniteStepWarning,
            stacklevel=3,
        )

    def count(self, key: str, n: float = 1) -> None:
        """Increment the counter ``stats[key]`` (exposed to users and the harness)."""
        self.stats[key] = self.stats.get(key, 0) + n

    @staticmethod
    def all_finite(tensors: Iterable[Tensor | None]) -> bool:
        """True when every given tensor is free of NaN/Inf (one device sync)."""
        return _tensors_finite(tensors)

    def _grads(self) -> list[Tensor | None]:
        return [p.grad for g in self.param_groups for p in g["params"]]

    # ------------------------------------------------------------------- step
    def step(self, closure: Callable[..., Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """Take one optimisation step (see the training-loop contract above).

        Args:
            closure: Re-evaluates the loss (and back-propagates). Required by
                methods with ``meta.requires_closure``.

        Returns:
            The loss returned by the closure at the start of the step (or
            ``None`` without closure).

        Raises:
            ValueError: the method needs a closure (or closure options) that
                were not given.
        """
        if closure is None and self.meta.requires_closure:
            raise ValueError(
                f"{self.name} needs step(closure); build one with "
                "curvlab.closure(model, loss_fn, inputs, targets)"
            )
        loss = self._evaluate(closure) if closure is not None else None
        if loss is not None and isinstance(loss, Tensor) and not bool(torch.isfinite(loss).all()):
            self.skip_step("non-finite loss")
            return loss
        if not self.all_finite(self._grads()):
            self.skip_step("non-finite gradient")
            return loss
        skipped_before = self.stats["skipped_steps"]
        self._update(closure, loss)
        if self.stats["skipped_steps"] == skipped_before:  # _update may skip too
            self.stats["steps"] += 1
        return loss

    # ------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Torch's state dict plus ``"curvlab"``: curvature state and counters."""
        sd = super().state_dict()
        sd["curvlab"] = {"curv_state": self.curv_state, "stats": dict(self.stats)}
        return sd

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore everything saved by :meth:`state_dict` (curvature state verbatim).

        Raises:
            ValueError: the dict lacks the ``"curvlab"`` entry (not saved by curvlab).
        """
        state_dict = dict(state_dict)
        extra = state_dict.pop("curvlab", None)
        if extra is None:
            raise ValueError(
                f"{self.name}: state dict has no 'curvlab' entry; it was not saved by curvlab"
            )
        super().load_state_dict(state_dict)
        self.curv_state = copy.deepcopy(extra["curv_state"])
        self.stats = dict(extra["stats"])
        self._after_load()

    def _after_load(self) -> None:
        """Subclass hook after :meth:`load_state_dict` (rebuild derived caches)."""

    # ------------------------------------------------------------ param groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; its hyper-parameter overrides are validated too."""
        overrides = {k: v for k, v in param_group.items() if k not in ("params", "name")}
        checked = self.schema.validate(overrides, partial=True)
        super().add_param_group({**param_group, **checked})

"""The common optimizer interface: :class:`CurvatureOptimizer`.

Every curvlab optimizer (second-order backends and first-order baselines,
built in or third-party) subclasses :class:`CurvatureOptimizer`, itself a
:class:`torch.optim.Optimizer`, so param groups, ``zero_grad``, LR
schedulers and ``state_dict`` work as usual.

Training-loop contract (see :mod:`curvlab.closure`)::

    opt = curvlab.create("kfac", model, loss_fn, lr=1e-2)
    for x, y in loader:
        loss = opt.step(curvlab.closure(model, loss_fn, x, y))

A subclass declares its hyper-parameters once (:attr:`~CurvatureOptimizer.schema`),
describes itself (:attr:`~CurvatureOptimizer.meta`) and implements two
functions of the step, with the step's data passed explicitly (nothing is
stashed on the optimizer between them)::

    evaluation = self._evaluate(closure)          # -> Evaluation(loss, data)
    result = self._update(closure, evaluation)    # -> Step(counts=...) | Skip(reason)

The base class validates hyper-parameters (values and scopes: a param group
may not override a per-optimizer value), refuses what a backend cannot
handle (sparse gradients unless ``meta.sparse_gradients``), guards against
non-finite losses and gradients (the step is skipped, nothing changes, a
:class:`NonFiniteStepWarning` is issued and ``stats["skipped_steps"]``
counts it), counts the steps from what ``_update`` returns, and saves all
curvature state in ``state_dict``.

State layout: per-parameter first-order state (momentum buffers) lives in
``self.state[p]`` as in torch; curvature state (Kronecker factors,
inverses, BFGS matrices, step-size EMAs, random generators, ...) lives in
``self.curv_state``, a dict keyed by strings (e.g. module names). It is
saved and restored *verbatim* (no dtype casting, unlike torch's per-param
state), so float64 factors of a float32 model survive a round trip and a
resumed run is bitwise identical.

Hyper-parameters after construction: per-group values (``lr``, ``damping``,
...) are read from ``param_groups`` at every step, so LR schedulers and
edits of ``group["damping"]`` take effect at the next step. Per-optimizer
values are fixed when the optimizer is built (:attr:`~CurvatureOptimizer.optimizer_hparams`;
the backend built objects from them): editing one in a param group makes
the next ``step`` raise a :class:`ValueError` naming it, instead of being
ignored. ``load_state_dict`` restores the per-group values saved in the
checkpoint (as torch does) and refuses a checkpoint whose per-optimizer
values, optimizer or parameter shapes differ.
"""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import Tensor, nn

from curvlab.closure import OPTION_PURPOSES, call_closure
from curvlab.curvature.coverage import parameter_names
from curvlab.curvature.coverage_table import CoverageTable, generic_coverage
from curvlab.curvature.finite import all_finite
from curvlab.hparams import OPTIMIZER, Schema

__all__ = [
    "CurvatureOptimizer",
    "Evaluation",
    "NonFiniteStepWarning",
    "OptimizerMeta",
    "Skip",
    "Step",
]

T = TypeVar("T")


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
        requires_closure: ``step()`` must be given a closure (otherwise the
            plain loop ``loss.backward(); opt.step()`` works, the method reading
            what the user's forward and backward left: :meth:`CurvatureOptimizer._evaluate_plain`).
        closure_options: Contract options (``backward``, ``create_graph``,
            ``fresh``) the method passes to the closure; see :mod:`curvlab.closure`.
        closure_reason: Why the method needs a closure, for the error of
            ``step()`` without one and the docs (default: derived from
            ``closure_options``).
        loop_notes: How the method works in the loops it supports (docs).
        needs_loss_fn: The method needs ``loss_fn`` at construction.
        sparse_gradients: The method handles sparse gradients
            (``nn.Embedding(sparse=True)``); otherwise they are refused at
            construction (naming the module) or at the step (naming the parameter).
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
    closure_reason: str = ""
    loop_notes: str = ""
    needs_loss_fn: bool = False
    sparse_gradients: bool = False
    conformance: Mapping[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()

    @property
    def why_closure(self) -> str:
        """Why ``step()`` needs a closure: ``closure_reason``, or what the ``closure_options`` are for.

        Example:
            >>> OptimizerMeta(summary="x", requires_closure=True,
            ...               closure_reason="it evaluates the loss twice").why_closure
            'it evaluates the loss twice'
        """
        if self.closure_reason:
            return self.closure_reason
        if self.closure_options:
            return "; ".join(OPTION_PURPOSES[o] for o in self.closure_options)
        return "it evaluates the loss itself inside step()" if self.requires_closure else ""

    @property
    def loops(self) -> dict[str, bool]:
        """Which training loops the method supports.

        ``"plain"``: ``loss.backward(); opt.step()``; ``"closure"``:
        ``opt.step(curvlab.closure(...))``; ``"keyword-free closure"``: a
        closure that accepts none of the contract keywords (PyTorch
        Lightning's automatic optimization).

        Example:
            >>> OptimizerMeta(summary="x", requires_closure=True, closure_options=("fresh",)).loops
            {'plain': False, 'closure': True, 'keyword-free closure': False}
        """
        return {"plain": not self.requires_closure, "closure": True,
                "keyword-free closure": not self.closure_options}


@dataclass(frozen=True)
class Evaluation(Generic[T]):
    """What :meth:`CurvatureOptimizer._evaluate` returns: the loss and the step's data.

    Args:
        loss: What the closure returned (``None`` for ``step()`` without closure).
        data: Anything :meth:`CurvatureOptimizer._update` needs from the
            evaluation (K-FAC: the new Kronecker factor estimates; K-BFGS: the
            recorded layer statistics), passed explicitly instead of being
            stored on the optimizer.

    Example:
        >>> Evaluation(torch.tensor(1.0)).data is None
        True
    """

    loss: Any
    data: T | None = None


@dataclass(frozen=True)
class Step:
    """An applied step, as returned by :meth:`CurvatureOptimizer._update`.

    Args:
        counts: Increments of counters in ``optimizer.stats`` (e.g.
            ``{"pairs": 3}``).
        values: Latest values to record in ``optimizer.stats`` (e.g.
            ``{"kl_clip_nu": 0.4}``).

    Example:
        >>> Step(counts={"pairs": 2}).counts["pairs"]
        2
    """

    counts: Mapping[str, float] = field(default_factory=dict)
    values: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Skip:
    """A skipped step: ``_update`` changed nothing (parameters and all state kept).

    The base class counts it in ``stats["skipped_steps"]`` and issues one
    :class:`NonFiniteStepWarning` with the reason.

    Example:
        >>> Skip("non-finite Kronecker factors").reason
        'non-finite Kronecker factors'
    """

    reason: str


def _tensor_list(params: Any, who: str) -> list[Any]:
    """The params argument as a list, with clear errors for what torch would reject obscurely."""
    if isinstance(params, Tensor):
        raise ValueError(
            f"{who}: params must be an iterable of tensors or param-group dicts, got a single "
            f"tensor of shape {tuple(params.shape)} (pass [tensor] or the model)"
        )
    if isinstance(params, (str, bytes, Mapping)) or not isinstance(params, Iterable):
        raise ValueError(
            f"{who}: expected an nn.Module or an iterable of parameters / param groups, got "
            f"{type(params).__name__} {params!r:.60}"
        )
    items = list(params)
    if not items:
        raise ValueError(f"{who}: got an empty parameter list (nothing to optimise)")
    for i, item in enumerate(items):
        if isinstance(item, Mapping):
            if "params" not in item:
                raise ValueError(f"{who}: param group {i} has no 'params' entry")
        elif not isinstance(item, Tensor):
            raise ValueError(
                f"{who}: params entry {i} is a {type(item).__name__}, expected a tensor or a "
                "param-group dict"
            )
    return items


class CurvatureOptimizer(torch.optim.Optimizer):
    """Base class of every curvlab optimizer.

    Args:
        model: The network (an :class:`torch.nn.Module`); curvature methods
            hook its layers. A plain iterable of parameters is accepted for
            methods that do not need the model (first-order baselines).
        loss_fn: The loss module (needed by methods that use the output
            distribution, e.g. K-FAC's Fisher).
        params: Parameters or param groups to optimise; default: all of
            ``model.parameters()``. Group entries may override per-group
            hyper-parameters (not per-optimizer ones).
        **hparams: Keyword-only hyper-parameters, validated against
            :attr:`schema` (defaults from the papers).

    Raises:
        ValueError: unknown or out-of-range hyper-parameter (message names
            it, the value and the allowed range); a param group overriding a
            per-optimizer hyper-parameter; a ``model``/``params`` argument
            that is not a module or parameters; missing ``loss_fn`` where
            required; sparse gradients where unsupported.

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
        schema = cls.__dict__.get("schema", getattr(cls, "schema", None))
        hps = [
            inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=p.default)
            for p in (schema if isinstance(schema, Schema) else ())
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
        who = self.name or type(self).__name__
        defaults = self.schema.validate(hparams)
        if isinstance(model, nn.Module):
            self.model: nn.Module | None = model
            if params is None:
                params = model.parameters()
        else:
            self.model = None
            if params is None:
                if model is None:
                    raise ValueError(
                        f"{who} needs the model (an nn.Module) or an iterable of its parameters, "
                        "got None"
                    )
                params = model
            elif model is not None:
                raise ValueError(
                    f"{who}: model must be an nn.Module (or None with params=...), got "
                    f"{type(model).__name__}"
                )
        params = _tensor_list(params, who)
        if loss_fn is not None and not callable(loss_fn):
            raise ValueError(f"{who}: loss_fn must be callable (a loss module), got {loss_fn!r:.60}")
        if self.meta.needs_loss_fn and loss_fn is None:
            raise ValueError(f"{who} needs loss_fn at construction")
        self.loss_fn = loss_fn
        #: Per-optimizer hyper-parameters, fixed at construction (read-only).
        self.optimizer_hparams: Mapping[str, Any] = MappingProxyType(
            {k: defaults[k] for k in self.schema.scoped(OPTIMIZER)}
        )
        self.curv_state: dict[str, Any] = {}
        self.stats: dict[str, float] = {"steps": 0, "skipped_steps": 0}
        super().__init__(params, defaults)
        if not self.meta.sparse_gradients:
            self._refuse_sparse_modules()
        self._setup()

    # ------------------------------------------------------------------ hooks
    def _setup(self) -> None:
        """Subclass hook run at the end of ``__init__`` (check layers, register hooks)."""

    def _validate_group(self, group: Mapping[str, Any]) -> None:
        """Subclass hook: refuse a (complete) param group whose values do not fit together.

        ``group`` holds every hyper-parameter and ``"params"`` (a list).
        """

    def _evaluate(self, closure: Callable[..., Tensor]) -> Evaluation[Any]:
        """Run the closure for the step (override to wrap it, e.g. in a BackPACK context).

        Returns:
            The :class:`Evaluation`: the loss and whatever :meth:`_update`
            needs from this evaluation (default: nothing).
        """
        opts = self.meta.closure_options
        return Evaluation(call_closure(closure, who=self.name, create_graph="create_graph" in opts))

    def _evaluate_plain(self) -> Evaluation[Any]:
        """``step()`` without closure: the step's data from what the user's own forward and backward left.

        Called only when ``meta.requires_closure`` is false. The default has
        nothing to collect (first-order methods read ``.grad``); a curvature
        backend that supports the plain loop returns what its hooks recorded
        since the previous step (the loss is ``None``).
        """
        return Evaluation(None)

    def _update(
        self, closure: Callable[..., Tensor] | None, evaluation: Evaluation[Any]
    ) -> Step | Skip | None:
        """Apply one update; gradients are finite when this is called.

        Returns:
            :class:`Step` (or ``None``) when the update was applied,
            :class:`Skip` when nothing was changed.
        """
        raise NotImplementedError

    def _after_load(self) -> None:
        """Subclass hook after :meth:`load_state_dict` (rebuild derived caches)."""

    def coverage(self) -> CoverageTable:
        """Which update each parameter gets: a printable table (:mod:`curvlab.curvature.coverage_table`).

        Layer-wise curvature backends return their block kinds and fallback
        rows (:class:`~curvlab.curvature.fallback.Fallback`); this default
        marks every trainable parameter ``generic`` (the method has no
        per-layer blocks) and the others ``frozen``.

        Example:
            >>> import torch, curvlab
            >>> print(curvlab.create("sgd", torch.nn.Linear(2, 1), lr=0.1).coverage())
            parameter  shape   kind
            weight     (1, 2)  generic
            bias       (1,)    generic
        """
        return generic_coverage(self.model, self.param_groups)

    # ---------------------------------------------------------------- helpers
    def require_model(self) -> nn.Module:
        """Return the model or raise if the optimizer was built from bare parameters."""
        if self.model is None:
            raise ValueError(f"{self.name} needs the model (an nn.Module) at construction")
        return self.model

    def _grads(self) -> list[Tensor]:
        return [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]

    def _refuse_sparse_modules(self) -> None:
        """Raise for a module of the model that produces sparse gradients for our parameters."""
        if self.model is None:
            return
        ours = {id(p) for g in self.param_groups for p in g["params"] if p.requires_grad}
        for mname, module in self.model.named_modules():
            if getattr(module, "sparse", False) is True and any(
                id(p) in ours for p in module.parameters(recurse=False)
            ):
                raise ValueError(
                    f"{self.name} does not support sparse gradients; {type(module).__name__} at "
                    f"model.{mname} has sparse=True (use sparse=False, or an optimizer that "
                    "supports them, e.g. sgd)"
                )

    def _refuse_sparse_gradients(self) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None and p.grad.layout != torch.strided:
                    name = parameter_names(self.model, [p])[id(p)]
                    raise ValueError(
                        f"{self.name} does not support sparse gradients; {name} has a "
                        f"{p.grad.layout} gradient"
                    )

    def _check_optimizer_hparams(self) -> None:
        """Refuse a per-optimizer hyper-parameter edited in ``param_groups`` after construction."""
        fixed = self.optimizer_hparams
        for i, group in enumerate(self.param_groups):
            for key, value in fixed.items():
                if group.get(key, value) != value:
                    raise ValueError(
                        f"{self.name}: {key} is optimizer-wide and fixed at construction "
                        f"({key}={value!r}); param group {i} was changed to {group[key]!r}. "
                        "Build a new optimizer to change it"
                    )

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
                were not given; a per-optimizer hyper-parameter was edited in
                ``param_groups``; a sparse gradient reaches a method that does
                not support them.
        """
        if closure is None and self.meta.requires_closure:
            raise ValueError(
                f"{self.name} needs step(closure), not the plain loop loss.backward(); "
                f"opt.step(): {self.meta.why_closure}. Build one with "
                "curvlab.closure(model, loss_fn, inputs, targets)"
            )
        if self.optimizer_hparams:
            self._check_optimizer_hparams()
        evaluation = self._evaluate(closure) if closure is not None else self._evaluate_plain()
        if not isinstance(evaluation, Evaluation):  # an _evaluate that returns the bare loss
            evaluation = Evaluation(evaluation)
        loss = evaluation.loss
        if isinstance(loss, Tensor):
            finite = all_finite([loss.detach()])
        else:
            finite = loss is None or not isinstance(loss, float) or math.isfinite(loss)
        if not finite:
            self._record(Skip("non-finite loss"))
            return loss
        if not self.meta.sparse_gradients:
            self._refuse_sparse_gradients()
        if not all_finite(self._grads()):
            self._record(Skip("non-finite gradient"))
            return loss
        self._record(self._update(closure, evaluation))
        return loss

    def _record(self, result: Step | Skip | None) -> None:
        """Count the step's outcome in :attr:`stats` (and warn for a skipped step)."""
        stats = self.stats
        if isinstance(result, Skip):
            stats["skipped_steps"] += 1
            warnings.warn(
                f"{self.name}: step skipped ({result.reason}); parameters and state unchanged",
                NonFiniteStepWarning,
                stacklevel=3,
            )
            return
        if result is not None and not isinstance(result, Step):
            raise TypeError(
                f"{type(self).__name__}._update must return Step, Skip or None, got {result!r:.80}"
            )
        stats["steps"] += 1
        if result is not None:
            for key, n in result.counts.items():
                stats[key] = stats.get(key, 0) + n
            stats.update(result.values)

    # ------------------------------------------------------------ persistence
    def _shapes(self) -> list[list[tuple[int, ...]]]:
        return [[tuple(p.shape) for p in g["params"]] for g in self.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """Torch's state dict plus ``"curvlab"``: curvature state, counters and identity.

        The ``"curvlab"`` entry holds ``curv_state``, ``stats``, the
        optimizer's name, its per-optimizer hyper-parameters and the shapes of
        its parameters (checked by :meth:`load_state_dict`).
        """
        sd = super().state_dict()
        sd["curvlab"] = {
            "curv_state": self.curv_state,
            "stats": dict(self.stats),
            "optimizer": self.name,
            "optimizer_hparams": dict(self.optimizer_hparams),
            "shapes": self._shapes(),
        }
        return sd

    def _check_loadable(self, state_dict: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
        """Raise unless ``state_dict`` was saved by this kind of optimizer on these shapes."""
        saved_name = extra.get("optimizer")
        if saved_name is not None and saved_name != self.name:
            raise ValueError(
                f"{self.name}: the state dict was saved by {saved_name!r}, not by {self.name!r}"
            )
        groups = state_dict.get("param_groups", [])
        # keys a group may carry besides the schema's: torch's and the LR schedulers' own
        known = set(self.schema.names) | {"params", "name", "initial_lr"}
        known |= {k for g in self.param_groups for k in g}
        for i, group in enumerate(groups):
            unknown = sorted(k for k in group if k not in known)
            if unknown:
                raise ValueError(
                    f"{self.name}: param group {i} of the state dict has hyper-parameters "
                    f"{', '.join(unknown)} that {self.name} does not declare (saved by another "
                    "optimizer?)"
                )
        if len(groups) != len(self.param_groups):
            raise ValueError(
                f"{self.name}: the state dict has {len(groups)} param group(s), this optimizer "
                f"has {len(self.param_groups)}"
            )
        for i, (saved, ours) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(ours["params"]):
                raise ValueError(
                    f"{self.name}: param group {i} of the state dict has {len(saved['params'])} "
                    f"parameter(s), this optimizer's has {len(ours['params'])}"
                )
        shapes = extra.get("shapes")
        if shapes is not None:
            names = parameter_names(self.model, [p for g in self.param_groups for p in g["params"]])
            for g, (saved, ours) in enumerate(zip(shapes, self.param_groups)):
                for j, (shape, p) in enumerate(zip(saved, ours["params"])):
                    if tuple(shape) != tuple(p.shape):
                        raise ValueError(
                            f"{self.name}: the state dict was saved for a parameter of shape "
                            f"{tuple(shape)} where this optimizer has {names[id(p)]} of shape "
                            f"{tuple(p.shape)} (param group {g}, index {j})"
                        )
        saved_hp = extra.get("optimizer_hparams")
        if saved_hp is None:  # older checkpoints: the values sit in every param group
            saved_hp = {k: groups[0][k] for k in self.optimizer_hparams if groups and k in groups[0]}
        differ = {k: v for k, v in saved_hp.items()
                  if k in self.optimizer_hparams and self.optimizer_hparams[k] != v}
        if differ:
            text = ", ".join(f"{k}={v!r} (this optimizer: {self.optimizer_hparams[k]!r})"
                             for k, v in differ.items())
            raise ValueError(
                f"{self.name}: the state dict was saved with other per-optimizer "
                f"hyper-parameters: {text}; build the optimizer with the checkpoint's values"
            )

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore everything saved by :meth:`state_dict` (curvature state verbatim).

        Per-group hyper-parameters (``lr``, ``damping``, ...) are restored
        from the checkpoint, as :class:`torch.optim.Optimizer` does;
        per-optimizer ones must equal this optimizer's (the backend built its
        objects from them).

        Raises:
            ValueError: the dict lacks the ``"curvlab"`` entry (not saved by
                curvlab); it was saved by another optimizer; its param groups,
                parameter counts or shapes differ; or its per-optimizer
                hyper-parameters differ (each message names what differs).
        """
        state_dict = dict(state_dict)
        extra = state_dict.pop("curvlab", None)
        if extra is None:
            raise ValueError(
                f"{self.name}: state dict has no 'curvlab' entry; it was not saved by curvlab"
            )
        self._check_loadable(state_dict, extra)
        super().load_state_dict(state_dict)
        self.curv_state = copy.deepcopy(extra["curv_state"])
        self.stats = dict(extra["stats"])
        self._after_load()

    # ------------------------------------------------------------ param groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; its overrides are validated (per-group ones only)."""
        params = param_group.get("params")
        if isinstance(params, Tensor):
            params = [params]
        elif params is not None and not isinstance(params, (list, set)):
            params = list(params)  # a generator is read once: keep its items for torch
        overrides = {k: v for k, v in param_group.items() if k not in ("params", "name")}
        checked = self.schema.validate_group(overrides, self.optimizer_hparams)
        group = {**param_group, **checked, "params": params}
        self._validate_group({**self.defaults, **group})
        super().add_param_group(group)

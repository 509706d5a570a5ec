r"""One interface for the curvature factors of every layer: :class:`FactorEngine`.

A backend (K-FAC, FOOF, K-BFGS) asks an engine for the factors of a factor
step and never branches on which engine computes them::

    engine = make_engine(model, loss_fn, bias_layout="separate")
    engine.coverage()                       # which parameter has which block
    loss, cap = engine.run(closure, fisher_type="mc", kfac_approx="expand")
    cap.factors["0"].A, cap.factors["0"].G  # LayerFactors per block
    state = engine.rng_state                # save; engine.rng_state = state to resume

(``with engine.capture(...) as cap: loss = closure()`` is the same for one
engine; :meth:`FactorEngine.run` owns the closure call, so that
:class:`AutoEngine` can call it again with the other engine.) Engines:

* :class:`~curvlab.curvature.backpack_engine.BackpackEngine`: BackPACK's
  ``KFAC``/``KFLR`` (plus the soft-target ``BCEWithLogitsLoss`` extension
  :mod:`~curvlab.curvature.backpack_bce`) for ``nn.Sequential`` chains of
  ``Linear``/``Conv2d`` on 2-D inputs;
* :class:`~curvlab.curvature.hook_engine.HookEngine`: curvlab's own
  forward/backward hooks for everything the block plan covers
  (:mod:`~curvlab.curvature.block_plan`): ``Linear`` on N-D inputs
  (expand/reduce), ``Conv2d``, ``Embedding``, norm layers, shared modules,
  in-place activations;
* :class:`AutoEngine` (what ``make_engine(engine="auto")`` returns for a
  model BackPACK handles by its structure): BackPACK, until a capture meets
  what only shows in the data (a ``Linear`` input that is not 2-D,
  ``CrossEntropyLoss`` targets equal to ``ignore_index``); BackPACK refuses
  it in a forward pre-hook, before computing anything
  (:class:`EngineUnsupported`), and from then on the hook engine serves.

Both return factors in one scaling convention
(:mod:`~curvlab.curvature.layer_factors`) and agree to float64 round-off
where both apply (``tests/curvature/test_factor_engines.py``).

Capture options (validated, with the allowed values in the message):

``fisher_type``
    ``"mc"``: targets sampled from the model's predictive distribution,
    one extra backward pass to the layer outputs per sample;
    ``"exact"``: the exact GGN, one backward pass per output entry of a
    sample (:func:`~curvlab.curvature.loss_curvature.num_exact_columns`:
    ``C`` for a classifier, ``T·V`` for a sequence model; the hook engine
    refuses more than ``max_exact_columns``); ``"empirical"`` (hook engine
    only): the gradients of the user's own backward pass, no extra pass.
``kfac_approx``
    ``"expand"`` or ``"reduce"`` (Eschenhagen et al. 2023).
``mc_samples``
    Samples per input for ``"mc"`` (:math:`\ge 1`).
``need_G``
    ``False``: input-side factors only (FOOF), no backward work at all.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from curvlab.curvature.block_plan import BlockPlan, ParamCoverage, check_kfac_approx
from curvlab.curvature.layer_factors import LayerFactors

__all__ = [
    "BIAS_LAYOUTS",
    "ENGINES",
    "FISHER_TYPES",
    "AutoEngine",
    "EngineUnsupported",
    "FactorCapture",
    "FactorEngine",
    "check_capture_options",
    "check_choice",
    "describe_engine",
    "make_engine",
    "run_capture",
]

FISHER_TYPES = ("mc", "exact", "empirical")
BIAS_LAYOUTS = ("separate", "homogeneous")
ENGINES = ("auto", "backpack", "hooks")


class EngineUnsupported(ValueError):
    """An engine cannot compute this capture's factors (found before it computed anything)."""


def check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    """Raise a ValueError naming ``name``, the allowed values and a close match."""
    if value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{name} must be one of {allowed}; got {value!r}{hint}")


def check_capture_options(fisher_type: str, kfac_approx: str, mc_samples: int) -> None:
    """Validate the capture options (see the module docstring).

    Raises:
        ValueError: an unknown ``fisher_type``/``kfac_approx`` or ``mc_samples < 1``.

    Example:
        >>> check_capture_options("kflr", "expand", 1)
        Traceback (most recent call last):
        ...
        ValueError: fisher_type must be one of ('mc', 'exact', 'empirical'); got 'kflr'
    """
    check_choice("fisher_type", fisher_type, FISHER_TYPES)
    check_kfac_approx(kfac_approx)
    if not isinstance(mc_samples, int) or isinstance(mc_samples, bool) or mc_samples < 1:
        raise ValueError(f"mc_samples must be an integer >= 1; got {mc_samples!r}")


@dataclass
class FactorCapture:
    """What one :meth:`FactorEngine.capture` block produced (filled when the block exits).

    Attributes:
        fisher_type: The capture's Fisher type.
        kfac_approx: ``"expand"`` or ``"reduce"``.
        factors: ``{block name: LayerFactors}`` for every covered block.
        rng_state: The sampler's state after this capture (``None`` if nothing was sampled).
    """

    fisher_type: str
    kfac_approx: str
    factors: dict[str, LayerFactors] = field(default_factory=dict)
    rng_state: Tensor | None = None


@runtime_checkable
class FactorEngine(Protocol):
    """Computes per-block curvature factors during the user's closure call.

    Attributes:
        name: ``"backpack"`` or ``"hooks"`` (the engine that serves the captures).
        plan: The :class:`~curvlab.curvature.block_plan.BlockPlan` (covered
            groups, coverage rows).
        seed: Seed of the private Monte-Carlo sampler while :attr:`rng_state`
            is ``None``.
        rng_state: State of the private Monte-Carlo sampler (``None`` before
            the first sample); assigning a saved state resumes its stream.
    """

    name: str
    plan: BlockPlan
    seed: int

    def coverage(self, kfac_approx: str = "expand") -> list[ParamCoverage]:
        """One row per parameter: name, shape, block kind, block key, uses, reason."""
        ...

    def capture(
        self, *, fisher_type: str = "mc", kfac_approx: str = "expand", mc_samples: int = 1,
        need_G: bool = True,
    ) -> AbstractContextManager[FactorCapture]:
        """Context manager: run the closure inside; the yielded capture holds the factors after."""
        ...

    def run(self, call: Callable[[], Any], **options: Any) -> tuple[Any, FactorCapture]:
        """``(call(), capture)``: ``call`` run inside :meth:`capture` with ``options``."""
        ...

    @property
    def rng_state(self) -> Tensor | None:
        """The sampler's state (see the class docstring)."""
        ...

    @rng_state.setter
    def rng_state(self, state: Tensor | None) -> None: ...

    def remove(self) -> None:
        """Release everything the engine installed (idempotent)."""
        ...


def run_capture(engine: FactorEngine, call: Callable[[], Any], **options: Any) -> tuple[Any, FactorCapture]:
    """``(call(), capture)``: ``call`` inside ``engine.capture(**options)`` (each engine's ``run``).

    Example:
        >>> import torch
        >>> net, loss_fn = torch.nn.Sequential(torch.nn.Linear(3, 2)), torch.nn.MSELoss()
        >>> x, y = torch.randn(4, 3), torch.randn(4, 2)
        >>> loss, cap = run_capture(make_engine(net, loss_fn, engine="hooks"),
        ...                         lambda: loss_fn(net(x), y).backward(), fisher_type="exact")
        >>> sorted(cap.factors)
        ['0']
    """
    with engine.capture(**options) as cap:
        out = call()
    return out, cap


class AutoEngine:
    """BackPACK's engine until a capture needs the hook engine, then the hook engine for good.

    Both engines are built at construction (same plan, same seed); the
    sampler state moves with the switch (:attr:`rng_state` is one state).
    The switch happens in :meth:`run`: when the BackPACK engine raises
    :class:`EngineUnsupported` (from a forward pre-hook, before any factor,
    gradient or random number is computed), ``call`` runs again under the
    hook engine. The choice depends only on the model and the shapes it is
    fed, so a resumed run makes it again at its first capture.

    Args:
        backpack: The :class:`~curvlab.curvature.backpack_engine.BackpackEngine`.
        hooks: The :class:`~curvlab.curvature.hook_engine.HookEngine`.

    Example:
        >>> import torch
        >>> net, loss_fn = torch.nn.Sequential(torch.nn.Linear(3, 2)), torch.nn.MSELoss()
        >>> engine = make_engine(net, loss_fn, seed=0)
        >>> engine.name
        'backpack'
        >>> x, y = torch.randn(4, 5, 3), torch.randn(4, 5, 2)      # a Linear on 3-D inputs
        >>> _, cap = engine.run(lambda: loss_fn(net(x), y).backward())
        >>> engine.name, tuple(cap.factors["0"].A.shape)
        ('hooks', (3, 3))
    """

    def __init__(self, backpack: FactorEngine, hooks: FactorEngine) -> None:
        self.backpack = backpack
        self.hooks = hooks
        self.active: FactorEngine = backpack
        self.plan = backpack.plan

    @property
    def name(self) -> str:
        """The engine that serves the captures now."""
        return self.active.name

    @property
    def seed(self) -> int:
        """The sampler's seed (the same in both engines)."""
        return self.active.seed

    @seed.setter
    def seed(self, value: int) -> None:
        self.backpack.seed = self.hooks.seed = int(value)

    @property
    def rng_state(self) -> Tensor | None:
        """The sampler's state (handed to the other engine on a switch)."""
        return self.active.rng_state

    @rng_state.setter
    def rng_state(self, state: Tensor | None) -> None:
        self.backpack.rng_state = self.hooks.rng_state = state

    def coverage(self, kfac_approx: str = "expand") -> list[ParamCoverage]:
        """Coverage rows (the same for both engines)."""
        return self.plan.coverage(kfac_approx)

    @contextmanager
    def capture(self, **options: Any) -> Iterator[FactorCapture]:
        """The active engine's capture (no switch: use :meth:`run` for that)."""
        with self.active.capture(**options) as cap:
            yield cap

    def run(self, call: Callable[[], Any], **options: Any) -> tuple[Any, FactorCapture]:
        """``(call(), capture)``; switches to the hook engine (and calls again) on :class:`EngineUnsupported`."""
        if self.active is self.backpack:
            state = self.backpack.rng_state
            try:
                return self.backpack.run(call, **options)
            except EngineUnsupported:
                self.active = self.hooks
                self.hooks.rng_state = state
        return self.hooks.run(call, **options)

    def remove(self) -> None:
        """Remove whatever either engine installed."""
        self.backpack.remove()
        self.hooks.remove()


def describe_engine(engine: FactorEngine) -> str:
    """One line saying which engine computes the factors (for coverage tables and ``info``).

    Example:
        >>> import torch
        >>> describe_engine(make_engine(torch.nn.Sequential(torch.nn.LayerNorm(2)), None))
        "Kronecker factors from curvlab's hooks"
    """
    if isinstance(engine, AutoEngine) and engine.name == "backpack":
        return ("Kronecker factors from BackPACK's KFAC/KFLR (nn.Sequential of supported layers; "
                "curvlab's hooks from the first capture that needs them)")
    if engine.name == "backpack":
        return "Kronecker factors from BackPACK's KFAC/KFLR"
    return "Kronecker factors from curvlab's hooks"


def make_engine(
    model: nn.Module,
    loss_fn: nn.Module | None,
    *,
    engine: str = "auto",
    kfac_approx: str = "expand",
    bias_layout: str = "separate",
    seed: int | None = None,
    trainable: Iterable[Tensor] | None = None,
    who: str = "curvature",
) -> FactorEngine:
    """The factor engine for ``model``: BackPACK where it applies, curvlab's hooks otherwise.

    ``"auto"`` returns an :class:`AutoEngine` (BackPACK first) when BackPACK
    computes the factors for ``kfac_approx`` by the model's structure
    (``nn.Sequential`` of ``Linear`` and parameter-free modules, plus
    ``Conv2d`` for ``"reduce"`` only; every trainable parameter in such a
    layer; MSE/CE/BCEWithLogits) and the hook engine otherwise (always when
    ``loss_fn`` is ``None``: forward statistics only, ``need_G=False``).
    ``"backpack"`` refuses N-D ``Linear`` inputs and ``"empirical"`` at capture
    time with a message that says to use ``engine="hooks"``.

    Args:
        model: The network.
        loss_fn: ``MSELoss``, ``CrossEntropyLoss`` or ``BCEWithLogitsLoss`` (mean or
            sum); ``None`` (hook engine only) when the captures need no ``G``.
        engine: ``"auto"``, ``"backpack"`` or ``"hooks"``.
        kfac_approx: The approximation the backend will capture (only used to
            choose the engine; each capture names its own).
        bias_layout: ``"separate"`` (BackPACK's ``[G, A]`` + bias ``[G]``) or
            ``"homogeneous"`` (bias folded into ``A``).
        seed: Seed of the private Monte-Carlo generator (default: drawn from
            torch's global generator, so ``torch.manual_seed`` makes it reproducible).
        trainable: The parameters the optimizer updates (default: ``requires_grad``).
        who: Backend name for messages.

    Raises:
        ValueError: an unknown ``engine``/``bias_layout``, an unsupported loss,
            or ``engine="backpack"`` on a model BackPACK does not support.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2))
        >>> type(make_engine(net, torch.nn.MSELoss())).__name__
        'AutoEngine'
        >>> type(make_engine(torch.nn.Sequential(torch.nn.LayerNorm(3)), torch.nn.MSELoss())).__name__
        'HookEngine'
        >>> type(make_engine(net, None)).__name__
        'HookEngine'
    """
    from curvlab.curvature.backpack_engine import BackpackEngine, backpack_supports
    from curvlab.curvature.hook_engine import HookEngine

    check_choice("engine", engine, ENGINES)
    check_kfac_approx(kfac_approx)
    check_choice("bias_layout", bias_layout, BIAS_LAYOUTS)
    trainable = list(trainable) if trainable is not None else None
    if seed is None:
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    kwargs = {"bias_layout": bias_layout, "seed": seed, "trainable": trainable, "who": who}
    if engine == "backpack":
        if loss_fn is None:
            raise ValueError("engine='backpack' needs the loss module (BackPACK computes G)")
        return BackpackEngine(model, loss_fn, **kwargs)
    hooks = HookEngine(model, loss_fn, **kwargs)
    if engine == "hooks" or loss_fn is None:
        return hooks
    if backpack_supports(model, loss_fn, trainable, kfac_approx) is not None:
        return hooks
    return AutoEngine(BackpackEngine(model, loss_fn, **kwargs), hooks)

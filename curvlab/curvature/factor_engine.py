r"""One interface for the curvature factors of every layer: :class:`FactorEngine`.

A backend (K-FAC, FOOF, K-BFGS) asks an engine for the factors of a factor
step and never branches on which engine computes them::

    engine = make_engine(model, loss_fn, bias_layout="separate")
    engine.coverage()                       # which parameter has which block
    with engine.capture(fisher_type="mc", kfac_approx="expand") as cap:
        loss = closure()                    # the user's forward + backward
    cap.factors["0"].A, cap.factors["0"].G  # LayerFactors per block
    state = engine.rng_state                # save; engine.rng_state = state to resume

Two engines implement it:

* :class:`~curvlab.curvature.backpack_engine.BackpackEngine`: BackPACK's
  ``KFAC``/``KFLR`` (plus the soft-target ``BCEWithLogitsLoss`` extension of
  ``curvlab_plugins.kfac``) for ``nn.Sequential`` chains of ``Linear``/``Conv2d``
  on 2-D inputs;
* :class:`~curvlab.curvature.hook_engine.HookEngine`: curvlab's own
  forward/backward hooks for everything the block plan covers
  (:mod:`~curvlab.curvature.block_plan`): ``Linear`` on N-D inputs
  (expand/reduce), ``Conv2d``, ``Embedding``, norm layers, shared modules,
  in-place activations.

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
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from curvlab.curvature.block_plan import BlockPlan, ParamCoverage, check_kfac_approx
from curvlab.curvature.layer_factors import LayerFactors

__all__ = [
    "BIAS_LAYOUTS",
    "ENGINES",
    "FISHER_TYPES",
    "FactorCapture",
    "FactorEngine",
    "check_capture_options",
    "check_choice",
    "make_engine",
]

FISHER_TYPES = ("mc", "exact", "empirical")
BIAS_LAYOUTS = ("separate", "homogeneous")
ENGINES = ("auto", "backpack", "hooks")


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
        plan: The :class:`~curvlab.curvature.block_plan.BlockPlan` (covered
            groups, coverage rows).
        rng_state: State of the private Monte-Carlo sampler (``None`` before
            the first sample); assigning a saved state resumes its stream.
    """

    plan: BlockPlan

    def coverage(self, kfac_approx: str = "expand") -> list[ParamCoverage]:
        """One row per parameter: name, shape, block kind, block key, uses, reason."""
        ...

    def capture(
        self, *, fisher_type: str = "mc", kfac_approx: str = "expand", mc_samples: int = 1,
        need_G: bool = True,
    ) -> AbstractContextManager[FactorCapture]:
        """Context manager: run the closure inside; the yielded capture holds the factors after."""
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


def make_engine(
    model: nn.Module,
    loss_fn: nn.Module,
    *,
    engine: str = "auto",
    kfac_approx: str = "expand",
    bias_layout: str = "separate",
    seed: int | None = None,
    trainable: Iterable[Tensor] | None = None,
    who: str = "curvature",
) -> FactorEngine:
    """The factor engine for ``model``: BackPACK where it applies, curvlab's hooks otherwise.

    ``"auto"`` picks :class:`~curvlab.curvature.backpack_engine.BackpackEngine`
    when BackPACK computes the factors for ``kfac_approx`` (``nn.Sequential``
    of ``Linear`` and parameter-free modules, plus ``Conv2d`` for ``"reduce"``
    only; every trainable parameter in such a layer; MSE/CE/BCEWithLogits) and
    the hook engine otherwise. The BackPACK engine refuses N-D ``Linear``
    inputs and ``"empirical"`` at capture time with a message that says to use
    ``engine="hooks"``.

    Args:
        model: The network.
        loss_fn: ``MSELoss``, ``CrossEntropyLoss`` or ``BCEWithLogitsLoss`` (mean or sum).
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
        'BackpackEngine'
        >>> type(make_engine(torch.nn.Sequential(torch.nn.LayerNorm(3)), torch.nn.MSELoss())).__name__
        'HookEngine'
    """
    from curvlab.curvature.backpack_engine import BackpackEngine, backpack_supports
    from curvlab.curvature.hook_engine import HookEngine

    check_choice("engine", engine, ENGINES)
    check_kfac_approx(kfac_approx)
    check_choice("bias_layout", bias_layout, BIAS_LAYOUTS)
    trainable = list(trainable) if trainable is not None else None
    kwargs = {"bias_layout": bias_layout, "seed": seed, "trainable": trainable, "who": who}
    if engine == "hooks" or (engine == "auto" and backpack_supports(model, loss_fn, trainable, kfac_approx) is not None):
        return HookEngine(model, loss_fn, **kwargs)
    return BackpackEngine(model, loss_fn, **kwargs)

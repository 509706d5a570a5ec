r"""Curvature statistics from the user's own training loop: :class:`PlainLoopCapture`.

The plain PyTorch loop gives the optimizer no closure::

    opt.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()

A factor engine (:mod:`~curvlab.curvature.factor_engine`) normally captures
inside the closure call it owns. :class:`PlainLoopCapture` opens the same
capture of the hook engine (:class:`~curvlab.curvature.hook_engine.HookEngine`)
*between* two ``step()`` calls instead: it is *armed* (hooks installed) at
construction and again at the end of every ``step()`` without closure whose
successor needs statistics, records whatever forward and backward passes
with autograd on run until the next ``step()``, and is *collected* there
(hooks removed, factors computed). What each Fisher type costs in this mode
(measured in ``benchmarks/plain_loop_cost.py``):

* input-side statistics (FOOF's :math:`\Sigma`, K-FAC's :math:`A`): forward
  hooks, as in closure mode;
* ``fisher_type="empirical"``: tensor hooks on the layer outputs receive the
  gradients of the user's own ``loss.backward()``; no extra pass;
* ``"mc"`` and ``"exact"``: the sampled targets' (the loss Hessian's columns')
  partial backward passes run when the user's code calls ``loss_fn``, from
  the network outputs to the recorded layer outputs, on the forward graph
  (``retain_graph=True``), because the user's backward frees that graph
  before ``step()``; ``step()`` then only folds the result in.

A :class:`~curvlab.curvature.loss_scale.LossScaleProbe` may be attached: it
measures, from the user's backward, the multiple :math:`c` between the loss
the user back-propagated and ``loss_fn`` (``loss_fn(out, y) / k``, a sum
over micro-batches, plus parameter penalties), exactly as for a closure.

Forward passes with autograd *on* between two steps are part of the step's
statistics (run evaluations under ``torch.no_grad()``: the hooks ignore
them). A step with closure :meth:`disarm`\ s the capture (its own capture
serves it); the optimizer arms it again after its next ``step()`` without
closure. The hooks are removed when the owning optimizer is garbage-collected
(:func:`weakref.finalize`), so a discarded optimizer leaves the model as it was.

Example:
    >>> import torch
    >>> from curvlab.curvature.factor_engine import make_engine
    >>> net, loss_fn = torch.nn.Sequential(torch.nn.Linear(3, 2)), torch.nn.MSELoss()
    >>> plain = PlainLoopCapture(make_engine(net, loss_fn, engine="hooks"), who="demo")
    >>> plain.arm(fisher_type="empirical")
    >>> loss_fn(net(torch.randn(4, 3)), torch.randn(4, 2)).backward()
    >>> capture, scale = plain.collect()
    >>> tuple(capture.factors["0"].G.shape), scale is None, plain.armed
    ((2, 2), True, False)
"""

from __future__ import annotations

import weakref
from contextlib import AbstractContextManager
from typing import Any

from curvlab.curvature.factor_engine import FactorCapture, FactorEngine
from curvlab.curvature.loss_scale import LossScale, LossScaleProbe

__all__ = ["PlainLoopCapture", "hook_engine"]

_HOW = (
    "in the plain loop, run loss = loss_fn(model(x), y); loss.backward() with the loss_fn "
    "given at construction before opt.step(), or pass a closure: opt.step(curvlab.closure(...))"
)


def hook_engine(engine: FactorEngine) -> FactorEngine:
    """The hook engine behind ``engine`` (an :class:`~curvlab.curvature.factor_engine.AutoEngine`'s, or itself).

    BackPACK's engine needs ``with backpack(...)`` around the backward call,
    which the plain loop does not give the optimizer; the hook engine
    computes the same factors (``tests/curvature/test_factor_engines.py``).

    Raises:
        ValueError: ``engine`` is BackPACK's alone.

    Example:
        >>> import torch
        >>> from curvlab.curvature.factor_engine import make_engine
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2))
        >>> hook_engine(make_engine(net, torch.nn.MSELoss())).name
        'hooks'
    """
    engine = getattr(engine, "hooks", engine)
    if engine.name != "hooks":
        raise ValueError("the plain loop needs curvlab's hook engine (engine='auto' or 'hooks')")
    return engine


class PlainLoopCapture:
    """A factor capture spanning the user's code between two ``step()`` calls (module docstring).

    Args:
        engine: The backend's factor engine (its hook engine is used).
        who: Optimizer name for messages.
        probe: Measures the loss scale of the user's backward (``None``: not needed).
        owner: The optimizer; when it is garbage-collected the hooks are removed.
    """

    def __init__(self, engine: FactorEngine, *, who: str, probe: LossScaleProbe | None = None,
                 owner: Any = None) -> None:
        self.engine = hook_engine(engine)
        self.who = who
        self.probe = probe
        self._context: AbstractContextManager[FactorCapture] | None = None
        self._capture: FactorCapture | None = None
        if owner is not None:
            weakref.finalize(owner, self.disarm)

    @property
    def armed(self) -> bool:
        """Whether hooks are installed and recording."""
        return self._context is not None

    def arm(self, **options: Any) -> None:
        """Install the hooks for the next step (``options``: those of the engine's ``capture``); idempotent."""
        if self._context is not None:
            return
        context = self.engine.capture(**options)
        self._capture = context.__enter__()
        self._context = context
        if self.probe is not None:
            self.probe.__enter__()

    def disarm(self) -> None:
        """Remove the hooks and forget what they recorded (idempotent)."""
        context, self._context, self._capture = self._context, None, None
        if self.probe is not None and self.probe.active:
            self.probe.__exit__(None, None, None)
            self.probe.forget()
        if context is not None:
            context.gen.close()  # type: ignore[attr-defined]  # the generator's finally removes the hooks
        self.engine.remove()

    def collect(self) -> tuple[FactorCapture, LossScale | None] | None:
        """Remove the hooks and return what they recorded: ``(capture, measured loss scale)``.

        Returns ``None`` when the capture was not armed. The loss scale is
        ``None`` without a probe.

        Raises:
            ValueError: nothing usable was recorded (a covered layer or
                ``loss_fn`` did not run with autograd on, no backward pass
                through ``loss_fn``, a loss that is not a multiple of
                ``loss_fn``); the message says how to run the plain loop.
        """
        if self._context is None:
            return None
        context, capture, self._context, self._capture = self._context, self._capture, None, None
        try:
            if self.probe is not None:
                self.probe.__exit__(None, None, None)
            try:
                context.__exit__(None, None, None)
            except ValueError as err:
                raise ValueError(
                    f"{self.who}: step() without closure uses the forward and backward passes "
                    f"run since the previous step, and they do not suffice: {err}. {_HOW}"
                ) from err
            scale = None
            if self.probe is not None:
                try:
                    scale = self.probe.measure(None)
                except ValueError as err:
                    raise ValueError(
                        f"{self.who}: step() without closure: {err}. {_HOW}") from err
        finally:
            if self.probe is not None:
                self.probe.forget()
            self.engine.remove()
        assert capture is not None
        return capture, scale

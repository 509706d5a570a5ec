r"""Cost of a step that survives a busy machine: a reference step timed in the run, and counted passes.

A step time in seconds depends on everything else the machine does at that
moment: the same SGD step measured while another process was busy came out
8× slower than Adam's step measured while it was idle. So every run also
times, interleaved with its own steps in the same process, a fixed
*reference step* (:class:`ReferenceStep`): the problem's plain SGD step
(forward, backward, :class:`torch.optim.SGD` update) on a private copy of
the model and on the same mini-batch, after every ``reference_every`` steps.
The *step cost* is

.. math::

    \text{step cost} = \frac{\text{mean time of the run's steps}}
                            {\text{mean time of the reference step}}

in *reference steps*. Which clock (:func:`cost_clock`): on the CPU with one
torch thread, the CPU time of the thread (:func:`time.thread_time`), which
does not advance while another process has the core, so the ratio is that of
an idle machine (measured next to two busy processes on 2 cores: within
~15 % of the idle ratio, where the wall-clock ratio moved by up to 1.9×);
with several threads or on CUDA the wall clock (the work is spread over
threads or the device; interleaving then makes both slow down alike on
average, but single runs are noisier). Every run also records its wall-clock
step time and the wall-clock ratio.

The reference model has its own parameters and uses ``lr = 0``, so it
never moves and never diverges, and the timing runs under a forked global
RNG: the run's own numbers are the same with or without it.

:class:`PassCounter` counts forward passes of the model and backward passes
through it during ``opt.step``: a forward hook on the model registers a
pre-hook on the autograd node that produced its output, which runs once in
every backward pass that starts at or goes through the output (a
``loss.backward()``, a ``torch.autograd.grad`` from the output, the second
backward of a Hessian-vector product). Backward passes per step are the
*gradient-equivalents*: 1 for SGD, 2 for K-BFGS (two gradient
evaluations), 2 for AdaHessian (the gradient and one Hessian-vector
product), 1.1 for Sophia-H (a Hessian-vector product every 10 steps), and
for the hook engine's Monte-Carlo factors one more (partial) pass per
sample on factor steps. BackPACK extensions (the ``kfac`` plugin) propagate
their extra quantities inside the same backward pass, so that pass counts
once. The counts are exact, not timed; what a pass costs (a partial pass, a
BackPACK extension) shows in the timed step cost.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["CLOCKS", "PassCounter", "ReferenceStep", "cost_clock", "read_clock"]

#: Clocks of the step cost: the thread's CPU time, or the wall clock.
CLOCKS = ("thread-cpu", "wall")


def cost_clock(device: str, threads: int) -> str:
    """The clock of the step cost: ``"thread-cpu"`` on the CPU with one thread, else ``"wall"``.

    Example:
        >>> cost_clock("cpu", 1), cost_clock("cpu", 4), cost_clock("cuda", 1)
        ('thread-cpu', 'wall', 'wall')
    """
    return "thread-cpu" if device == "cpu" and threads == 1 else "wall"


def read_clock(clock: str) -> float:
    """Seconds on ``clock`` (:data:`CLOCKS`); only differences are meaningful."""
    return time.thread_time() if clock == "thread-cpu" else time.perf_counter()


def _sync(device: torch.device | str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


class ReferenceStep:
    """The problem's plain SGD step on a private copy of the model, timed.

    Args:
        model: The run's model at initialisation (deep-copied; the copy is
            never updated: ``lr = 0``).
        loss_fn: The problem's loss module.
        clock: The cost clock (:func:`cost_clock`).

    Attributes:
        times: Wall-clock seconds of every timed reference step.
        clock_times: Seconds of every timed reference step on ``clock``.

    Example:
        >>> m = nn.Linear(3, 1)
        >>> ref = ReferenceStep(m, nn.MSELoss())
        >>> t = ref.time(torch.randn(8, 3), torch.randn(8, 1))
        >>> t > 0, len(ref.times), ref.mean > 0, ref.clock_mean >= 0
        (True, 1, True, True)
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[Tensor, Any], Tensor],
                 clock: str = "wall") -> None:
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
        self.model = copy.deepcopy(model)
        self.model.train()
        self.loss_fn = loss_fn
        self.clock = clock
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=0.0)
        self.device = next(iter(params)).device if params else torch.device("cpu")
        self.times: list[float] = []
        self.clock_times: list[float] = []

    def time(self, x: Any, y: Any) -> float:
        """Time one step on ``(x, y)`` (global RNG forked: the run's random numbers are untouched).

        Returns:
            Its wall-clock seconds.
        """
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            _sync(self.device)
            t0, c0 = time.perf_counter(), read_clock(self.clock)
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.model(x), y)
            loss.backward()
            self.optimizer.step()
            _sync(self.device)
            dt, dc = time.perf_counter() - t0, read_clock(self.clock) - c0
        self.times.append(dt)
        self.clock_times.append(dc)
        return dt

    def warm_up(self, x: Any, y: Any) -> None:
        """One untimed step (allocations and first-call costs of this process), not recorded."""
        self.time(x, y)
        self.times.pop()
        self.clock_times.pop()

    @property
    def mean(self) -> float:
        """Mean wall-clock reference-step time (NaN before the first)."""
        return sum(self.times) / len(self.times) if self.times else float("nan")

    @property
    def clock_mean(self) -> float:
        """Mean reference-step time on the cost clock (NaN before the first)."""
        return sum(self.clock_times) / len(self.clock_times) if self.clock_times else float("nan")


def _first_grad_tensor(output: Any) -> Tensor | None:
    if isinstance(output, Tensor):
        return output if output.requires_grad else None
    if isinstance(output, (tuple, list)):
        for item in output:
            found = _first_grad_tensor(item)
            if found is not None:
                return found
    if isinstance(output, dict):
        for item in output.values():
            found = _first_grad_tensor(item)
            if found is not None:
                return found
    return None


class PassCounter:
    """Count forward passes of ``model`` and backward passes through its output while active.

    Example:
        >>> m = nn.Linear(2, 1)
        >>> c = PassCounter(m)
        >>> with c.counting():
        ...     m(torch.randn(4, 2)).sum().backward()
        >>> c.forward, c.backward
        (1, 1)
        >>> _ = m(torch.randn(4, 2))  # not counted: outside counting()
        >>> c.forward
        1
    """

    def __init__(self, model: nn.Module) -> None:
        self.forward = 0
        self.backward = 0
        self._active = False
        self._handle = model.register_forward_hook(self._on_forward)

    def _on_forward(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if not self._active:
            return
        self.forward += 1
        out = _first_grad_tensor(output)
        if out is not None and out.grad_fn is not None:
            out.grad_fn.register_prehook(self._on_backward)

    def _on_backward(self, grad_outputs: Any) -> None:
        self.backward += 1

    def counting(self) -> _Counting:
        """Context manager: count inside it."""
        return _Counting(self)

    def remove(self) -> None:
        """Remove the hook from the model."""
        self._handle.remove()


class _Counting:
    """Switches a :class:`PassCounter` on for a ``with`` block."""

    def __init__(self, counter: PassCounter) -> None:
        self.counter = counter

    def __enter__(self) -> PassCounter:
        self.counter._active = True
        return self.counter

    def __exit__(self, *exc: object) -> None:
        self.counter._active = False

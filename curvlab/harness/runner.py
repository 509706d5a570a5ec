"""Execute one :class:`~curvlab.harness.config.RunConfig` in three stages: prepare, train, measure.

- :func:`prepare` loads the problem and its data (once per run, in the
  process that trains), builds the seeded model, the loss and the optimizer
  and the two seeded mini-batch streams: a :class:`Setup`.
- :func:`train` runs the timed loop and returns a :class:`Trajectory`
  (the curve, steps, training time, why it stopped).
- :func:`measure` turns both into the typed :class:`RunMetrics`.

:func:`execute` runs the three with the run's thread count and a private
copy of torch's global RNG (both restored afterwards), records the warnings
the run raised, and turns a failure into a ``status="error"`` result. A
problem whose data cannot be loaded fails every run of a comparison alike,
so that is not a per-run result: :func:`execute` raises :class:`DataError`.

Per step the loop uses only the public training-loop contract::

    loss = opt.step(curvlab.closure(model, loss_fn, x, y, batches=fresh))

where ``(x, y)`` is the next mini-batch of the seeded stream and ``fresh``
a second seeded stream (seed ``seed + 1_000_003``) that serves the separate
batches some methods ask for (``fresh=True``), so the main data order is the
same for every optimizer. Only ``opt.step`` and reading the loss are timed;
evaluations (full train loss, test loss and accuracy every ``eval_every``
steps) are not.

A run stops when the step or time budget is spent or when it diverges: a
non-finite loss or a loss above ``1e3 ×`` the initial full train loss. A
diverged run is a result (``stop_reason="diverged"``), not an error.
"""

from __future__ import annotations

import contextlib
import math
import resource
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

import curvlab
from curvlab.harness.config import RunConfig
from curvlab.harness.problems import BatchStream, Dataset, Problem, load_problem
from curvlab.harness.results import CurvePoint, RunMetrics, RunResult

__all__ = ["DIVERGENCE_FACTOR", "FRESH_SEED_OFFSET", "DataError", "Setup", "Trajectory",
           "execute", "measure", "prepare", "train"]

DIVERGENCE_FACTOR = 1e3
FRESH_SEED_OFFSET = 1_000_003


class DataError(ValueError):
    """The problem's data could not be loaded (the same for every run of that problem)."""


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:  # not Linux
        return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


@torch.no_grad()
def _mean_loss(model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor, classify: bool,
               chunk: int = 4096) -> tuple[float, float | None]:
    """Mean loss (and accuracy when ``classify``) over ``x`` in chunks."""
    total, correct = 0.0, 0
    for i in range(0, x.shape[0], chunk):
        xb, yb = x[i : i + chunk], y[i : i + chunk]
        out = model(xb)
        total += float(loss_fn(out, yb)) * xb.shape[0]
        if classify:
            correct += int((out.argmax(dim=1) == yb).sum())
    n = x.shape[0]
    return total / n, (correct / n if classify else None)


@dataclass
class Setup:
    """Everything :func:`prepare` built for one run (on the run's device and dtype).

    Attributes:
        config: The run.
        problem: The problem instance (its ``optimum`` filled in by loading).
        data: Train and test tensors.
        model: The seeded model.
        loss_fn: The loss module handed to the optimizer.
        optimizer: The optimizer ``curvlab.create`` built from the config.
        batches: The seeded mini-batch stream.
        fresh: The second seeded stream for ``fresh=True`` batches.
        rss_before_mb: Resident memory before the run was prepared (MiB).
    """

    config: RunConfig
    problem: Problem
    data: Dataset
    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    batches: BatchStream
    fresh: BatchStream
    rss_before_mb: float = math.nan

    def evaluate(self, step: int, seconds: float) -> CurvePoint:
        """An ``"eval"`` point: full train loss, test loss and accuracy (reported scale)."""
        classify = self.problem.task == "classification"
        scale = self.problem.loss_scale
        self.model.eval()
        train_loss, _ = _mean_loss(self.model, self.loss_fn, self.data.x_train,
                                   self.data.y_train, False)
        test_loss, acc = _mean_loss(self.model, self.loss_fn, self.data.x_test,
                                    self.data.y_test, classify)
        self.model.train()
        return CurvePoint("eval", step, seconds, train_loss * scale, test_loss * scale, acc)


@dataclass
class Trajectory:
    """What :func:`train` recorded.

    Attributes:
        curve: Batch and evaluation points, in the order they were taken.
        steps: Steps taken.
        train_time: Seconds in ``opt.step`` (evaluation excluded).
        stop_reason: ``"steps"``, ``"seconds"`` or ``"diverged"``.
    """

    curve: list[CurvePoint] = field(default_factory=list)
    steps: int = 0
    train_time: float = 0.0
    stop_reason: str = "steps"

    @property
    def evaluations(self) -> list[CurvePoint]:
        """The ``"eval"`` points."""
        return [p for p in self.curve if p.kind == "eval"]


def prepare(config: RunConfig) -> Setup:
    """Load the data and build model, loss, optimizer and batch streams for ``config``.

    Uses torch's global RNG (seeded with ``config.seed``, for optimizers
    that draw random numbers): call it inside :func:`execute`'s environment,
    or accept that the global RNG is reseeded.

    Raises:
        DataError: the problem's data cannot be loaded (message names the
            problem and the cause).
        ValueError: unknown problem or optimizer, invalid hparams (from
            ``curvlab.create``).

    Example:
        >>> s = prepare(RunConfig("quadratic", "sgd", {"lr": 0.1}, seed=0, steps=5))
        >>> type(s.optimizer).__name__, s.data.n_train
        ('SGD', 2048)
    """
    device, dtype = config.device, getattr(torch, config.dtype)
    rss = _rss_mb()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    problem = load_problem(config.problem, **config.problem_options)
    try:
        data = problem.load_data()
    except Exception as err:  # noqa: BLE001 - any failure here is the problem's, not the run's
        raise DataError(f"problem {problem.name!r}: cannot load its data: {err}") from err
    data = data.to(device, dtype)
    model = problem.init_model(config.seed).to(device=device, dtype=dtype)
    loss_fn = problem.loss_fn()
    torch.manual_seed(config.seed)  # optimizers that draw random numbers use the global RNG
    opt = curvlab.create(config.optimizer, model, loss_fn, **config.hparams)
    batches = BatchStream(data.x_train, data.y_train, problem.batch_size, config.seed)
    fresh = BatchStream(data.x_train, data.y_train, problem.batch_size,
                        config.seed + FRESH_SEED_OFFSET)
    return Setup(config, problem, data, model, loss_fn, opt, batches, fresh, rss)


def train(setup: Setup) -> Trajectory:
    """The timed loop: step until the budget is spent or the loss diverges.

    Example:
        >>> s = prepare(RunConfig("quadratic", "sgd", {"lr": 0.1}, seed=0, steps=4, eval_every=2))
        >>> t = train(s)
        >>> t.steps, t.stop_reason, [p.step for p in t.evaluations]
        (4, 'steps', [0, 2, 4])
    """
    cfg, model, loss_fn, opt = setup.config, setup.model, setup.loss_fn, setup.optimizer
    scale = setup.problem.loss_scale
    run = Trajectory()
    run.curve.append(setup.evaluate(0, 0.0))
    limit = DIVERGENCE_FACTOR * max(abs(run.curve[0].loss), 1e-12)
    while cfg.steps is None or run.steps < cfg.steps:
        if cfg.seconds is not None and run.train_time >= cfg.seconds:
            run.stop_reason = "seconds"
            break
        x, y = next(setup.batches)
        closure = curvlab.closure(model, loss_fn, x, y, batches=setup.fresh)
        _sync(cfg.device)
        t0 = time.perf_counter()
        loss = opt.step(closure)
        value = float(loss.detach()) * scale if isinstance(loss, Tensor) else math.nan
        _sync(cfg.device)
        run.train_time += time.perf_counter() - t0
        run.steps += 1
        run.curve.append(CurvePoint("batch", run.steps, run.train_time, value))
        if not math.isfinite(value) or value > limit:
            run.stop_reason = "diverged"
            break
        if run.steps % cfg.eval_every == 0:
            run.curve.append(setup.evaluate(run.steps, run.train_time))
    if run.curve[-1].kind != "eval":
        run.curve.append(setup.evaluate(run.steps, run.train_time))
    return run


def measure(setup: Setup, run: Trajectory) -> RunMetrics:
    """The run's :class:`RunMetrics` from its trajectory and the process's memory.

    Example:
        >>> s = prepare(RunConfig("quadratic", "sgd", {"lr": 0.1}, seed=0, steps=4))
        >>> m = measure(s, train(s))
        >>> m.steps, m.final_loss < m.initial_loss, m.diverged
        (4, True, False)
    """
    device = setup.config.device
    evals = run.evaluations
    finite = [p.loss for p in evals if math.isfinite(p.loss)]
    last, diverged = evals[-1], run.stop_reason == "diverged"
    if device.startswith("cuda"):
        peak = delta = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = _peak_rss_mb()
        delta = max(0.0, peak - setup.rss_before_mb)
    return RunMetrics(
        steps=run.steps,
        train_time=run.train_time,
        step_time=run.train_time / max(run.steps, 1),
        initial_loss=evals[0].loss,
        final_loss=math.inf if diverged else last.loss,
        best_loss=min(finite) if finite else math.inf,
        final_test_loss=math.inf if diverged else last.test_loss,
        final_test_acc=last.test_acc,
        peak_mem_mb=peak,
        mem_delta_mb=delta,
        diverged=diverged,
        optimum=setup.problem.optimum,
    )


@contextlib.contextmanager
def _environment(config: RunConfig) -> Iterator[list[warnings.WarningMessage]]:
    """The run's thread count, a private global RNG and recorded warnings; all restored after."""
    threads = torch.get_num_threads()
    devices = [config.device] if config.device.startswith("cuda") else []
    torch.set_num_threads(config.threads)
    try:
        with torch.random.fork_rng(devices=devices), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        torch.set_num_threads(threads)


def execute(config: RunConfig) -> RunResult:
    """Run ``config`` and return its result; a failing run becomes ``status="error"``.

    Args:
        config: The run.

    Returns:
        The :class:`RunResult` (an optimizer that raises gives an error result).

    Raises:
        DataError: the problem's data cannot be loaded (a comparison-wide
            error: every run of the problem would fail alike).

    Example:
        >>> cfg = RunConfig("quadratic", "sgd", {"lr": 0.1}, seed=0, steps=20, eval_every=10)
        >>> r = execute(cfg)
        >>> r.status, r.stop_reason, r.metrics.steps, r.metrics.final_loss < r.metrics.initial_loss
        ('done', 'steps', 20, True)
    """
    try:
        with _environment(config) as caught:
            setup = prepare(config)
            run = train(setup)
            metrics = measure(setup, run)
            stats = {k: float(v) for k, v in setup.optimizer.stats.items()}
        metrics = replace(metrics, warnings=len(caught),
                          warning_kinds=tuple(sorted({w.category.__name__ for w in caught})))
        return RunResult(config.key(), "done", run.stop_reason, metrics, stats, run.curve)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - a failing run is recorded, not raised
        return RunResult(key=config.key(), status="error", error=f"{type(err).__name__}: {err}")

"""Execute one :class:`~curvlab.harness.config.RunConfig` in three stages: prepare, train, measure.

- :func:`prepare` loads the problem and its data (once per run, in the
  process that trains, with its train / validation / test split), builds the
  seeded model, the loss, the optimizer, the learning-rate schedule, the two
  seeded mini-batch streams, the reference step and the pass counter: a
  :class:`Setup`.
- :func:`train` runs the timed loop and returns a :class:`Trajectory`
  (the curve, steps, training time, why it stopped), checkpointing it every
  ``checkpoint_every`` steps when asked.
- :func:`measure` turns both into the typed :class:`RunMetrics`.

:func:`execute` runs the three with the run's thread count and private
copies of the global random generators (torch, NumPy, Python: seeded with
the run's seed, restored afterwards), records the warnings the run raised
and what produced it (:mod:`curvlab.harness.provenance`), resumes from a
checkpoint when one exists, and turns a failure into a ``status="error"``
result. A problem whose data cannot be loaded, or whose data files differ
from those the comparison was planned with, fails every run alike, so that
is not a per-run result: :func:`execute` raises :class:`DataError`.

Per step the loop uses only the public training-loop contract::

    loss = opt.step(curvlab.closure(model, loss_fn, x, y, batches=fresh))

where ``(x, y)`` is the next mini-batch (``batch_size`` rows) of the seeded
stream and ``fresh`` a second seeded stream (``fresh_batch_size`` rows, seed
``seed + 1_000_003``) that serves the separate batches some methods ask for
(``fresh=True``), so the main data order is the same for every optimizer.
Only ``opt.step`` and reading the loss are timed. After every
``reference_every`` steps the reference step
(:class:`~curvlab.harness.timing.ReferenceStep`) is timed on the same batch;
the step's cost in reference steps is the ratio of the two means.

Evaluation (not timed), every ``eval_every`` steps: the train loss on the
problem's fixed evaluation subset (:meth:`Problem.evaluation_subset`, its
size is recorded) and loss and accuracy on the whole validation set; at the
end also the full training set and the test set. Accuracy counts target
entries (:meth:`Problem.evaluate`).

A run stops when the step or time budget is spent or when it diverges: a
non-finite loss or a loss above ``1e3 ×`` the initial train loss. A
diverged run is a result (``stop_reason="diverged"``), not an error.
"""

from __future__ import annotations

import contextlib
import math
import random
import resource
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import curvlab
from curvlab.harness.checkpoint import load_checkpoint, save_checkpoint
from curvlab.harness.config import UNRECORDED, RunConfig
from curvlab.harness.problems import BatchStream, Dataset, Problem, load_problem
from curvlab.harness.provenance import plugin_code_hash, run_provenance
from curvlab.harness.results import CurvePoint, RunMetrics, RunResult
from curvlab.harness.schedules import build_scheduler
from curvlab.harness.timing import PassCounter, ReferenceStep, cost_clock, read_clock

__all__ = ["DIVERGENCE_FACTOR", "FRESH_SEED_OFFSET", "DataError", "RunControls", "Setup",
           "Trajectory", "execute", "measure", "prepare", "train"]

DIVERGENCE_FACTOR = 1e3
FRESH_SEED_OFFSET = 1_000_003


class DataError(ValueError):
    """The problem's data could not be loaded (the same for every run of that problem)."""


@dataclass(frozen=True)
class RunControls:
    """How to execute one run; never part of its identity (its key).

    Attributes:
        reference_every: Time the reference step after every N steps.
        checkpoint: The run's checkpoint file (``None``: no checkpoints);
            an existing one is resumed from.
        checkpoint_every: Write the checkpoint every N steps.
    """

    reference_every: int = 5
    checkpoint: Path | None = None
    checkpoint_every: int | None = None


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


@dataclass
class Setup:
    """Everything :func:`prepare` built for one run (on the run's device and dtype).

    Attributes:
        config: The run.
        problem: The problem instance (its ``optimum`` filled in by loading).
        data: Train, validation and test tensors.
        eval_x, eval_y: The evaluation subset of the training rows.
        model: The seeded model.
        loss_fn: The loss module handed to the optimizer.
        optimizer: The optimizer ``curvlab.create`` built from the config.
        scheduler: The learning-rate scheduler (``None``: constant).
        batches: The seeded mini-batch stream.
        fresh: The second seeded stream for ``fresh=True`` batches.
        reference: The reference step (plain SGD on a copy of the model).
        counter: Counts forward and backward passes during ``opt.step``.
        data_provenance: :meth:`Problem.provenance` of the data.
        rss_before_mb: Resident memory before the run was prepared (MiB).
    """

    config: RunConfig
    problem: Problem
    data: Dataset
    eval_x: Tensor
    eval_y: Tensor
    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    batches: BatchStream
    fresh: BatchStream
    reference: ReferenceStep
    counter: PassCounter
    data_provenance: dict[str, Any] = field(default_factory=dict)
    rss_before_mb: float = math.nan

    def evaluate(self, step: int, seconds: float, *, final: bool = False) -> CurvePoint:
        """An ``"eval"`` point: train loss (evaluation subset), validation loss and accuracy.

        With ``final`` also the test loss and accuracy. Losses on the reported scale.
        """
        p, m, fn = self.problem, self.model, self.loss_fn
        train = p.evaluate(m, self.eval_x, self.eval_y, fn)
        val = p.evaluate(m, self.data.x_val, self.data.y_val, fn)
        test = p.evaluate(m, self.data.x_test, self.data.y_test, fn) if final else None
        return CurvePoint("eval", step, seconds, train.loss,
                          test.loss if test is not None else None,
                          test.accuracy if test is not None else None, val.loss, val.accuracy)

    def full_train_loss(self, last: CurvePoint) -> float:
        """Train loss on every training row (the last point's when the subset is the full set)."""
        if self.eval_x.shape[0] == self.data.n_train:
            return last.loss
        return self.problem.evaluate(self.model, self.data.x_train, self.data.y_train,
                                     self.loss_fn).loss


@dataclass
class Trajectory:
    """What :func:`train` recorded.

    Attributes:
        curve: Batch and evaluation points, in the order they were taken.
        steps: Steps taken.
        train_time: Seconds in ``opt.step`` (evaluation excluded).
        clock_time: The same on the cost clock (:func:`~curvlab.harness.timing.cost_clock`).
        stop_reason: ``"steps"``, ``"seconds"`` or ``"diverged"``.
        limit: The divergence threshold (``1e3 ×`` the initial train loss).
        final_train_loss: Full train loss at the end.
        resumed_from: Step of the checkpoint this run resumed from (0: none).
    """

    curve: list[CurvePoint] = field(default_factory=list)
    steps: int = 0
    train_time: float = 0.0
    clock_time: float = 0.0
    stop_reason: str = "steps"
    limit: float = math.inf
    final_train_loss: float = math.nan
    resumed_from: int = 0

    @property
    def evaluations(self) -> list[CurvePoint]:
        """The ``"eval"`` points."""
        return [p for p in self.curve if p.kind == "eval"]


def _load_data(problem: Problem, config: RunConfig) -> tuple[Dataset, dict[str, Any]]:
    try:
        data = problem.data()
        prov = problem.provenance(data)
    except Exception as err:  # noqa: BLE001 - any failure here is the problem's, not the run's
        raise DataError(f"problem {problem.name!r}: cannot load its data: {err}") from err
    expected = config.data_fingerprint
    if expected not in (None, UNRECORDED) and prov["fingerprint"] != expected:
        raise DataError(f"problem {problem.name!r}: its data files have fingerprint "
                        f"{prov['fingerprint']}, but the comparison was planned with {expected} "
                        "(the files changed, or another copy is found here)")
    return data, prov


def prepare(config: RunConfig) -> Setup:
    """Load the data and build everything :func:`train` needs for ``config``.

    Seeds torch's global RNG with ``config.seed`` (for optimizers that draw
    random numbers): call it inside :func:`execute`'s environment, or
    accept that the global RNG is reseeded.

    Raises:
        DataError: the problem's data cannot be loaded, or its fingerprint
            differs from ``config.data_fingerprint``.
        ValueError: unknown problem or optimizer, invalid hparams (from
            ``curvlab.create``), or the plugin's code in this process differs
            from ``config.plugin_code``.

    Example:
        >>> s = prepare(RunConfig("quadratic", "sgd", {"lr": 0.1}, seed=0, steps=5))
        >>> type(s.optimizer).__name__, s.data.n_train, s.data.n_val
        ('SGD', 1843, 205)
    """
    device, dtype = config.device, getattr(torch, config.dtype)
    rss = _rss_mb()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    code = config.plugin_code
    if code not in (None, UNRECORDED) and plugin_code_hash(config.optimizer) != code:
        raise ValueError(f"the code of {config.optimizer}'s plugin here (hash "
                         f"{plugin_code_hash(config.optimizer)}) differs from the code the run "
                         f"was planned with ({code})")
    problem = load_problem(config.problem, **config.problem_options)
    data, prov = _load_data(problem, config)
    data = data.to(device, dtype)
    eval_x, eval_y = problem.evaluation_subset(data)
    model = problem.init_model(config.seed).to(device=device, dtype=dtype)
    loss_fn = problem.loss_fn()
    reference = ReferenceStep(model, problem.loss_fn(), cost_clock(device, config.threads))
    x0, y0 = data.x_train[: problem.batch_size], data.y_train[: problem.batch_size]
    reference.warm_up(x0, y0)  # first-call costs of this process are not the reference's
    torch.manual_seed(config.seed)  # optimizers that draw random numbers use the global RNGs
    np.random.seed(config.seed)
    random.seed(config.seed)
    opt = curvlab.create(config.optimizer, model, loss_fn, **config.hparams)
    scheduler = build_scheduler(opt, config.schedule, config.warmup or 0.0, config.steps)
    batches = BatchStream(data.x_train, data.y_train, problem.batch_size, config.seed)
    fresh = BatchStream(data.x_train, data.y_train, problem.fresh_batch_size,
                        config.seed + FRESH_SEED_OFFSET)
    return Setup(config, problem, data, eval_x, eval_y, model, loss_fn, opt,
                 scheduler, batches, fresh, reference, PassCounter(model), prov, rss)


def train(setup: Setup, controls: RunControls | None = None,
          run: Trajectory | None = None) -> Trajectory:
    """The timed loop: step until the budget is spent or the loss diverges.

    Args:
        setup: From :func:`prepare`.
        controls: Reference-step period and checkpoints (default: none).
        run: A trajectory to continue (restored from a checkpoint).

    Example:
        >>> s = prepare(RunConfig("quadratic", "sgd", {"lr": 0.1}, seed=0, steps=4, eval_every=2))
        >>> t = train(s)
        >>> t.steps, t.stop_reason, [p.step for p in t.evaluations], t.evaluations[-1].test_loss > 0
        (4, 'steps', [0, 2, 4], True)
    """
    controls = controls or RunControls()
    cfg, model, loss_fn, opt = setup.config, setup.model, setup.loss_fn, setup.optimizer
    scale = setup.problem.loss_scale
    clock = setup.reference.clock
    run = run if run is not None else Trajectory()
    if not run.curve:
        run.curve.append(setup.evaluate(0, 0.0))
        run.limit = DIVERGENCE_FACTOR * max(abs(run.curve[0].loss), 1e-12)
    batch = None
    while cfg.steps is None or run.steps < cfg.steps:
        if cfg.seconds is not None and run.train_time >= cfg.seconds:
            run.stop_reason = "seconds"
            break
        x, y = batch = next(setup.batches)
        closure = curvlab.closure(model, loss_fn, x, y, batches=setup.fresh)
        with setup.counter.counting():
            _sync(cfg.device)
            t0, c0 = time.perf_counter(), read_clock(clock)
            loss = opt.step(closure)
            value = float(loss.detach()) * scale if isinstance(loss, Tensor) else math.nan
            _sync(cfg.device)
            run.train_time += time.perf_counter() - t0
            run.clock_time += read_clock(clock) - c0
        run.steps += 1
        if setup.scheduler is not None:
            setup.scheduler.step()
        run.curve.append(CurvePoint("batch", run.steps, run.train_time, value))
        if not math.isfinite(value) or value > run.limit:
            run.stop_reason = "diverged"
            break
        if run.steps % controls.reference_every == 0:
            setup.reference.time(x, y)
        if run.steps % cfg.eval_every == 0:
            run.curve.append(setup.evaluate(run.steps, run.train_time))
        if controls.checkpoint is not None and controls.checkpoint_every and \
                run.steps % controls.checkpoint_every == 0 and run.steps != cfg.steps:
            save_checkpoint(controls.checkpoint, setup, run)
    if not setup.reference.times and batch is not None and run.stop_reason != "diverged":
        setup.reference.time(*batch)  # a run shorter than reference_every: one sample
    last = run.curve[-1]
    final = setup.evaluate(run.steps, run.train_time, final=True)
    if last.kind == "eval" and last.step == run.steps:
        run.curve[-1] = final
    else:
        run.curve.append(final)
    run.final_train_loss = setup.full_train_loss(final)
    return run


def measure(setup: Setup, run: Trajectory) -> RunMetrics:
    """The run's :class:`RunMetrics` from its trajectory and the process's memory.

    Example:
        >>> s = prepare(RunConfig("quadratic", "sgd", {"lr": 0.1}, seed=0, steps=10))
        >>> m = measure(s, train(s))
        >>> m.steps, m.final_loss < m.initial_loss, m.diverged, m.backward_passes, m.ref_samples
        (10, True, False, 1.0, 2)
    """
    device = setup.config.device
    evals = run.evaluations
    last, diverged = evals[-1], run.stop_reason == "diverged"
    train_losses = [p.loss for p in evals if math.isfinite(p.loss)]
    val_losses = [p.val_loss for p in evals if p.val_loss is not None and math.isfinite(p.val_loss)]
    if device.startswith("cuda"):
        peak = delta = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = _peak_rss_mb()
        delta = max(0.0, peak - setup.rss_before_mb)
    steps = max(run.steps, 1)
    step_time = run.train_time / steps
    ref, ref_clock = setup.reference.mean, setup.reference.clock_mean
    return RunMetrics(
        steps=run.steps,
        train_time=run.train_time,
        step_time=step_time,
        initial_loss=evals[0].loss,
        final_loss=math.inf if diverged else run.final_train_loss,
        best_loss=min(train_losses) if train_losses else math.inf,
        final_test_loss=math.inf if diverged else last.test_loss,
        final_test_acc=last.test_acc,
        final_val_loss=math.inf if diverged else last.val_loss,
        best_val_loss=min(val_losses) if val_losses else math.inf,
        final_val_acc=last.val_acc,
        eval_size=int(setup.eval_x.shape[0]),
        ref_step_time=ref,
        ref_samples=len(setup.reference.times),
        step_cost=run.clock_time / steps / ref_clock if ref_clock > 0 else math.nan,
        step_cost_wall=step_time / ref if ref > 0 else math.nan,
        cost_clock=setup.reference.clock,
        forward_passes=setup.counter.forward / steps,
        backward_passes=setup.counter.backward / steps,
        resumed_from=run.resumed_from,
        peak_mem_mb=peak,
        mem_delta_mb=delta,
        diverged=diverged,
        optimum=setup.problem.optimum,
    )


@contextlib.contextmanager
def _environment(config: RunConfig) -> Iterator[list[warnings.WarningMessage]]:
    """The run's thread count, private global RNGs and recorded warnings; all restored after."""
    threads = torch.get_num_threads()
    devices = [config.device] if config.device.startswith("cuda") else []
    np_state, py_state = np.random.get_state(), random.getstate()
    torch.set_num_threads(config.threads)
    try:
        with torch.random.fork_rng(devices=devices), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        torch.set_num_threads(threads)
        np.random.set_state(np_state)
        random.setstate(py_state)


def execute(config: RunConfig, controls: RunControls | None = None) -> RunResult:
    """Run ``config`` and return its result; a failing run becomes ``status="error"``.

    Args:
        config: The run.
        controls: Reference-step period and checkpoint file (default: no
            checkpoints); an existing checkpoint of this run is resumed.

    Returns:
        The :class:`RunResult` (an optimizer that raises gives an error
        result), with its provenance.

    Raises:
        DataError: the problem's data cannot be loaded or changed (a
            comparison-wide error: every run of the problem would fail alike).

    Example:
        >>> cfg = RunConfig("quadratic", "sgd", {"lr": 0.1}, seed=0, steps=20, eval_every=10)
        >>> r = execute(cfg)
        >>> r.status, r.stop_reason, r.metrics.steps, r.metrics.final_loss < r.metrics.initial_loss
        ('done', 'steps', 20, True)
        >>> r.provenance["plugin"]["name"], r.metrics.final_val_loss > 0
        ('sgd', True)
    """
    controls = controls or RunControls()
    try:
        with _environment(config) as caught:
            setup = prepare(config)
            run = Trajectory()
            if controls.checkpoint is not None:
                load_checkpoint(controls.checkpoint, setup, run)
            run = train(setup, controls, run)
            metrics = measure(setup, run)
            stats = {k: float(v) for k, v in setup.optimizer.stats.items()}
            prov = run_provenance(config.optimizer, config.device, config.threads,
                                  setup.data_provenance)
        metrics = replace(metrics, warnings=len(caught),
                          warning_kinds=tuple(sorted({w.category.__name__ for w in caught})))
        return RunResult(config.key(), "done", run.stop_reason, metrics, stats, run.curve,
                         provenance=prov)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - a failing run is recorded, not raised
        return RunResult(key=config.key(), status="error", error=f"{type(err).__name__}: {err}")

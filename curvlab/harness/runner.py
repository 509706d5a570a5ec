"""Execute one :class:`~curvlab.harness.config.RunConfig`: the timed training loop.

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

import math
import resource
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

import curvlab
from curvlab.harness.config import RunConfig
from curvlab.harness.problems import BatchStream, Problem, load_problem

__all__ = ["DIVERGENCE_FACTOR", "CurvePoint", "RunResult", "execute"]

DIVERGENCE_FACTOR = 1e3
FRESH_SEED_OFFSET = 1_000_003


@dataclass
class CurvePoint:
    """One recorded point: ``kind`` is ``"batch"`` (mini-batch loss) or ``"eval"``."""

    kind: str
    step: int
    time: float
    loss: float
    test_loss: float | None = None
    test_acc: float | None = None


@dataclass
class RunResult:
    """What a run produced (losses on the reported scale, see :class:`Problem`).

    Attributes:
        key: The config's hash key.
        status: ``"done"`` or ``"error"`` (``error`` holds the message).
        stop_reason: ``"steps"``, ``"seconds"`` or ``"diverged"``.
        metrics: Scalars: ``steps``, ``train_time``, ``step_time``,
            ``initial_loss``, ``final_loss``, ``best_loss``, ``final_test_loss``,
            ``final_test_acc``, ``peak_mem_mb``, ``mem_delta_mb``, ``diverged``,
            ``warnings`` (number of warnings the run raised; they are not printed)
            and ``warning_kinds`` (their categories).
        stats: The optimizer's ``stats`` counters at the end.
        curve: Recorded points.
    """

    key: str
    status: str
    stop_reason: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    curve: list[CurvePoint] = field(default_factory=list)
    error: str = ""


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:  # not Linux
        return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@torch.no_grad()
def _evaluate(model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor, classify: bool,
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


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def execute(config: RunConfig) -> RunResult:
    """Run ``config`` and return its result; exceptions become ``status="error"``.

    Args:
        config: The run.

    Returns:
        The :class:`RunResult` (never raises for a failing optimizer).

    Example:
        >>> cfg = RunConfig("quadratic", "sgd", {"lr": 0.1}, seed=0, steps=20, eval_every=10)
        >>> r = execute(cfg)
        >>> r.status, r.stop_reason, r.metrics["steps"], r.metrics["final_loss"] < r.metrics["initial_loss"]
        ('done', 'steps', 20, True)
    """
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = _execute(config)
        result.metrics["warnings"] = len(caught)
        result.metrics["warning_kinds"] = sorted({w.category.__name__ for w in caught})
        return result
    except Exception as err:  # noqa: BLE001 - a failing run is recorded, not raised
        return RunResult(key=config.key(), status="error", error=f"{type(err).__name__}: {err}")


def _execute(cfg: RunConfig) -> RunResult:
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _loop(cfg)
    finally:
        torch.set_num_threads(threads)


def _loop(cfg: RunConfig) -> RunResult:
    device, dtype = cfg.device, getattr(torch, cfg.dtype)
    rss0 = _rss_mb()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    problem: Problem = load_problem(cfg.problem, **cfg.problem_options)
    data = problem.load_data().to(device, dtype)
    scale, classify = problem.loss_scale, problem.task == "classification"
    model = problem.init_model(cfg.seed).to(device=device, dtype=dtype)
    loss_fn = problem.loss_fn()
    torch.manual_seed(cfg.seed)  # optimizers that draw random numbers use the global RNG
    opt = curvlab.create(cfg.optimizer, model, loss_fn, **cfg.hparams)
    stream = BatchStream(data.x_train, data.y_train, problem.batch_size, cfg.seed)
    fresh = BatchStream(data.x_train, data.y_train, problem.batch_size, cfg.seed + FRESH_SEED_OFFSET)

    curve: list[CurvePoint] = []

    def evaluate(step: int, t: float) -> CurvePoint:
        model.eval()
        train, _ = _evaluate(model, loss_fn, data.x_train, data.y_train, False)
        test, acc = _evaluate(model, loss_fn, data.x_test, data.y_test, classify)
        model.train()
        point = CurvePoint("eval", step, t, train * scale, test * scale, acc)
        curve.append(point)
        return point

    initial = evaluate(0, 0.0).loss
    limit = DIVERGENCE_FACTOR * max(abs(initial), 1e-12)
    step, train_time, stop = 0, 0.0, "steps"
    while cfg.steps is None or step < cfg.steps:
        if cfg.seconds is not None and train_time >= cfg.seconds:
            stop = "seconds"
            break
        x, y = next(stream)
        closure = curvlab.closure(model, loss_fn, x, y, batches=fresh)
        _sync(device)
        t0 = time.perf_counter()
        loss = opt.step(closure)
        value = float(loss.detach()) * scale if isinstance(loss, Tensor) else math.nan
        _sync(device)
        train_time += time.perf_counter() - t0
        step += 1
        curve.append(CurvePoint("batch", step, train_time, value))
        if not math.isfinite(value) or value > limit:
            stop = "diverged"
            break
        if step % cfg.eval_every == 0:
            evaluate(step, train_time)
    if curve[-1].kind != "eval":
        evaluate(step, train_time)

    evals = [p for p in curve if p.kind == "eval"]
    finite = [p.loss for p in evals if math.isfinite(p.loss)]
    last = evals[-1]
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        delta = peak
    else:
        peak = _peak_rss_mb()
        delta = max(0.0, peak - rss0)
    metrics = {
        "steps": step,
        "train_time": train_time,
        "step_time": train_time / max(step, 1),
        "initial_loss": initial,
        "final_loss": last.loss if stop != "diverged" else math.inf,
        "best_loss": min(finite) if finite else math.inf,
        "final_test_loss": last.test_loss if stop != "diverged" else math.inf,
        "final_test_acc": last.test_acc,
        "peak_mem_mb": peak,
        "mem_delta_mb": delta,
        "diverged": stop == "diverged",
        "optimum": problem.optimum,
    }
    stats = {k: float(v) for k, v in opt.stats.items()}
    return RunResult(cfg.key(), "done", stop, metrics, stats, curve)

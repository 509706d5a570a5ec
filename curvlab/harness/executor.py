"""Run a batch of configs into a :class:`~curvlab.harness.store.Store`: serial, process pool or Ray.

Runs are independent, so a comparison is embarrassingly parallel. The parent
process alone writes the store: workers return :class:`RunResult` objects.
How to run comes from the comparison's
:class:`~curvlab.harness.settings.RunSettings` (``executor``, ``jobs``,
``progress``, ``reference_every``, ``checkpoint_every``, ``run_timeout``,
``ray_address``), validated when that object was built.

``process`` (default) runs every run in a process of its own (at most
``jobs`` at a time), so that the peak resident memory measured in a run
belongs to that run alone and a run that hangs or dies takes nothing else
with it: ``run_timeout`` wall-clock seconds after the run started in its
process (data loading included, the process's own start-up not), the
process is killed and the run recorded as ``status="timeout"``; a process that dies (killed, out
of memory) is a failed run; the other runs go on. Processes are forked from
a ``forkserver`` that has imported torch and curvlab once (``spawn`` where
forkserver is not available), so a run does not pay for a fresh
interpreter. ``ray`` submits the runs as Ray tasks (``pip install
'curvlab[ray]'``; imported only when asked), joining the cluster at
``ray_address`` (``ray.init(address=...)``) or starting a local one, with
at most ``jobs`` tasks in flight (so that a task's clock starts when it is
submitted to a free slot); a timed-out task is cancelled (``force=True``). ``serial`` runs in this
process (tests, debugging); there a timeout interrupts the run with
``SIGALRM`` (Unix, main thread; a hang inside a C call ends only when it
returns).

With ``checkpoint_every`` each run writes a checkpoint into
``<store>.checkpoints/`` (:mod:`curvlab.harness.checkpoint`); a run started
again after being killed resumes from it, and its checkpoint is deleted once
the result is stored.

A :class:`~curvlab.harness.runner.DataError` (the problem's data cannot be
loaded) stops the batch: the runs not started yet are cancelled and the
error is raised, since every run of the problem would fail the same way.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from curvlab.harness.checkpoint import checkpoint_folder, checkpoint_path
from curvlab.harness.config import RunConfig
from curvlab.harness.results import RunResult
from curvlab.harness.runner import DataError, RunControls, execute
from curvlab.harness.settings import EXECUTORS, RunSettings
from curvlab.harness.store import Store

__all__ = ["EXECUTORS", "RunTimeout", "run_configs", "timeout_result"]

#: How often the process pool looks at the clock while waiting (seconds).
_POLL = 0.5


class RunTimeout(BaseException):  # noqa: N818 - the name says what happened
    """Raised inside a serial run when its ``run_timeout`` has passed.

    Not an ``Exception``: the runner must not record it as the run's own error.
    """


def timeout_result(config: RunConfig, seconds: float) -> RunResult:
    """The result recorded for a run stopped after ``seconds`` of wall-clock time.

    Example:
        >>> cfg = RunConfig("quadratic", "sgd", {"lr": 0.1}, seed=0, steps=3)
        >>> r = timeout_result(cfg, 2.0)
        >>> r.status, r.stop_reason, r.failed, r.provenance["run_timeout"]
        ('timeout', 'timeout', True, 2.0)
    """
    return RunResult(config.key(), "timeout", "timeout",
                     error=f"stopped after the run timeout of {seconds:g} s (wall clock)",
                     provenance={"run_timeout": float(seconds)})


def _unique_todo(configs: Sequence[RunConfig], store: Store,
                 run_timeout: float | None) -> list[RunConfig]:
    seen: set[str] = set()
    todo = []
    for c in configs:
        k = c.key()
        if k not in seen and store.needs_run(k, run_timeout):
            todo.append(c)
        seen.add(k)
    return todo


def _controls(config: RunConfig, store: Store, settings: RunSettings) -> RunControls:
    if settings.checkpoint_every is None:
        return RunControls(settings.reference_every)
    folder = checkpoint_folder(store.path)
    return RunControls(settings.reference_every, checkpoint_path(folder, config.key()),
                       settings.checkpoint_every)


def _finish(store: Store, result: RunResult, controls: RunControls) -> None:
    store.save(result)
    if controls.checkpoint is not None and result.status in ("done", "timeout"):
        with contextlib.suppress(FileNotFoundError):
            Path(controls.checkpoint).unlink()


def run_configs(
    configs: Sequence[RunConfig],
    store: Store,
    settings: RunSettings,
    *,
    desc: str = "runs",
) -> int:
    """Run every config whose result is not in ``store`` yet; return how many ran.

    Completed (``done``) runs are skipped; half-done (``running``) and failed
    (``error``) runs are redone (from their checkpoint, if any); a
    ``timeout`` is redone only under a longer (or no) ``run_timeout``;
    duplicates in ``configs`` run once.

    Args:
        configs: The runs.
        store: Where results go (and where finished ones are found).
        settings: ``executor``, ``jobs``, ``progress``, ``reference_every``,
            ``checkpoint_every``, ``run_timeout`` and ``ray_address``.
        desc: Label of the progress bar.

    Raises:
        DataError: the problem's data cannot be loaded (nothing more runs).

    Example:
        >>> s = Store(":memory:")
        >>> cfg = RunConfig("quadratic", "sgd", {"lr": 0.1}, seed=0, steps=3)
        >>> serial = RunSettings(executor="serial")
        >>> run_configs([cfg, cfg], s, serial), run_configs([cfg], s, serial)
        (1, 0)
    """
    todo = _unique_todo(configs, store, settings.run_timeout)
    if not todo:
        return 0
    from tqdm.auto import tqdm

    with tqdm(total=len(todo), desc=desc, disable=not settings.progress, leave=False) as bar:
        if settings.executor == "serial":
            for c in todo:
                controls = _controls(c, store, settings)
                store.mark_running(c)
                _finish(store, _serial(c, controls, settings.run_timeout), controls)
                bar.update()
        elif settings.executor == "process":
            _process_pool(todo, store, settings, bar)
        else:
            _ray(todo, store, settings, bar)
    return len(todo)


@contextlib.contextmanager
def _alarm(seconds: float | None) -> Iterator[None]:
    usable = seconds is not None and hasattr(signal, "setitimer") and \
        threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def ring(signum: int, frame: Any) -> None:
        raise RunTimeout()

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _serial(config: RunConfig, controls: RunControls, run_timeout: float | None) -> RunResult:
    try:
        with _alarm(run_timeout):
            result = execute(config, controls)
    except RunTimeout:
        return timeout_result(config, run_timeout or 0.0)
    return result


def _worker(config: RunConfig, controls: RunControls, conn: Connection) -> None:
    """Body of a pool process: send ``("started", None)``, run, send ``("result", r)`` or ``("data", message)``."""
    try:
        conn.send(("started", None))  # the run's clock starts here, not at the process's start
        conn.send(("result", execute(config, controls)))
    except DataError as err:
        conn.send(("data", str(err)))
    finally:
        conn.close()


def _process_pool(todo: list[RunConfig], store: Store, settings: RunSettings, bar) -> None:  # noqa: ANN001
    ctx = _context()
    pending = deque(todo)
    running: dict[Connection, list[Any]] = {}  # [process, config, controls, start or None]

    def stop_all() -> None:
        for proc, _, _, _ in running.values():
            proc.kill()
        for proc, _, _, _ in running.values():
            proc.join()
        running.clear()

    try:
        while pending or running:
            while pending and len(running) < settings.jobs:
                c = pending.popleft()
                controls = _controls(c, store, settings)
                store.mark_running(c)
                receive, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_worker, args=(c, controls, send), daemon=True)
                proc.start()
                send.close()
                running[receive] = [proc, c, controls, None]
            for conn in wait(list(running), timeout=_POLL):
                try:
                    kind, payload = conn.recv()
                    if kind == "started":
                        running[conn][3] = time.monotonic()
                        continue
                except (EOFError, OSError):
                    proc, c = running[conn][:2]
                    proc.join()
                    kind, payload = "result", RunResult(
                        c.key(), "error", error=f"the run's process died (exit code "
                        f"{proc.exitcode}: killed or out of memory)")
                proc, c, controls, _ = running.pop(conn)
                conn.close()
                proc.join()
                if kind == "data":
                    raise DataError(payload)
                _finish(store, payload, controls)
                bar.update()
            if settings.run_timeout is not None:
                now = time.monotonic()
                late = [k for k, v in running.items()
                        if v[3] is not None and now - v[3] > settings.run_timeout]
                for conn in late:
                    proc, c, controls, _ = running.pop(conn)
                    proc.kill()
                    proc.join()
                    conn.close()
                    _finish(store, timeout_result(c, settings.run_timeout), controls)
                    bar.update()
    except BaseException:
        stop_all()
        raise


def _ray(todo: list[RunConfig], store: Store, settings: RunSettings, bar) -> None:  # noqa: ANN001
    import ray

    if not ray.is_initialized():
        if settings.ray_address is not None:
            ray.init(address=settings.ray_address, log_to_driver=False)
        else:
            ray.init(ignore_reinit_error=True, log_to_driver=False)
    remote = ray.remote(execute)
    queue = deque(todo)
    refs: dict[Any, tuple[RunConfig, RunControls, float]] = {}
    pending: list[Any] = []
    while queue or pending:
        while queue and len(pending) < settings.jobs:
            c = queue.popleft()
            controls = _controls(c, store, settings)
            store.mark_running(c)
            ref = remote.remote(c, controls)
            refs[ref] = (c, controls, time.monotonic())
            pending.append(ref)
        done, pending = ray.wait(pending, num_returns=1, timeout=_POLL)
        for ref in done:
            c, controls, _ = refs[ref]
            try:
                result = ray.get(ref)
            except DataError:  # Ray's task error is also an instance of the cause's class
                for other in pending:
                    ray.cancel(other, force=True)
                raise
            except Exception as err:  # noqa: BLE001 - a lost worker is a failed run
                result = RunResult(c.key(), "error", error=repr(err))
            _finish(store, result, controls)
            bar.update()
        if settings.run_timeout is not None:
            now = time.monotonic()
            for ref in [r for r in pending if now - refs[r][2] > settings.run_timeout]:
                ray.cancel(ref, force=True)
                pending.remove(ref)
                c, controls, _ = refs[ref]
                _finish(store, timeout_result(c, settings.run_timeout), controls)
                bar.update()


def _context() -> mp.context.BaseContext:
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    # torch._dynamo: torch.optim.Optimizer imports it lazily (~2 s), so once here for every run;
    # first: imported after curvlab, the forked runs' steps came out ~40 % slower (measured)
    ctx.set_forkserver_preload(["torch._dynamo", "curvlab.harness.runner", "curvlab_plugins"])
    return ctx

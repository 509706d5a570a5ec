"""Run a batch of configs into a :class:`~curvlab.harness.store.Store`: serial, process pool or Ray.

Runs are independent, so the grid is embarrassingly parallel. The parent
process alone writes the store: workers return :class:`RunResult` objects.

``process`` (default) uses a :class:`concurrent.futures.ProcessPoolExecutor`
with one run per worker process (``max_tasks_per_child=1``), so that the
peak resident memory measured in a run belongs to that run alone. Workers
are forked from a ``forkserver`` that has imported torch and curvlab once
(``spawn`` where forkserver is not available), so a run does not pay for
a fresh interpreter. ``ray`` submits the runs as Ray tasks
(``pip install 'curvlab[ray]'``; imported only when asked). ``serial`` runs
in this process (tests, debugging).
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed

from curvlab.harness.config import RunConfig
from curvlab.harness.runner import RunResult, execute
from curvlab.harness.store import Store

__all__ = ["EXECUTORS", "check_executor", "run_configs"]

EXECUTORS = ("process", "serial", "ray")


def check_executor(executor: str, jobs: int) -> None:
    """Validate the executor name and job count (and that Ray imports, if asked).

    Raises:
        ValueError: unknown executor, ``jobs`` < 1, or Ray missing.

    Example:
        >>> check_executor("process", 1)
        >>> check_executor("dask", 1)
        Traceback (most recent call last):
        ...
        ValueError: executor must be one of ('process', 'serial', 'ray'), got 'dask'
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ValueError(
                "executor 'ray' needs the ray package: pip install 'curvlab[ray]'"
            ) from None


def _unique_todo(configs: Sequence[RunConfig], store: Store) -> list[RunConfig]:
    seen: set[str] = set()
    todo = []
    for c in configs:
        k = c.key()
        if k not in seen and store.needs_run(k):
            todo.append(c)
        seen.add(k)
    return todo


def run_configs(
    configs: Sequence[RunConfig],
    store: Store,
    *,
    executor: str = "process",
    jobs: int = 1,
    progress: bool = False,
    desc: str = "runs",
) -> int:
    """Run every config whose result is not in ``store`` yet; return how many ran.

    Completed (``done``) runs are skipped; half-done (``running``) and failed
    (``error``) runs are redone; duplicates in ``configs`` run once.

    Example:
        >>> s = Store(":memory:")
        >>> cfg = RunConfig("quadratic", "sgd", {"lr": 0.1}, seed=0, steps=3)
        >>> run_configs([cfg, cfg], s, executor="serial"), run_configs([cfg], s, executor="serial")
        (1, 0)
    """
    check_executor(executor, jobs)
    todo = _unique_todo(configs, store)
    if not todo:
        return 0
    from tqdm.auto import tqdm

    with tqdm(total=len(todo), desc=desc, disable=not progress, leave=False) as bar:
        if executor == "serial":
            for c in todo:
                store.mark_running(c)
                store.save(execute(c))
                bar.update()
        elif executor == "process":
            ctx = _context()
            with ProcessPoolExecutor(jobs, mp_context=ctx, max_tasks_per_child=1) as pool:
                futures = {}
                for c in todo:
                    store.mark_running(c)
                    futures[pool.submit(execute, c)] = c
                for fut in as_completed(futures):
                    store.save(_result_or_error(fut, futures[fut]))
                    bar.update()
        else:
            import ray

            if not ray.is_initialized():
                ray.init(ignore_reinit_error=True, log_to_driver=False)
            remote = ray.remote(execute)
            refs = {}
            for c in todo:
                store.mark_running(c)
                refs[remote.remote(c)] = c
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                try:
                    result = ray.get(done[0])
                except Exception as err:  # noqa: BLE001 - a lost worker is a failed run
                    result = RunResult(refs[done[0]].key(), "error", error=repr(err))
                store.save(result)
                bar.update()
    return len(todo)


def _context() -> mp.context.BaseContext:
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["curvlab.harness.runner", "curvlab_plugins"])
    return ctx


def _result_or_error(fut, config: RunConfig) -> RunResult:  # noqa: ANN001
    try:
        return fut.result()
    except Exception as err:  # noqa: BLE001 - e.g. a worker killed for memory
        return RunResult(config.key(), "error", error=f"{type(err).__name__}: {err}")

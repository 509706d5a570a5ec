"""Run a batch of configs into a :class:`~curvlab.harness.store.Store`: serial, process pool or Ray.

Runs are independent, so the grid is embarrassingly parallel. The parent
process alone writes the store: workers return :class:`RunResult` objects.
How to run comes from the comparison's
:class:`~curvlab.harness.settings.RunSettings` (``executor``, ``jobs``,
``progress``), validated when that object was built.

``process`` (default) uses a :class:`concurrent.futures.ProcessPoolExecutor`
with one run per worker process (``max_tasks_per_child=1``), so that the
peak resident memory measured in a run belongs to that run alone. Workers
are forked from a ``forkserver`` that has imported torch and curvlab once
(``spawn`` where forkserver is not available), so a run does not pay for
a fresh interpreter. ``ray`` submits the runs as Ray tasks
(``pip install 'curvlab[ray]'``; imported only when asked). ``serial`` runs
in this process (tests, debugging).

A :class:`~curvlab.harness.runner.DataError` (the problem's data cannot be
loaded) stops the batch: the runs not started yet are cancelled and the
error is raised, since every run of the problem would fail the same way.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed

from curvlab.harness.config import RunConfig
from curvlab.harness.results import RunResult
from curvlab.harness.runner import DataError, execute
from curvlab.harness.settings import EXECUTORS, RunSettings
from curvlab.harness.store import Store

__all__ = ["EXECUTORS", "run_configs"]


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
    settings: RunSettings,
    *,
    desc: str = "runs",
) -> int:
    """Run every config whose result is not in ``store`` yet; return how many ran.

    Completed (``done``) runs are skipped; half-done (``running``) and failed
    (``error``) runs are redone; duplicates in ``configs`` run once.

    Args:
        configs: The runs.
        store: Where results go (and where finished ones are found).
        settings: ``executor``, ``jobs`` and ``progress`` are read from it.
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
    todo = _unique_todo(configs, store)
    if not todo:
        return 0
    from tqdm.auto import tqdm

    with tqdm(total=len(todo), desc=desc, disable=not settings.progress, leave=False) as bar:
        if settings.executor == "serial":
            for c in todo:
                store.mark_running(c)
                store.save(execute(c))
                bar.update()
        elif settings.executor == "process":
            _process_pool(todo, store, settings.jobs, bar)
        else:
            _ray(todo, store, bar)
    return len(todo)


def _process_pool(todo: list[RunConfig], store: Store, jobs: int, bar) -> None:  # noqa: ANN001
    pool = ProcessPoolExecutor(jobs, mp_context=_context(), max_tasks_per_child=1)
    try:
        futures = {}
        for c in todo:
            store.mark_running(c)
            futures[pool.submit(execute, c)] = c
        for fut in as_completed(futures):
            store.save(_result_or_error(fut, futures[fut]))
            bar.update()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _ray(todo: list[RunConfig], store: Store, bar) -> None:  # noqa: ANN001
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
        except DataError:  # Ray's task error is also an instance of the cause's class
            for ref in pending:
                ray.cancel(ref)
            raise
        except Exception as err:  # noqa: BLE001 - a lost worker is a failed run
            result = RunResult(refs[done[0]].key(), "error", error=repr(err))
        store.save(result)
        bar.update()


def _context() -> mp.context.BaseContext:
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["curvlab.harness.runner", "curvlab_plugins"])
    return ctx


def _result_or_error(fut: Future, config: RunConfig) -> RunResult:
    try:
        return fut.result()
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - e.g. a worker killed for memory
        return RunResult(config.key(), "error", error=f"{type(err).__name__}: {err}")

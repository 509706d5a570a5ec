"""Runner: budgets, divergence as a result, failing optimizers recorded, metrics."""

import math

import pytest
import torch

import curvlab
from curvlab.harness.config import RunConfig
from curvlab.harness.metrics import mean_std, summarize, time_to_target
from curvlab.harness.results import CurvePoint, RunMetrics, RunResult
from curvlab.harness.runner import execute
from curvlab_plugins.baselines import SGD


def test_step_budget_and_eval_points():
    r = execute(RunConfig("quadratic", "sgd", {"lr": 0.1}, seed=0, steps=20, eval_every=7))
    assert r.status == "done" and r.stop_reason == "steps" and r.metrics.steps == 20
    evals = [p.step for p in r.curve if p.kind == "eval"]
    assert evals == [0, 7, 14, 20]
    batch = [p for p in r.curve if p.kind == "batch"]
    assert [p.step for p in batch] == list(range(1, 21))
    assert all(b.time <= a.time for b, a in zip(batch, batch[1:]))


def test_time_budget():
    r = execute(RunConfig("quadratic", "sgd", {"lr": 0.1}, seed=0, steps=None, seconds=0.05))
    assert r.stop_reason == "seconds" and r.metrics.train_time >= 0.05


def test_divergence_is_a_result():
    r = execute(RunConfig("quadratic", "sgd", {"lr": 50.0}, seed=0, steps=200, eval_every=10))
    assert r.status == "done" and r.stop_reason == "diverged"
    assert r.metrics.diverged and r.metrics.steps < 200
    assert r.metrics.final_loss == math.inf


def test_failing_optimizer_is_recorded_not_raised():
    class Broken(SGD):
        name = "brokenopt"

        def _update(self, closure, loss):
            raise RuntimeError("boom")

    curvlab.register("brokenopt", Broken, replace=True)
    try:
        r = execute(RunConfig("quadratic", "brokenopt", {}, seed=0, steps=5))
    finally:
        curvlab.unregister("brokenopt")
    assert r.status == "error" and "boom" in r.error


def test_second_order_like_convergence_on_quadratic():
    r = execute(RunConfig("quadratic", "adam", {"lr": 0.05}, seed=0, steps=300, eval_every=50))
    assert r.metrics.final_loss < r.metrics.initial_loss / 10
    assert r.metrics.optimum is not None and r.metrics.best_loss >= r.metrics.optimum - 1e-6


def test_float64_run_and_deterministic_repeat():
    cfg = RunConfig("teacherstudent", "sgd", {"lr": 0.1}, seed=2, steps=10, eval_every=5,
                    dtype="float64")
    a, b = execute(cfg), execute(cfg)
    assert [p.loss for p in a.curve] == [p.loss for p in b.curve]
    assert torch.get_default_dtype() == torch.float32


@pytest.mark.parametrize(
    "losses, target, expected",
    [([2.0, 1.0, 0.5], 1.0, (10, 1.0)), ([2.0, 1.5], 1.0, None), ([0.1], 1.0, (0, 0.0)),
     ([2.0, math.nan, 0.5], 0.6, (20, 2.0))],
    ids=["reached", "missed", "at-start", "nan-skipped"],
)
def test_time_to_target(losses, target, expected):
    curve = [CurvePoint("eval", 10 * i, float(i), v) for i, v in enumerate(losses)]
    assert time_to_target(curve, target) == expected


def test_summary_medians_iqr_and_step_cost():
    def res(loss, val, cost, status="done"):
        m = RunMetrics(final_loss=loss, final_val_loss=val, step_time=0.001 * cost,
                       ref_step_time=0.001, step_cost=cost)
        return RunResult("k", status, "steps", m, {}, [])

    rows = summarize({"sgd": [({}, res(1.0, 1.1, 1.0)), ({}, res(3.0, 3.3, 1.2)),
                              ({}, res(2.0, 2.2, 1.1))],
                      "x": [({}, res(0.5, 0.6, 4.0)), ({}, res(0.4, 0.5, 4.0, "error"))]},
                     target=0.1)
    by = {r["label"]: r for r in rows}
    assert (by["sgd"]["final_loss"], by["sgd"]["final_loss_q25"], by["sgd"]["final_loss_q75"]) \
        == (2.0, 1.5, 2.5)
    assert by["sgd"]["val_loss"] == pytest.approx(2.2) and by["sgd"]["step_cost"] == 1.1
    assert by["sgd"]["val_loss_ci_low"] <= 2.2 <= by["sgd"]["val_loss_ci_high"]
    # a failed run enters the losses as inf: the median of (0.6, inf) is inf
    assert by["x"]["val_loss"] == math.inf and by["x"]["errors"] == 1
    assert by["x"]["step_cost"] == 4.0  # costs only from the runs that finished
    assert mean_std([1, 3]) == (2.0, math.sqrt(2))


def test_stages_compose_to_execute():
    from curvlab.harness.runner import measure, prepare, train

    cfg = RunConfig("teacherstudent", "adam", curvlab.info("adam").schema.defaults(), seed=1,
                    steps=8, eval_every=4)
    with torch.random.fork_rng():
        setup = prepare(cfg)
        run = train(setup)
        metrics = measure(setup, run)
    whole = execute(cfg)
    assert [p.loss for p in run.curve] == [p.loss for p in whole.curve]
    assert metrics.final_loss == whole.metrics.final_loss and metrics.steps == whole.metrics.steps
    assert isinstance(whole.metrics, RunMetrics)


def test_execute_restores_global_rng_and_threads():
    torch.manual_seed(1234)
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    execute(RunConfig("quadratic", "sgd", {"lr": 0.1}, seed=5, steps=3, threads=threads + 1))
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == threads


def test_data_is_loaded_once_per_run(monkeypatch):
    """Not in the parent: each run (in its worker) loads the problem's data exactly once."""
    from curvlab.harness.compare import compare
    from curvlab.harness.problems.synthetic import Quadratic

    calls = []
    original = Quadratic.load_data

    def counted(self):
        calls.append(1)
        return original(self)

    monkeypatch.setattr(Quadratic, "load_data", counted)
    c = compare("quadratic", ["sgd", "adam"], seeds=2, steps=3, eval_every=3,
                store=":memory:", executor="serial")
    # once in the parent (checked and fingerprinted before any run), once per run
    assert len(calls) - 1 == len(c.store.members(c.id)) == 4


def test_data_error_stops_the_comparison(tmp_path):
    from curvlab.harness.compare import compare
    from curvlab.harness.runner import DataError
    from curvlab.harness.store import Store

    store = Store(tmp_path / "s.sqlite")
    with pytest.raises(DataError, match="problem 'mnistmlp': cannot load its data.*--data-dir"):
        compare("mnist-mlp", ["sgd", "adam"], steps=3, store=store, executor="serial")
    assert store.count_runs() == {}  # found before the first run


def test_metrics_record_round_trips_and_refuses_unknown_fields():
    m = RunMetrics(steps=3, final_loss=math.inf, warning_kinds=("UserWarning",))
    assert RunMetrics.from_dict(m.to_dict()) == m
    with pytest.raises(ValueError, match="unknown run metric"):
        RunMetrics.from_dict({**m.to_dict(), "flops": 1.0})

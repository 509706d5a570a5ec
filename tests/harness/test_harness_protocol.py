"""The protocol: disjoint seeds, selection on validation only, reported runs never tuning runs."""

import math

import pytest

from curvlab.harness import RunSettings, compare
from curvlab.harness.protocol import rank
from curvlab.harness.results import CurvePoint, RunMetrics, RunResult

QUICK = dict(steps=6, eval_every=3, store=":memory:", executor="serial")


@pytest.mark.parametrize("studies", [1, 2])
def test_no_reported_run_shares_a_configuration_key_with_a_tuning_run(studies):
    c = compare("quadratic", ["sgd", "kfac"], tune=True, trials=4, studies=studies, seeds=3,
                **QUICK)
    tune = {r["key"] for r in c.records(("tune",))}
    final = c.records(("final",))
    assert tune and final and not tune & {r["key"] for r in final}
    assert {r["config"].seed for r in final} == {0, 1, 2}
    assert all(r["config"].seed >= 1000 for r in c.records(("tune",)))
    # the reported runs are exactly the winners' configurations with the evaluation seeds
    for opt in ("sgd", "kfac"):
        picked = [s["hparams"] for s in c.spec["selected"][opt]]
        assert len(picked) == studies
        hp = [{k: r["config"].hparams[k] for k in picked[0]} for r in final if r["label"] == opt]
        assert all(h in picked for h in hp)


def test_evaluation_and_tuning_seeds_must_be_disjoint():
    with pytest.raises(ValueError, match="tuning seeds 2..3 overlap the evaluation seeds 0..4"):
        RunSettings(seeds=5, tuning_seed=2, studies=2)
    RunSettings(seeds=5, tuning_seed=5)  # adjacent is fine


def _result(val, test=0.0, hit_step=None, cost=1.0, status="done", diverged=False):
    curve = [CurvePoint("eval", 0, 0.0, 9.0, val_loss=9.0)]
    if hit_step is not None:
        curve.append(CurvePoint("eval", hit_step, 1.0, 0.1, val_loss=0.1))
    m = RunMetrics(final_val_loss=val, final_test_loss=test, final_loss=val, step_cost=cost,
                   diverged=diverged)
    return RunResult("k", status, "steps", m, curve=curve)


# (id, results, select, expected order of indices, best first)
RANKINGS = [
    ("val-loss-not-test", [_result(0.3, test=0.1), _result(0.2, test=0.9)], "val-loss", [1, 0]),
    ("failed-last", [_result(0.1, status="error"), _result(5.0), _result(0.1, diverged=True)],
     "val-loss", [1, 0, 2]),
    ("time-in-reference-steps", [_result(0.2, hit_step=30, cost=1.0),
                                 _result(0.3, hit_step=10, cost=4.0),
                                 _result(0.1, hit_step=None)], "time-to-target", [0, 1, 2]),
    ("time-ties-by-val-loss", [_result(0.3, hit_step=10), _result(0.2, hit_step=10)],
     "time-to-target", [1, 0]),
]


@pytest.mark.parametrize("results, select, order", [r[1:] for r in RANKINGS],
                         ids=[r[0] for r in RANKINGS])
def test_selection_ranks_on_validation(results, select, order):
    keys = [rank(r, select, target=0.5) for r in results]
    assert sorted(range(len(results)), key=lambda i: (keys[i], i)) == order


def test_a_missed_target_ranks_after_every_hit():
    assert rank(_result(0.1), "time-to-target", 0.5) == (math.inf, 0.1)


def test_compare_selects_the_lowest_validation_loss_of_each_study():
    c = compare("quadratic", ["sgd"], tune=True, trials=6, studies=2, seeds=1, **QUICK)
    tune = c.records(("tune",))
    for study in (0, 1):
        mine = [r for r in tune if r["config"].seed == 1000 + study]
        best = min(mine, key=lambda r: r["result"].ranked_val_loss)
        chosen = c.spec["selected"]["sgd"][study]
        assert chosen["key"] == best["key"] and chosen["study"] == study


def test_tune_schedule_needs_tuning_and_enters_the_runs():
    with pytest.raises(ValueError, match="tune_schedule needs tuning"):
        compare("quadratic", ["sgd"], tune_schedule=True, **QUICK)
    c = compare("quadratic", ["sgd"], tune=True, trials=4, tune_schedule=True, **QUICK)
    schedules = {r["config"].schedule for r in c.records(("tune",))}
    assert len(schedules) >= 2
    final = c.records(("final",))[0]["config"]
    chosen = c.spec["selected"]["sgd"][0]["options"]
    assert (final.schedule, final.warmup) == (chosen["schedule"], chosen["warmup"])


def test_an_optimizer_with_everything_fixed_gets_no_trials():
    c = compare("quadratic", ["sgd"], tune=True, trials=4, hparams={"sgd": {"lr": 0.05}}, **QUICK)
    assert c.trials() == {"sgd": 0} and not c.records(("tune",))
    assert c.records(("final",))[0]["config"].hparams["lr"] == 0.05

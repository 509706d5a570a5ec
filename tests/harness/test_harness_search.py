"""Quasi-random tuning trials: equal budgets, inside the declared spaces, the same points for all."""

import math

import numpy as np
import pytest

import curvlab
from curvlab.harness import compare
from curvlab.harness.schedules import SCHEDULES
from curvlab.harness.search import QMC_DIMENSIONS, trials, tunable, unit_points

OPTIMIZERS = ["sgd", "adam", "kfac", "foof", "kbfgs", "groupednewton"]


def _inside(opt, name, value):
    p = curvlab.info(opt).schema[name]
    space = p.search_space
    lo, hi = space.ends()[0], space.ends()[-1]
    if isinstance(value, tuple):
        return all(a - 1e-12 <= v <= b + 1e-12 for v, a, b in zip(value, lo, hi))
    return lo * (1 - 1e-12) <= value <= hi * (1 + 1e-12)


@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_trials_are_equal_in_number_inside_the_space_and_reproducible(opt):
    ts = trials(opt, 8, seed=7)
    assert len(ts) == 8 and [t.index for t in ts] == list(range(8))
    names = [p.name for p in tunable(opt)]
    assert names and all(sorted(t.hparams) == sorted(names) for t in ts)
    assert all(_inside(opt, n, t.hparams[n]) for t in ts for n in names)
    assert [t.hparams for t in trials(opt, 8, seed=7)] == [t.hparams for t in ts]
    assert [t.hparams for t in trials(opt, 8, seed=8)] != [t.hparams for t in ts]
    assert len({repr(t.hparams) for t in ts}) == 8  # 8 distinct configurations


def test_every_optimizer_uses_the_same_unit_cube_points():
    """The lr of trial i sits at the same quantile of every optimizer's log-uniform lr space."""
    u = unit_points(8, seed=3)
    for opt in OPTIMIZERS:
        space = curvlab.info(opt).schema["lr"].search_space
        lo, hi = space.ends()
        got = [t.hparams["lr"] for t in trials(opt, 8, seed=3)]
        quantile = [math.log(v / lo) / math.log(hi / lo) for v in got]
        assert quantile == pytest.approx(u[:, 0].tolist(), abs=1e-9), opt


def test_trials_do_not_depend_on_what_else_is_compared_or_on_fixed_names():
    a = trials("kfac", 5, seed=0)
    b = trials("kfac", 5, seed=0, fixed=["damping"])
    assert [t.hparams["lr"] for t in a] == [t.hparams["lr"] for t in b]
    assert all("damping" not in t.hparams for t in b)


def test_studies_are_independent_scrambles_and_samplers_differ():
    a, b = unit_points(8, seed=0, study=0), unit_points(8, seed=0, study=1)
    assert a.shape == (8, QMC_DIMENSIONS) and not np.allclose(a, b)
    s = unit_points(8, seed=0, sampler="sobol")
    assert s.shape == a.shape and not np.allclose(s, a)
    with pytest.raises(ValueError, match="sampler must be one of"):
        unit_points(4, seed=0, sampler="random")


def test_halton_points_fill_the_cube_better_than_a_grid_corner():
    """Low discrepancy: the 16 points of the first two coordinates hit every quarter-cell row."""
    u = unit_points(16, seed=0)[:, :2]
    rows = {int(x * 4) for x in u[:, 0]}
    cols = {int(y * 4) for y in u[:, 1]}
    assert rows == cols == {0, 1, 2, 3}


def test_tuned_schedule_is_drawn_per_trial_and_the_same_for_every_optimizer():
    a = trials("sgd", 8, seed=1, tune_schedule=True)
    b = trials("adam", 8, seed=1, tune_schedule=True)
    assert [t.options for t in a] == [t.options for t in b]
    assert all(t.options["schedule"] in SCHEDULES and 0 <= t.options["warmup"] <= 0.2 for t in a)
    assert all(t.options["warmup"] == 0.0 for t in a
               if t.options["schedule"] in ("constant", "cosine"))


def test_only_restricts_and_refuses_names_without_a_space():
    assert [p.name for p in tunable("kfac", only=["lr"])] == ["lr"]
    with pytest.raises(ValueError, match="kfac.momentum declares no search space"):
        tunable("kfac", only=["momentum"])
    with pytest.raises(ValueError, match="unknown hyper-parameter 'lrr'"):
        tunable("kfac", only=["lrr"])


def test_compare_gives_every_optimizer_exactly_trials_configurations():
    c = compare("quadratic", ["sgd", "adam", "kfac"], tune=True, trials=8, studies=2, steps=6,
                eval_every=3, store=":memory:", executor="serial")
    tune = c.records(("tune",))
    for opt in ("sgd", "adam", "kfac"):
        mine = [r for r in tune if r["label"] == opt]
        assert len(mine) == 16  # 8 trials x 2 studies
        assert {r["config"].seed for r in mine} == {1000, 1001}
        drawn = [{k: r["config"].hparams[k] for k in c.spec["shown"][opt]} for r in mine]
        expected = [t.hparams for k in (0, 1) for t in trials(opt, 8, seed=1000, study=k)]
        assert [{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
                for d in drawn] == expected
    assert c.trials() == {"sgd": 8, "adam": 8, "kfac": 8}
    assert all(len(c.spec["selected"][opt]) == 2 for opt in ("sgd", "adam", "kfac"))


def test_an_explicit_grid_replaces_the_trials_of_that_optimizer():
    c = compare("quadratic", ["sgd", "adam"], tune=True, trials=3, steps=4, eval_every=2,
                grids={"sgd": {"lr": ["0.1", 0.03], "momentum": [0.0, 0.9]}},
                store=":memory:", executor="serial")
    assert c.trials() == {"sgd": 4, "adam": 3}
    sgd = {(r["config"].hparams["lr"], r["config"].hparams["momentum"])
           for r in c.records(("tune",)) if r["label"] == "sgd"}
    assert sgd == {(0.1, 0.0), (0.1, 0.9), (0.03, 0.0), (0.03, 0.9)}
    assert c.spec["spaces"]["sgd"]["lr"].startswith("grid")

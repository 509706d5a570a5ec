"""Medians, IQRs, bootstrap intervals and the AlgoPerf score against hand-computed values."""

import math

import pytest

from curvlab.cli import main
from curvlab.harness import compare
from curvlab.harness.profiles import Profile, profile_score, run_cost
from curvlab.harness.results import CurvePoint, RunMetrics, RunResult
from curvlab.harness.statistics import bootstrap_ci, median_iqr
from curvlab.harness.store import Store

INF = math.inf

# (id, values, (median, q25, q75)) — NumPy's linear interpolation between order statistics
MEDIANS = [
    ("four", [4.0, 1.0, 3.0, 2.0], (2.5, 1.75, 3.25)),
    ("odd", [5.0, 1.0, 3.0], (3.0, 2.0, 4.0)),
    ("one-miss", [1.0, 2.0, INF], (2.0, 1.5, INF)),
    ("half-miss", [1.0, INF], (INF, INF, INF)),
    ("most-miss", [1.0, INF, INF], (INF, INF, INF)),
    ("nan-left-out", [1.0, math.nan, 3.0, None], (2.0, 1.5, 2.5)),
    ("none", [], (math.nan,) * 3),
]


@pytest.mark.parametrize("values, expected", [m[1:] for m in MEDIANS], ids=[m[0] for m in MEDIANS])
def test_median_and_iqr(values, expected):
    got = median_iqr(values)
    for g, e in zip(got, expected):
        assert (math.isnan(g) and math.isnan(e)) or g == pytest.approx(e)


def test_bootstrap_of_two_values_is_their_range():
    # resampled medians of {a, b}: a (1/4), (a+b)/2 (1/2), b (1/4): the 2.5 % and 97.5 %
    # quantiles are a and b
    assert bootstrap_ci([2.0, 6.0]) == (2.0, 6.0)


def test_bootstrap_of_three_values_matches_the_exact_resampling_distribution():
    # medians of 3 draws from {1, 2, 3}: P(1) = P(3) = 7/27, P(2) = 13/27 (enumerate 27 cases)
    cases = [sorted((a, b, c))[1] for a in (1, 2, 3) for b in (1, 2, 3) for c in (1, 2, 3)]
    assert cases.count(1) == cases.count(3) == 7 and cases.count(2) == 13
    assert bootstrap_ci([1.0, 2.0, 3.0]) == (1.0, 3.0)
    assert bootstrap_ci([1.0, 2.0, 3.0], confidence=0.3) == (2.0, 2.0)  # the central 30 %


def test_bootstrap_misses_and_degenerate_samples():
    assert bootstrap_ci([1.0, 2.0, INF]) == (1.0, INF)  # P(median = inf) = 7/27 > 2.5 %
    assert bootstrap_ci([4.0, 4.0, 4.0]) == (4.0, 4.0)
    assert all(math.isnan(v) for v in bootstrap_ci([1.0]))
    assert bootstrap_ci([3.0, 1.0, 2.0, 7.0]) == bootstrap_ci([3.0, 1.0, 2.0, 7.0])  # seeded


def test_bootstrap_interval_of_many_values_contains_the_median_and_narrows():
    wide = bootstrap_ci([float(v) for v in range(10)])
    narrow = bootstrap_ci([float(v) for v in range(10)] * 10)
    assert wide[0] < 4.5 < wide[1] and narrow[0] < 4.5 < narrow[1]
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


# (id, costs problem -> solver -> t, r_max, expected scores)
SCORES = [
    # ratios p1: a 1, b 2; p2: a 3, b 1 -> a: ((4-1) + (4-3)) / (2*3) = 2/3; b: (2 + 3)/6 = 5/6
    ("two-problems", {"p1": {"a": 1.0, "b": 2.0}, "p2": {"a": 3.0, "b": 1.0}}, 4.0,
     {"a": 2 / 3, "b": 5 / 6}),
    # a ratio above r_max earns nothing, a failure nothing
    ("beyond-r-max", {"p1": {"a": 1.0, "b": 5.0, "c": INF}}, 4.0, {"a": 1.0, "b": 0.0, "c": 0.0}),
    # r_max = 2: a 1 -> 1; b 1.5 -> (2-1.5)/1 = 0.5
    ("r-max-2", {"p1": {"a": 2.0, "b": 3.0}}, 2.0, {"a": 1.0, "b": 0.5}),
]


@pytest.mark.parametrize("costs, r_max, expected", [s[1:] for s in SCORES],
                         ids=[s[0] for s in SCORES])
def test_profile_score_is_the_normalised_integral_of_rho(costs, r_max, expected):
    p = Profile.from_costs(costs, "steps")
    got = profile_score(p, r_max)
    assert got == pytest.approx(expected)
    # against a fine Riemann sum of rho over [1, r_max]
    n = 20000
    for s in p.solvers:
        area = sum(p.rho(s, 1 + (i + 0.5) * (r_max - 1) / n) for i in range(n)) / n
        assert got[s] == pytest.approx(area, abs=1e-3)


def test_profile_score_refuses_r_max_of_one():
    with pytest.raises(ValueError, match="r_max must be > 1"):
        profile_score(Profile.from_costs({"p": {"a": 1.0}}, "steps"), 1.0)


def test_reference_step_cost_measure():
    r = RunResult("k", "done", "steps", RunMetrics(step_cost=3.0),
                  curve=[CurvePoint("eval", 40, 2.0, 0.1, val_loss=0.2)])
    assert run_cost(r, "ref-steps", 0.5) == 120.0 and run_cost(r, "steps", 0.5) == 40.0
    assert run_cost(r, "ref-steps", 0.1) == INF


def test_report_score_over_the_problems_of_a_store(tmp_path, capsys):
    store = Store(tmp_path / "s.sqlite")
    for problem in ("quadratic", "teacher-student"):
        compare(problem, ["sgd", "adam"], steps=20, eval_every=5, target=1e9, seeds=2,
                store=store, executor="serial")
    store.close()
    assert main(["report", "--store", str(tmp_path / "s.sqlite"), "--score", "--out",
                 str(tmp_path / "rep"), "--r-max", "3"]) == 0
    out = capsys.readouterr().out
    assert "score (r_max=3)" in out and "| sgd |" in out and "| adam |" in out
    # target 1e9: every run reaches it at step 0, every ratio is 1, every score 1
    assert out.count("| 1 |") >= 2
    assert (tmp_path / "rep" / "score_steps.md").exists()

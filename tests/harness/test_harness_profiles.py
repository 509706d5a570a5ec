"""Performance profiles: ratios and ρ against hand-computed values, end to end through the CLI."""

import csv
import math
import subprocess
import sys

import pytest

from curvlab.harness.compare import compare
from curvlab.harness.profiles import Profile, performance_profile, performance_ratios, rho, run_cost
from curvlab.harness.results import CurvePoint, RunMetrics, RunResult
from curvlab.harness.store import Store

INF = math.inf

# problem → solver → cost, and the ratios worked out by hand
COSTS = {
    "p1": {"a": 10.0, "b": 20.0, "c": INF},     # c never reached the target
    "p2": {"a": 30.0, "b": 10.0, "c": 10.0},    # tie for best between b and c
    "p3": {"a": 5.0, "b": 5.0, "c": 40.0},      # tie a/b, c 8x worse
    "p4": {"a": INF, "b": INF, "c": INF},       # nobody solved it
}
RATIOS = {
    "p1": {"a": 1.0, "b": 2.0, "c": INF},
    "p2": {"a": 3.0, "b": 1.0, "c": 1.0},
    "p3": {"a": 1.0, "b": 1.0, "c": 8.0},
    "p4": {"a": INF, "b": INF, "c": INF},
}
RHO = [  # (solver, tau, rho by hand over 4 problems)
    ("a", 1.0, 2 / 4), ("a", 2.9, 2 / 4), ("a", 3.0, 3 / 4), ("a", 1e9, 3 / 4),
    ("b", 1.0, 2 / 4), ("b", 2.0, 3 / 4), ("b", 100.0, 3 / 4),
    ("c", 1.0, 1 / 4), ("c", 7.99, 1 / 4), ("c", 8.0, 2 / 4), ("c", INF, 1.0),
]


def test_ratios_by_hand():
    assert performance_ratios(COSTS) == RATIOS


@pytest.mark.parametrize("solver, tau, expected", RHO, ids=[f"{s}-tau{t:g}" for s, t, _ in RHO])
def test_rho_by_hand(solver, tau, expected):
    assert rho(RATIOS, solver, tau) == pytest.approx(expected)
    assert Profile.from_costs(COSTS, "steps").rho(solver, tau) == pytest.approx(expected)


EDGE = [
    ("zero-tie", {"a": 0.0, "b": 0.0}, {"a": 1.0, "b": 1.0}),
    ("zero-best", {"a": 0.0, "b": 3.0}, {"a": 1.0, "b": INF}),
    ("nan-is-inf", {"a": math.nan, "b": 2.0}, {"a": INF, "b": 1.0}),
    ("scale-free", {"a": 0.25, "b": 1.0}, {"a": 1.0, "b": 4.0}),
]


@pytest.mark.parametrize("costs, expected", [e[1:] for e in EDGE], ids=[e[0] for e in EDGE])
def test_ratio_conventions(costs, expected):
    assert performance_ratios({"p": costs}) == {"p": expected}


def test_bad_costs_are_named():
    with pytest.raises(ValueError, match="must be >= 0"):
        performance_ratios({"p": {"a": -1.0}})
    with pytest.raises(ValueError, match="expected"):
        performance_ratios({"p": {"a": 1.0}, "q": {"b": 1.0}})


CURVE = [CurvePoint("eval", 0, 0.0, 2.0), CurvePoint("eval", 5, 0.1, 0.9),
         CurvePoint("eval", 10, 0.3, 0.4)]
RUNS = [  # (id, result, measure, target, cost)
    ("steps", RunResult("k", "done", "steps", RunMetrics(final_loss=0.4), {}, CURVE), "steps", 1.0, 5.0),
    ("seconds", RunResult("k", "done", "steps", RunMetrics(final_loss=0.4), {}, CURVE), "seconds", 0.5, 0.3),
    ("loss", RunResult("k", "done", "steps", RunMetrics(final_loss=0.4), {}, CURVE), "loss", 0.0, 0.4),
    ("missed", RunResult("k", "done", "steps", RunMetrics(final_loss=0.4), {}, CURVE), "steps", 0.1, INF),
    ("diverged", RunResult("k", "done", "diverged", RunMetrics(final_loss=INF, diverged=True), {}, CURVE),
     "steps", 1.0, INF),
    ("error", RunResult("k", "error", "", None, {}, [], "boom"), "loss", 1.0, INF),
]


@pytest.mark.parametrize("result, measure, target, cost", [r[1:] for r in RUNS], ids=[r[0] for r in RUNS])
def test_run_cost(result, measure, target, cost):
    assert run_cost(result, measure, target) == pytest.approx(cost)


def test_unknown_measure():
    with pytest.raises(ValueError, match="measure must be one of"):
        run_cost(RUNS[0][1], "flops", 1.0)


def test_two_problems_end_to_end(tmp_path):
    path = tmp_path / "s.sqlite"
    store = Store(path)
    ids = []
    for problem in ("quadratic", "teacher-student"):
        c = compare(problem, ["sgd", "adam"], steps=6, seconds=None, eval_every=2,
                    store=store, executor="serial")
        ids.append(c.id)
    prof = performance_profile(store, measure="loss")
    assert prof.problems == ["quadratic", "teacherstudent"]  # normalised names
    assert set(prof.solvers) == {"sgd", "adam"}
    for p in prof.problems:  # ratios follow from the stored costs
        best = min(prof.costs[p].values())
        for s in prof.solvers:
            assert prof.ratios[p][s] == pytest.approx(prof.costs[p][s] / best)
        assert min(prof.ratios[p].values()) == 1.0
    store.close()

    out = tmp_path / "prof"
    r = subprocess.run([sys.executable, "-m", "curvlab.cli", "report", "--store", str(path),
                        "--profile", "--measure", "loss", "--comparisons", ",".join(ids),
                        "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (out / "profile_loss.png").stat().st_size > 0
    rows = {row["optimizer"]: row for row in csv.DictReader(open(out / "profile_loss.csv"))}
    assert set(rows) == {"sgd", "adam"}
    for s, row in rows.items():
        assert float(row["tau=1"]) == pytest.approx(prof.rho(s, 1.0))
        assert float(row["tau=16"]) == pytest.approx(prof.rho(s, 16.0))
    assert sum(float(row["tau=1"]) for row in rows.values()) >= 1.0  # someone is best on each
    md = (out / "profile_loss.md").read_text()
    assert "| sgd |" in md and "| teacherstudent |" in md
    ratios = list(csv.DictReader(open(out / "ratios_loss.csv")))
    assert len(ratios) == 4

    # steps measure on the whole store (default), and a bad id is one line, exit 2
    r = subprocess.run([sys.executable, "-m", "curvlab.cli", "report", "--store", str(path),
                        "--profile", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (out / "profile_steps.png").exists() and "ρ(τ=1)" in r.stdout
    r = subprocess.run([sys.executable, "-m", "curvlab.cli", "report", "--store", str(path),
                        "--profile", "--comparisons", "nope", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown comparison 'nope'" in r.stderr and "Traceback" not in r.stderr

"""Results store: keys, resume after a kill (no lost / duplicate runs, equal results), tuning."""

import math
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from curvlab.harness.compare import compare
from curvlab.harness.config import RunConfig
from curvlab.harness.runner import execute
from curvlab.harness.store import Store

GRID = ["compare", "--problem", "digits-mlp", "--optimizers", "sgd,adam", "--seeds", "2",
        "--steps", "120", "--eval-every", "40", "--executor", "serial", "--report", "none",
        "--no-progress"]


def _cli(store, *, wait=True):
    cmd = [sys.executable, "-m", "curvlab.cli", *GRID, "--store", str(store)]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _statuses(path):
    if not os.path.exists(path):
        return {}
    try:
        with sqlite3.connect(path, timeout=1) as conn:
            return dict(conn.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
    except sqlite3.Error:
        return {}


def _snapshot(path):
    with sqlite3.connect(path) as conn:
        runs = conn.execute("SELECT key, status, metrics FROM runs ORDER BY key").fetchall()
        curves = conn.execute(
            "SELECT key, kind, step, loss, test_loss FROM curves ORDER BY key, kind, step").fetchall()
        members = conn.execute("SELECT COUNT(*) FROM members").fetchone()[0]
    losses = {k: __import__("json").loads(m)["final_loss"] for k, _, m in runs}
    return runs, curves, members, losses


def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    killed = tmp_path / "killed.sqlite"
    proc = _cli(killed, wait=False)
    deadline = time.time() + 90
    try:
        while time.time() < deadline:
            st = _statuses(killed)
            if st.get("done", 0) >= 1 and st.get("running", 0) >= 1:
                break
            time.sleep(0.01)
        else:
            pytest.fail(f"grid never reached the middle: {_statuses(killed)}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    at_kill = _statuses(killed)
    assert at_kill.get("running", 0) == 1 and at_kill.get("done", 0) < 4
    # resume and an uninterrupted twin, in-process (same settings as the CLI call)
    for path in (killed, tmp_path / "fresh.sqlite"):
        compare("digits-mlp", "sgd,adam", seeds=2, steps=120, eval_every=40,
                executor="serial", store=str(path))
    runs_k, curves_k, members_k, loss_k = _snapshot(killed)
    runs_f, curves_f, members_f, loss_f = _snapshot(tmp_path / "fresh.sqlite")
    assert len(runs_k) == len(runs_f) == 4  # 2 optimizers x 2 seeds, no duplicates
    assert [r[:2] for r in runs_k] == [r[:2] for r in runs_f]
    assert all(status == "done" for _, status, _ in runs_k)
    assert loss_k == loss_f
    assert curves_k == curves_f
    assert members_k == members_f


def test_rerun_skips_completed_runs(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    kw = dict(steps=15, eval_every=5, store=store, executor="serial")
    compare("quadratic", ["sgd", "adam"], **kw)
    stamps = store.conn.execute("SELECT key, finished FROM runs ORDER BY key").fetchall()
    compare("quadratic", ["sgd", "adam"], **kw)
    assert store.conn.execute("SELECT key, finished FROM runs ORDER BY key").fetchall() == stamps


def test_half_done_run_is_redone_without_duplicate_curve(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    cfg = RunConfig("quadratic", "sgd", {"lr": 0.1}, seed=0, steps=10, eval_every=5)
    store.mark_running(cfg)
    store.save(execute(cfg))
    n = len(store.curve(cfg.key()))
    store.mark_running(cfg)  # a second attempt starts, is killed...
    assert store.needs_run(cfg.key()) and store.curve(cfg.key()) == []
    store.save(execute(cfg))  # ...and is redone
    assert len(store.curve(cfg.key())) == n
    assert store.count_runs() == {"done": 1}


def test_nan_and_inf_survive_the_store():
    from curvlab.harness.results import CurvePoint, RunMetrics, RunResult

    store = Store(":memory:")
    cfg = RunConfig("quadratic", "sgd", {"lr": 0.1}, seed=0, steps=2)
    store.mark_running(cfg)
    pts = [CurvePoint("batch", 1, 0.1, float("nan")), CurvePoint("eval", 1, 0.1, float("inf"))]
    store.save(RunResult(cfg.key(), "done", "diverged", RunMetrics(final_loss=float("inf")), {},
                         pts))
    back = store.result(cfg.key(), curve=True)
    assert back.metrics.final_loss == float("inf")
    assert math.isnan(back.curve[0].loss) and back.curve[1].loss == float("inf")


@pytest.mark.parametrize(
    "change",
    [{"seed": 1}, {"steps": 11}, {"hparams": {"lr": 0.2}}, {"dtype": "float64"},
     {"eval_every": 2}, {"problem_options": {"small": True}}],
    ids=["seed", "steps", "hparams", "dtype", "eval_every", "problem_options"],
)
def test_key_covers_every_field(change):
    base = dict(problem="quadratic", optimizer="sgd", hparams={"lr": 0.1}, seed=0, steps=10)
    assert RunConfig(**base).key() != RunConfig(**{**base, **change}).key()


@pytest.mark.parametrize(
    "bad, message",
    [({"steps": 0}, "steps must be a positive integer"),
     ({"steps": None, "seconds": None}, "needs a budget"),
     ({"seconds": -1.0}, "seconds must be > 0"),
     ({"dtype": "float16"}, "dtype must be one of"),
     ({"device": "tpu"}, "device must be")],
    ids=["steps0", "nobudget", "seconds-neg", "dtype", "device"],
)
def test_bad_config_raises(bad, message):
    base = dict(problem="quadratic", optimizer="sgd", hparams={}, seed=0, steps=10)
    with pytest.raises(ValueError, match=message):
        RunConfig(**{**base, **bad})


def test_unwritable_store(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot open results store"):
        Store(blocker / "sub" / "s.sqlite")


def test_tuning_picks_lowest_validation_loss_and_reruns_with_evaluation_seeds(tmp_path):
    store = Store(":memory:")
    comp = compare("quadratic", ["sgd"], steps=30, eval_every=10, seeds=2, tune=True, trials=5,
                   store=store, executor="serial")
    tune = comp.records(("tune",))
    assert len(tune) == 5 and {r["config"].seed for r in tune} == {1000}  # the tuning seed
    best = min(tune, key=lambda r: r["result"].ranked_val_loss)
    finals = comp.records(("final",))
    assert sorted(r["config"].seed for r in finals) == [0, 1]
    assert all(r["config"].hparams == best["config"].hparams for r in finals)
    row = comp.summary()[0]
    assert row["runs"] == 2 and row["trials"] == 5
    assert row["hparams"] == f"lr={best['config'].hparams['lr']:.4g}"

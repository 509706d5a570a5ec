"""Step costs that survive a busy machine, counted passes, and a reference step that changes nothing."""

import os
import subprocess
import sys
import time

import pytest

from curvlab.harness import compare
from curvlab.harness.config import RunConfig
from curvlab.harness.runner import RunControls, execute
from curvlab.harness.timing import PassCounter, ReferenceStep, cost_clock

HOG = "while True: pass"


def _costs():
    c = compare("digits-mlp", ["sgd", "kfac"], steps=150, seconds=None, eval_every=150,
                seeds=2, store=":memory:", executor="serial")
    return {r["label"]: r["step_cost"] for r in c.summary()}


def test_step_costs_stay_within_25_percent_next_to_a_cpu_hog():
    """A comparison next to busy processes (one per core) reports the idle machine's ratios."""
    idle = _costs()
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(os.cpu_count() or 2)]
    try:
        time.sleep(0.3)
        busy = _costs()
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    ratios = {k: busy[k] / idle[k] for k in idle}
    assert idle["kfac"] > 1.5 * idle["sgd"]
    assert all(0.75 <= r <= 1.25 for r in ratios.values()), (idle, busy)


# (optimizer, forward passes per step, backward passes per step)
PASSES = [("sgd", 1.0, 1.0), ("adam", 1.0, 1.0), ("kbfgs", 2.0, 2.0), ("foof", 1.0, 1.0)]
try:
    import pytorch_optimizer  # noqa: F401

    PASSES += [("adahessian", 1.0, 2.0), ("sophiah", 1.0, 1.1)]
except ImportError:
    pass


@pytest.mark.parametrize("opt, forward, backward", PASSES, ids=[p[0] for p in PASSES])
def test_gradient_equivalents_are_counted(opt, forward, backward):
    r = execute(RunConfig("digits-mlp", opt, {}, seed=0, steps=20, eval_every=20))
    assert (r.metrics.forward_passes, r.metrics.backward_passes) == (forward, backward)


def test_the_reference_step_changes_nothing_in_the_run():
    cfg = RunConfig("digits-cnn", "kfac", {}, seed=1, steps=12, eval_every=4)
    a = execute(cfg, RunControls(reference_every=1))
    b = execute(cfg, RunControls(reference_every=7))
    assert [(p.kind, p.step, p.loss, p.val_loss) for p in a.curve] == \
        [(p.kind, p.step, p.loss, p.val_loss) for p in b.curve]
    assert (a.metrics.ref_samples, b.metrics.ref_samples) == (12, 1)
    assert a.metrics.cost_clock == "thread-cpu" and a.metrics.step_cost > 0


def test_reference_step_and_counter_in_isolation():
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    before = [p.clone() for p in model.parameters()]
    ref = ReferenceStep(model, nn.MSELoss(), cost_clock("cpu", 1))
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    ref.warm_up(x, y)
    ref.time(x, y)
    assert len(ref.times) == len(ref.clock_times) == 1 and ref.clock_mean > 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # a copy
    counter = PassCounter(model)
    with counter.counting():
        out = model(x)
        g = torch.autograd.grad((out**2).sum(), list(model.parameters()), create_graph=True)
        torch.autograd.grad(sum((t * t).sum() for t in g), list(model.parameters()),
                            allow_unused=True)
    assert (counter.forward, counter.backward) == (1, 2)  # gradient + double backward
    with pytest.raises(ValueError, match="clock must be one of"):
        ReferenceStep(model, nn.MSELoss(), "sundial")

"""Learning-rate schedules: closed forms, applied in runs, part of the run's identity."""

import math

import pytest
import torch

import curvlab
from curvlab.harness import RunSettings
from curvlab.harness.config import RunConfig
from curvlab.harness.runner import execute
from curvlab.harness.schedules import build_scheduler, lr_factor
from curvlab_plugins.baselines import SGD

T = 20
# (id, schedule, warmup, closed form f(t) for T steps)
FORMS = [
    ("constant", "constant", 0.0, lambda t: 1.0),
    ("cosine", "cosine", 0.0, lambda t: 0.5 * (1 + math.cos(math.pi * t / T))),
    ("warmup-cosine", "warmup-cosine", 0.25,
     lambda t: (t + 1) / 6 if t < 5 else 0.5 * (1 + math.cos(math.pi * (t - 5) / 15))),
    ("linear-decay", "linear-decay", 0.0, lambda t: 1 - t / T),
    ("linear-decay-warmup", "linear-decay", 0.1,
     lambda t: (t + 1) / 3 if t < 2 else 1 - (t - 2) / 18),
]


@pytest.mark.parametrize("schedule, warmup, form", [f[1:] for f in FORMS], ids=[f[0] for f in FORMS])
def test_factors_follow_the_closed_forms(schedule, warmup, form):
    f = lr_factor(schedule, warmup, T)
    assert [f(t) for t in range(T)] == pytest.approx([form(t) for t in range(T)])
    assert all(f(t) > 0 for t in range(T))  # the last step still moves
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.5)
    sched = build_scheduler(opt, schedule, warmup, T)
    seen = []
    for _ in range(T):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
    assert seen == pytest.approx([0.5 * form(t) for t in range(T)])


class _LrProbe(SGD):
    """SGD that records the lr it steps with."""

    name = "lrprobe"

    def _update(self, closure, loss):
        self.curv_state.setdefault("lrs", []).append(self.param_groups[0]["lr"])
        super()._update(closure, loss)


def test_the_run_steps_with_the_scheduled_learning_rate():
    curvlab.register("lrprobe", _LrProbe, replace=True)
    try:
        from curvlab.harness.runner import prepare, train

        cfg = RunConfig("quadratic", "lrprobe", {"lr": 0.2}, seed=0, steps=T, eval_every=T,
                        schedule="warmup-cosine", warmup=0.25)
        setup = prepare(cfg)
        train(setup)
        lrs = setup.optimizer.curv_state["lrs"]
    finally:
        curvlab.unregister("lrprobe")
    f = lr_factor("warmup-cosine", 0.25, T)
    assert lrs == pytest.approx([0.2 * f(t) for t in range(T)])


def test_schedule_is_part_of_the_key_and_warmup_is_stored_resolved():
    a = RunConfig("quadratic", "sgd", {}, 0, steps=10)
    b = RunConfig("quadratic", "sgd", {}, 0, steps=10, schedule="cosine")
    c = RunConfig("quadratic", "sgd", {}, 0, steps=10, schedule="warmup-cosine")
    assert len({a.key(), b.key(), c.key()}) == 3
    assert (a.warmup, c.warmup) == (0.0, 0.05)
    assert execute(b).status == "done"


# (id, settings kwargs, message)
REFUSED = [
    ("seconds-only", dict(schedule="cosine", steps=None, seconds=5.0), "needs a step budget"),
    ("warmup-for-cosine", dict(schedule="cosine", warmup=0.1), "warmup applies to the schedules"),
    ("warmup-one", dict(schedule="warmup-cosine", warmup=1.0), "warmup must be a fraction"),
    ("unknown", dict(schedule="step"), "schedule must be one of"),
]


@pytest.mark.parametrize("kwargs, message", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_schedules_that_cannot_be_honoured_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RunSettings(**kwargs)

"""K-BFGS's loss normalisation is measured from what the closure returns (issue 13).

Every closure form below computes a positive multiple of the same objective,
so K-BFGS must follow one trajectory (float64 round-off) — the one of the
standard ``curvlab.closure`` with a mean-reduced module; closures that are not
a positive multiple of ``loss_fn`` at the outputs are refused at the first
step, before anything changes.
"""

import functools

import pytest
import torch
from torch import nn

import curvlab
from curvlab.curvature.loss_scale import LossScaleError

F64 = torch.float64
N, D, W = 12, 6, 0.02  # batch, pixels, penalty coefficient


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 4), nn.Tanh(), nn.Linear(4, D)).to(F64)


def _batches():
    g = torch.Generator().manual_seed(1)
    return [torch.rand(N, D, generator=g, dtype=F64) for _ in range(3)]


def _sq(model):
    return sum(p.pow(2).sum() for p in model.parameters())


# (id, module reduction, closure body (loss_fn, out, x, model) -> loss, extra weight decay)
# The reference: curvlab.closure with BCEWithLogitsLoss() (mean over N·D entries).
FORMS = [
    ("mean", "mean", lambda f, o, x, m: f(o, x), 0.0),
    ("sum", "sum", lambda f, o, x, m: f(o, x), 0.0),
    ("paper-sum-over-N", "sum", lambda f, o, x, m: f(o, x) / len(x), 0.0),
    ("mean-times-7", "mean", lambda f, o, x, m: 7.0 * f(o, x), 0.0),
    ("mean-plus-constant", "mean", lambda f, o, x, m: f(o, x) + 3.0, 0.0),
    ("none-summed-then-mean", "none", lambda f, o, x, m: f(o, x).sum(1).mean(), 0.0),
    ("two-micro-batches", "sum",
     lambda f, o, x, m: (f(o[: N // 3], x[: N // 3]) + f(o[N // 3:], x[N // 3:])) / len(x), 0.0),
    ("same-outputs-twice", "mean", lambda f, o, x, m: f(o, x) + f(o, x), 0.0),
    ("logged-value-on-detached-outputs", "mean",
     lambda f, o, x, m: f(o, x) + 0.0 * f(o.detach(), x).detach(), 0.0),
    # (w/2)‖θ‖² in the paper normalisation: kbfgs with weight_decay += w
    ("paper-plus-parameter-penalty", "sum",
     lambda f, o, x, m: f(o, x) / len(x) + W / 2 * _sq(m), W),
    ("mean-plus-parameter-penalty", "mean", lambda f, o, x, m: f(o, x) + W / (2 * D) * _sq(m), W),
]


def _closure(model, loss_fn, body, x):
    """A hand-written closure (no contract keywords): K-BFGS calls it plainly, twice."""
    def closure():
        for p in model.parameters():
            p.grad = None
        loss = body(loss_fn, model(x), x, model)
        loss.backward()
        return loss
    return closure


def _train(name, make_closure, loss_fn, **hp):
    model = _model()
    opt = curvlab.create(name, model, loss_fn, **hp)
    for x in _batches() * 2:
        opt.step(make_closure(model, x))
    return torch.cat([p.detach().flatten() for p in model.parameters()]), opt


WD = 1e-3


@functools.cache
def _reference(name, weight_decay):
    """The standard closure with the mean-reduced module (parameters and stats)."""
    mean = nn.BCEWithLogitsLoss()
    params, opt = _train(name, lambda m, x: curvlab.closure(m, mean, x, x), mean,
                         weight_decay=weight_decay)
    return params, dict(opt.stats)


@pytest.mark.parametrize("name", ["kbfgs", "kbfgsl"])
@pytest.mark.parametrize(("reduction", "body", "extra_decay"),
                         [pytest.param(*f[1:], id=f[0]) for f in FORMS])
def test_closure_forms_follow_the_standard_trajectory(name, reduction, body, extra_decay):
    ref, ref_stats = _reference(name, WD + extra_decay)
    loss_fn = nn.BCEWithLogitsLoss(reduction=reduction)
    got, opt = _train(name, lambda m, x: _closure(m, loss_fn, body, x), loss_fn, weight_decay=WD)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    assert ref_stats["loss_scale"] == pytest.approx(D, rel=1e-12)  # L_paper = D · mean
    for key in ("lm_damped", "powell_damped", "retracted_steps"):
        assert opt.stats[key] == ref_stats[key], key


def test_the_issue_closure_with_curvlab_closure_too():
    """``curvlab.closure(model, sum-module / N)`` path (backward=False second evaluation)."""
    mean, bce_sum = nn.BCEWithLogitsLoss(), nn.BCEWithLogitsLoss(reduction="sum")

    class PerExample(nn.Module):  # the paper's loss as a module calling the sum-reduced one
        def forward(self, out, x):
            return bce_sum(out, x) / len(x)

    paper = PerExample()
    ref, _ = _train("kbfgs", lambda m, x: curvlab.closure(m, mean, x, x), mean)
    got, opt = _train("kbfgs", lambda m, x: curvlab.closure(m, paper, x, x), bce_sum)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    assert opt.stats["loss_scale"] == pytest.approx(1.0, rel=1e-12)


REFUSED = [
    ("output-penalty", lambda f, o, x, m: f(o, x) + 0.5 * o.pow(2).mean(), "not a multiple"),
    ("other-targets", lambda f, o, x, m: f(o, x) + nn.functional.mse_loss(o, 1 - x),
     "not a multiple"),
    ("unequal-micro-batch-weights", lambda f, o, x, m: f(o[:4], x[:4]) + f(o[4:], x[4:]),
     "weigh every example alike"),
    ("negated", lambda f, o, x, m: -f(o, x), "non-positive multiple"),
    ("another-module-object", lambda f, o, x, m: nn.BCEWithLogitsLoss()(o, x),
     "did not call the loss_fn"),
]


@pytest.mark.parametrize("name", ["kbfgs", "kbfgsl"])
@pytest.mark.parametrize(("body", "match"), [pytest.param(*r[1:], id=r[0]) for r in REFUSED])
def test_closure_that_is_not_a_positive_multiple_is_refused_at_the_first_step(name, body, match):
    model, loss_fn = _model(), nn.BCEWithLogitsLoss()
    before = [p.detach().clone() for p in model.parameters()]
    opt = curvlab.create(name, model, loss_fn)
    with pytest.raises(LossScaleError, match=match):
        opt.step(_closure(model, loss_fn, body, _batches()[0]))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before)), "weights moved"
    assert opt.stats["steps"] == 0 and not opt.curv_state


class NoReduction(nn.Module):
    def forward(self, out, x):
        return ((out - x) ** 2).sum(1).mean()


@pytest.mark.parametrize("name", ["kbfgs", "kbfgsl"])
@pytest.mark.parametrize(("loss_fn", "match"), [
    pytest.param(None, "needs loss_fn at construction", id="none"),
    pytest.param(nn.functional.mse_loss, "needs loss_fn, the torch.nn loss module", id="function"),
    pytest.param(NoReduction(), "has no 'reduction' attribute", id="module-without-reduction"),
])
def test_loss_fn_that_cannot_be_measured_is_refused_at_construction(name, loss_fn, match):
    with pytest.raises(ValueError, match=match):
        curvlab.create(name, _model(), loss_fn)


def test_perfect_fit_reuses_the_last_measurement_and_a_first_one_is_skipped():
    """A zero gradient at the outputs measures nothing: the last κ, or a skipped first step."""
    model, mse = _model(), nn.MSELoss(reduction="sum")
    x = _batches()[0]
    target = model(x).detach()
    opt = curvlab.create("kbfgs", model, mse)
    with pytest.warns(curvlab.NonFiniteStepWarning, match="could not be measured"):
        opt.step(curvlab.closure(model, mse, x, target))
    assert opt.stats["skipped_steps"] == 1 and not opt.curv_state
    opt.step(curvlab.closure(model, mse, x, torch.zeros_like(target)))
    assert opt.stats["loss_scale"] == pytest.approx(1 / N)
    steps = opt.stats["steps"]
    opt.step(curvlab.closure(model, mse, x, model(x).detach()))  # a perfect fit after a measurement
    assert opt.stats["steps"] == steps + 1 and opt.stats["loss_scale"] == pytest.approx(1 / N)

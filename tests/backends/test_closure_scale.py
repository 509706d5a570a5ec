"""K-FAC and FOOF follow what the closure returns, whatever its form (issue 13's loss-scale class).

The closure may return ``loss_fn(out, y)`` for a mean- or sum-reduced module,
``sum / N``, a multiple, or the loss plus a parameter penalty. K-FAC's
curvature is that of the returned loss (the output-side factors are
multiplied by the measured scale c), so, from the maths:

* ``k · L`` with damping ``k λ`` and KL bound ``k κ`` follows the trajectory of
  ``L`` with ``λ``, ``κ`` (the directions are invariant);
* ``BCE_sum(out, x) / N`` (the K-BFGS paper's loss, the case that made
  BackPACK warn at every factor step) is ``D · BCE_mean`` and follows
  ``BCE_mean`` with ``D λ``, ``D κ`` — without a single warning;
* a parameter penalty changes the gradient only (c = 1): the trajectory of
  the plain closure whose gradients get the penalty's added by hand.

FOOF ignores the output side: ``k · L`` with ``lr`` follows ``L`` with
``k · lr`` (no weight decay), and the penalty form the hand-made one.
Every fisher type and both engines (BackPACK for the MLP, curvlab's hooks
for the model with a LayerNorm and a Linear on 3-D inputs) are run.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import curvlab
from curvlab.curvature.loss_scale import LossScaleError

DT = torch.float64
N, D = 12, 6


class SeqNet(nn.Module):
    """LayerNorm and Linear on (N, T, ·): served by the hook engine."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.ln = nn.LayerNorm(4)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.ln(self.fc(x)))).flatten(1)


def mlp():
    return nn.Sequential(nn.Linear(D, 4), nn.Tanh(), nn.Linear(4, D))


def data(model_name, loss):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N, D, generator=g, dtype=DT) if model_name == "mlp" else torch.randn(N, 2, 3, generator=g, dtype=DT)
    if loss == "ce":
        return x, torch.randint(0, D, (N,), generator=g)
    if loss == "bce":
        return x, torch.rand(N, D, generator=g, dtype=DT)
    return x, torch.randn(N, D, generator=g, dtype=DT)


LOSS = {"mse": nn.MSELoss, "ce": nn.CrossEntropyLoss, "bce": nn.BCEWithLogitsLoss}
#: entries per row of the loss input: mean = sum / (N · per_row)
PER_ROW = {"mse": D, "ce": 1, "bce": D}


def train(name, model_name, loss_fn, closure_of, steps=6, **hp):
    torch.manual_seed(0)
    model = (mlp() if model_name == "mlp" else SeqNet()).to(DT)
    torch.manual_seed(1)
    opt = curvlab.create(name, model, loss_fn, **hp)
    for _ in range(steps):
        opt.step(closure_of(model))
    return [p.detach().clone() for p in model.parameters()], opt


def plain(loss_fn, x, y):
    return lambda model: curvlab.closure(model, loss_fn, x, y)


def scaled(loss_fn, x, y, k):
    def closure_of(model):
        def closure():
            model.zero_grad()
            loss = k * loss_fn(model(x), y)
            loss.backward()
            return loss
        return closure
    return closure_of


def penalised(loss_fn, x, y, w, by_hand):
    def closure_of(model):
        def closure():
            model.zero_grad()
            loss = loss_fn(model(x), y)
            penalty = 0.5 * w * sum((p * p).sum() for p in model.parameters())
            if by_hand:
                loss.backward()
                for p in model.parameters():
                    p.grad.add_(p.detach(), alpha=w)
            else:
                (loss + penalty).backward()
            return loss + penalty.detach()
        return closure
    return closure_of


def assert_same(a, b, msg=None):
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-8, atol=1e-11, msg=msg)


KFAC_HP = dict(lr=0.2, damping=0.05, kl_clip=1e-2, factor_every=2, inverse_every=2,
               momentum=0.5, weight_decay=1e-3)
KFAC_CASES = [
    pytest.param(m, loss, f, id=f"{m}-{loss}-{f}")
    for m in ("mlp", "seq") for loss in ("mse", "ce", "bce") for f in ("mc", "exact", "empirical")
]


@pytest.mark.parametrize("model_name, loss, fisher", KFAC_CASES)
def test_kfac_closure_forms_follow_the_maths(model_name, loss, fisher):
    x, y = data(model_name, loss)
    hp = dict(KFAC_HP, fisher_type=fisher)
    mean, sum_ = LOSS[loss](), LOSS[loss](reduction="sum")
    base, opt = train("kfac", model_name, mean, plain(mean, x, y), **hp)
    assert opt.curv_state["loss_scale"] == pytest.approx(1.0)
    k = N * PER_ROW[loss]  # sum = k · mean
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no BackPACK "output ... modified" flood, no warning at all
        forms = {
            "sum-module": train("kfac", model_name, sum_, plain(sum_, x, y),
                                **dict(hp, damping=k * hp["damping"], kl_clip=k * hp["kl_clip"])),
            "sum/N": train("kfac", model_name, sum_, scaled(sum_, x, y, 1.0 / N),
                           **dict(hp, damping=PER_ROW[loss] * hp["damping"],
                                  kl_clip=PER_ROW[loss] * hp["kl_clip"])),
            "3x-mean": train("kfac", model_name, mean, scaled(mean, x, y, 3.0),
                             **dict(hp, damping=3 * hp["damping"], kl_clip=3 * hp["kl_clip"])),
        }
    for form, (params, _) in forms.items():
        assert_same(base, params, msg=form)
    assert forms["sum/N"][1].curv_state["loss_scale"] == pytest.approx(1.0 / N)
    by_hand, _ = train("kfac", model_name, mean, penalised(mean, x, y, 0.01, True), **hp)
    autograd, opt = train("kfac", model_name, mean, penalised(mean, x, y, 0.01, False), **hp)
    assert_same(by_hand, autograd)
    assert opt.curv_state["loss_scale"] == pytest.approx(1.0)


FOOF_CASES = [pytest.param(m, loss, id=f"{m}-{loss}") for m in ("mlp", "seq") for loss in ("mse", "ce", "bce")]


@pytest.mark.parametrize("model_name, loss", FOOF_CASES)
def test_foof_closure_forms_follow_the_maths(model_name, loss):
    x, y = data(model_name, loss)
    hp = dict(lr=0.1, damping=0.1, momentum=0.5, weight_decay=0.0, inverse_every=2, stats_steps=None)
    mean, sum_ = LOSS[loss](), LOSS[loss](reduction="sum")
    base, _ = train("foof", model_name, mean, plain(mean, x, y), **hp)
    k = N * PER_ROW[loss]
    forms = {
        "sum-module": train("foof", model_name, sum_, plain(sum_, x, y), **dict(hp, lr=hp["lr"] / k)),
        "sum/N": train("foof", model_name, sum_, scaled(sum_, x, y, 1.0 / N),
                       **dict(hp, lr=hp["lr"] / PER_ROW[loss])),
        "3x-mean": train("foof", model_name, mean, scaled(mean, x, y, 3.0), **dict(hp, lr=hp["lr"] / 3)),
    }
    for form, (params, _) in forms.items():
        assert_same(base, params), form
    by_hand, _ = train("foof", model_name, mean, penalised(mean, x, y, 0.01, True), **hp)
    autograd, _ = train("foof", model_name, mean, penalised(mean, x, y, 0.01, False), **hp)
    assert_same(by_hand, autograd)


def test_paper_bce_closure_on_an_autoencoder_has_no_warning_and_the_mean_trajectory():
    """Issue 13: BCEWithLogitsLoss(sum)(out, x) / len(x) with that module at construction."""
    torch.manual_seed(0)
    x = torch.rand(N, D, dtype=DT)
    bce_sum, bce_mean = nn.BCEWithLogitsLoss(reduction="sum"), nn.BCEWithLogitsLoss()

    def run(loss_fn, closure_of, scale):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(D, 3), nn.Sigmoid(), nn.Linear(3, D)).to(DT)
        torch.manual_seed(1)
        opt = curvlab.create("kfac", model, loss_fn, damping=0.03 * scale, kl_clip=1e-3 * scale,
                             factor_every=1, inverse_every=1)
        for _ in range(8):
            opt.step(closure_of(model))
        return [p.detach() for p in model.parameters()], opt

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paper, opt = run(bce_sum, scaled(bce_sum, x, x, 1.0 / N), D)
    assert opt.engine.name == "backpack"
    mean, _ = run(bce_mean, plain(bce_mean, x, x), 1.0)
    assert_same(paper, mean)


@pytest.mark.parametrize("engine_model", ["mlp", "seq"])
def test_a_closure_that_is_no_multiple_of_loss_fn_is_refused_at_the_first_step(engine_model):
    x, y = data(engine_model, "mse")
    mse = nn.MSELoss()
    torch.manual_seed(0)
    model = (mlp() if engine_model == "mlp" else SeqNet()).to(DT)
    opt = curvlab.create("kfac", model, mse)

    def output_penalty():
        model.zero_grad()
        out = model(x)
        loss = mse(out, y) + 0.1 * out.pow(2).mean()
        loss.backward()
        return loss

    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(LossScaleError, match="not a multiple of the loss_fn"):
        opt.step(output_penalty)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))

    def negative():
        model.zero_grad()
        loss = -mse(model(x), y)
        loss.backward()
        return loss

    with pytest.raises(ValueError, match="positive multiple"):
        opt.step(negative)

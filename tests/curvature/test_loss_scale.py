"""LossScaleProbe: c measured from what the closure computes, for every reduction and form."""

import math

import pytest
import torch
from torch import nn

from curvlab.curvature.loss_scale import LossScaleError, LossScaleProbe

N = 6


def _data(kind):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 4, generator=g, dtype=torch.float64)
    if kind == "ce":
        return x, torch.randint(0, 3, (N,), generator=g), 3
    if kind == "bce":
        return x, torch.rand(N, 5, generator=g, dtype=torch.float64), 5
    return x, torch.randn(N, 2, generator=g, dtype=torch.float64), 2


LOSSES = {"mse": nn.MSELoss, "ce": nn.CrossEntropyLoss, "bce": nn.BCEWithLogitsLoss}

# (id, loss kind, module reduction, closure(loss_fn, out, y, params) -> loss, expected c)
CASES = [
    ("mse-mean-plain", "mse", "mean", lambda f, o, y, p: f(o, y), 1.0),
    ("mse-sum-plain", "mse", "sum", lambda f, o, y, p: f(o, y), 1.0),
    ("bce-sum-over-N", "bce", "sum", lambda f, o, y, p: f(o, y) / N, 1.0 / N),
    ("bce-mean-times-D", "bce", "mean", lambda f, o, y, p: 5 * f(o, y), 5.0),
    ("ce-mean-x3-plus-const", "ce", "mean", lambda f, o, y, p: 3 * f(o, y) + 7.0, 3.0),
    ("ce-mean-weight-penalty", "ce", "mean",
     lambda f, o, y, p: f(o, y) + 0.1 * sum(q.pow(2).sum() for q in p), 1.0),
    ("mse-two-microbatches", "mse", "mean",
     lambda f, o, y, p: (f(o[:3], y[:3]) + f(o[3:], y[3:])) / 2, 0.5),
]


def _run(kind, reduction, fn, backward=True):
    x, y, c_out = _data(kind)
    model = nn.Linear(4, c_out).double()
    loss_fn = LOSSES[kind](reduction=reduction)
    probe = LossScaleProbe(loss_fn, who="test")
    with probe:
        loss = fn(loss_fn, model(x), y, list(model.parameters()))
        if backward:
            loss.backward()
    return probe.measure(loss)


@pytest.mark.parametrize(("kind", "reduction", "fn", "expected"),
                         [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_scale_from_gradients(kind, reduction, fn, expected):
    got = _run(kind, reduction, fn)
    assert got.scale == pytest.approx(expected, rel=1e-12)
    assert got.residual < 1e-12 and not got.from_values
    assert got.examples == N


@pytest.mark.parametrize(("kind", "reduction", "fn", "expected"),
                         [pytest.param(*c[1:], id=c[0]) for c in CASES if "const" not in c[0]
                          and "penalty" not in c[0]])
def test_scale_from_values_without_backward(kind, reduction, fn, expected):
    got = _run(kind, reduction, fn, backward=False)
    assert got.from_values
    assert got.scale == pytest.approx(expected, rel=1e-12)


MISMATCHES = [
    ("output-penalty", "mse", lambda f, o, y, p: f(o, y) + 0.5 * o.pow(2).mean()),
    ("other-targets", "mse", lambda f, o, y, p: f(o, y) + nn.functional.mse_loss(o, 2 * y)),
    ("per-example-weights", "bce",
     lambda f, o, y, p: f(o[:3], y[:3]) + 3 * f(o[3:], y[3:])),
]


@pytest.mark.parametrize(("kind", "fn"), [pytest.param(*m[1:], id=m[0]) for m in MISMATCHES])
def test_not_a_multiple_is_refused(kind, fn):
    with pytest.raises(LossScaleError, match="not a multiple of the loss_fn"):
        _run(kind, "mean", fn)


def test_closure_without_loss_fn_is_refused():
    x, y, _ = _data("mse")
    model, loss_fn = nn.Linear(4, 2).double(), nn.MSELoss()
    probe = LossScaleProbe(loss_fn, who="kbfgs")
    with probe:
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
    with pytest.raises(LossScaleError, match="kbfgs: the closure did not call the loss_fn"):
        probe.measure(loss)


def test_perfect_fit_measures_nothing():
    x = torch.randn(N, 4, dtype=torch.float64)
    model = nn.Linear(4, 2).double()
    loss_fn = nn.MSELoss()
    probe = LossScaleProbe(loss_fn)
    with probe:
        out = model(x)
        loss = loss_fn(out, out.detach())
        loss.backward()
    assert math.isnan(probe.measure(loss).scale)


def test_hook_is_removed_and_function_refused():
    loss_fn = nn.MSELoss()
    with LossScaleProbe(loss_fn):
        assert len(loss_fn._forward_hooks) == 1
    assert not loss_fn._forward_hooks
    with pytest.raises(TypeError, match="needs loss_fn as a torch.nn.Module"):
        LossScaleProbe(nn.functional.mse_loss)


def test_float32_tolerance_accepts_round_off():
    x, y = torch.randn(64, 4), torch.rand(64, 30)
    model, loss_fn = nn.Linear(4, 30), nn.BCEWithLogitsLoss(reduction="sum")
    probe = LossScaleProbe(loss_fn)
    with probe:
        loss = loss_fn(model(x), y) / 64
        loss.backward()
    assert probe.measure(loss).scale == pytest.approx(1 / 64, rel=1e-5)


# ------------------------------------------------- reference="sum" and the extensions (#13, #19)
# (id, loss kind, module reduction, closure, expected c against the summed loss)
SUM_CASES = [
    ("bce-mean", "bce", "mean", lambda f, o, y, p: f(o, y), 1.0 / (N * 5)),
    ("bce-sum-over-N", "bce", "sum", lambda f, o, y, p: f(o, y) / N, 1.0 / N),
    ("bce-none-summed-mean", "bce", "none", lambda f, o, y, p: f(o, y).sum(1).mean(), 1.0 / N),
    ("ce-mean", "ce", "mean", lambda f, o, y, p: f(o, y), 1.0 / N),
    ("mse-unequal-micro-batches-sum", "mse", "sum",
     lambda f, o, y, p: (f(o[:2], y[:2]) + f(o[2:], y[2:])) / N, 1.0 / N),
]


@pytest.mark.parametrize(("kind", "reduction", "fn", "expected"),
                         [pytest.param(*c[1:], id=c[0]) for c in SUM_CASES])
def test_scale_against_the_summed_loss(kind, reduction, fn, expected):
    x, y, c_out = _data(kind)
    model = nn.Linear(4, c_out).double()
    loss_fn = LOSSES[kind](reduction=reduction)
    probe = LossScaleProbe(loss_fn, reference="sum")
    with probe:
        loss = fn(loss_fn, model(x), y, list(model.parameters()))
        loss.backward()
    got = probe.measure(loss)
    assert got.scale == pytest.approx(expected, rel=1e-12) and got.examples == N
    assert loss_fn.reduction == reduction  # the module itself is untouched


def test_unequal_micro_batches_with_a_mean_reduction_are_refused_against_the_sum():
    x, y, _ = _data("mse")
    model, loss_fn = nn.Linear(4, 2).double(), nn.MSELoss()
    probe = LossScaleProbe(loss_fn, reference="sum")
    with probe:
        loss = loss_fn(model(x)[:2], y[:2]) + loss_fn(model(x)[2:], y[2:])
        loss.backward()
    with pytest.raises(LossScaleError, match="weigh every example alike"):
        probe.measure(loss)


def test_calls_without_gradient_are_left_out_and_shared_outputs_count_once():
    x, y, _ = _data("mse")
    model, loss_fn = nn.Linear(4, 2).double(), nn.MSELoss(reduction="sum")
    probe = LossScaleProbe(loss_fn)
    with probe:
        out = model(x)
        with torch.no_grad():
            loss_fn(out, y)  # a logged value: no part of the gradient
        loss = loss_fn(out, y) + loss_fn(out, y)  # the same outputs twice: c = 2 per call
        loss.backward()
    got = probe.measure(loss)
    assert got.scale == pytest.approx(2.0, rel=1e-12) and got.examples == N


def test_non_finite_gradients_measure_nothing():
    x, y, _ = _data("mse")
    model, loss_fn = nn.Linear(4, 2).double(), nn.MSELoss()
    probe = LossScaleProbe(loss_fn)
    with probe:
        loss = loss_fn(model(x * math.nan), y)
        loss.backward()
    assert math.isnan(probe.measure(loss).scale)


def test_extra_positional_arguments_are_replayed():
    x, y, _ = _data("mse")
    model, loss_fn = nn.Linear(4, 2).double(), nn.GaussianNLLLoss()
    var = torch.full((N, 2), 0.5, dtype=torch.float64)
    probe = LossScaleProbe(loss_fn, reference="sum")
    with probe:
        loss = 3 * loss_fn(model(x), y, var)
        loss.backward()
    assert probe.measure(loss).scale == pytest.approx(3 / (N * 2), rel=1e-12)


class _Plain(nn.Module):
    def forward(self, out, y):
        return (out - y).pow(2).sum()


def test_reference_needs_a_reduction_attribute():
    with pytest.raises(ValueError, match="has no 'reduction' attribute"):
        LossScaleProbe(_Plain(), reference="sum")
    with pytest.raises(ValueError, match="reference must be one of"):
        LossScaleProbe(nn.MSELoss(), reference="mean")

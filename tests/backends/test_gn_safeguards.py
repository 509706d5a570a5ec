"""GroupedNewton's safeguards and schedules: early recomputation, side-effect-free trial
passes, the huge-step report, the λ₁ plateau schedule, the EMA order, the logged rates."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import curvlab
from curvlab_plugins.groupednewton import GroupedNewtonWarning

F64 = torch.float64


def _tanh_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def _batches(seed, k=4, n=16):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, generator=gen, dtype=F64), torch.randn(n, 1, generator=gen, dtype=F64))
            for _ in range(k)]


def _step(model, loss_fn, opt, batches, t):
    x, y = batches[t % len(batches)]
    fresh = batches[(t + 1) % len(batches)]
    return opt.step(curvlab.closure(model, loss_fn, x, y, batches=lambda: fresh))


class _Growing(nn.Module):
    """L = c (‖w − 1‖² + ‖v + 1‖²); the test changes c (hence u = ∇L) between steps."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3, dtype=F64))
        self.v = nn.Parameter(torch.zeros(2, dtype=F64))
        self.scale = 1.0

    def forward(self, x):
        return self.scale * (((self.w - 1) ** 2).sum() + ((self.v + 1) ** 2).sum())


@pytest.mark.parametrize("kappa, expected", [(2.0, [0, 3]), (None, [0])],
                         ids=["trigger", "fixed-period"])
def test_recompute_early_when_the_direction_grows(kappa, expected):
    """η was computed for u(t₀); once ‖u_s‖ exceeds κ‖u_s(t₀)‖ the tensors are recomputed
    (regression: on the digits auto-encoder, η reused while u grew 100× turned the loss
    into NaN at step 6)."""
    model = _Growing()
    loss_fn = lambda out, _: out  # noqa: E731 - the model returns the loss
    opt = curvlab.create("groupednewton", model, loss_fn, lr=0.01, period=10,
                         recompute_growth=kappa, momentum=0.0, safeguard=False)
    x = torch.zeros(1, dtype=F64)
    computed = []
    for t in range(5):
        model.scale = 1e4 if t >= 3 else 1.0  # the gradient grows 10⁴× at step 3
        opt.step(curvlab.closure(model, loss_fn, x, x))
        if opt.last_tensors.step == t:
            computed.append(t)
    assert computed == expected
    assert opt.stats.get("early_computations", 0) == len(expected) - 1


def test_trial_passes_leave_batchnorm_statistics_alone():
    """Only the step's own batch and the separate batch update the running statistics;
    the safeguard's trial forward passes at candidate weights (possibly absurd ones) do not.
    Regression: 13 rejected candidates left BatchNorm's running variance at ~1e10, and the
    evaluation loss after one step was 5.9e5."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 2)).double()
    gen = torch.Generator().manual_seed(1)
    x, xf = (torch.randn(32, 4, generator=gen, dtype=F64) for _ in range(2))
    y, yf = (torch.randint(0, 2, (32,), generator=gen) for _ in range(2))
    twin = copy.deepcopy(model)
    loss_fn = nn.CrossEntropyLoss()
    opt = curvlab.create("groupednewton", model, loss_fn, lr=1e3)  # large: trials get rejected
    opt.step(curvlab.closure(model, loss_fn, x, y, batches=lambda: (xf, yf)))
    assert opt.stats["rejected_steps"] >= 1
    with torch.no_grad():  # what the two real passes (step batch, then separate batch) do
        twin(x)
        twin(xf)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(model[1], name), getattr(twin[1], name),
                                   rtol=1e-12, atol=0)


def _deep_relu_ae():
    torch.manual_seed(0)
    widths = [16, 32, 16, 4, 16, 32, 16]
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]), torch.rand(64, 16)


def test_huge_step_is_reported_once_with_what_to_change():
    model, x = _deep_relu_ae()
    loss_fn = nn.BCEWithLogitsLoss()
    opt = curvlab.create("groupednewton", model, loss_fn, lr=1.0, safeguard=False, period=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(4):
            opt.step(curvlab.closure(model, loss_fn, x, x))
    huge = [w for w in caught if issubclass(w.category, GroupedNewtonWarning)]
    assert len(huge) == 1
    text = str(huge[0].message)
    assert "× its norm" in text and "lambda_int" in text and "lr" in text and "Reported once" in text
    assert any(name in text for name in opt.subset_names)


def test_no_report_on_an_ordinary_run():
    model, loss_fn, batches = _tanh_net(1), nn.MSELoss(), _batches(1)
    opt = curvlab.create("groupednewton", model, loss_fn)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GroupedNewtonWarning)
        for t in range(25):
            _step(model, loss_fn, opt, batches, t)


def test_plateau_schedule_halves_lr_as_the_papers_scheduler():
    """lr = 0 keeps the loss constant: every window after the first is a plateau, so with
    patience 1 λ₁ is halved after windows 3 and 5 (the best restarts at each reduction)."""
    model, loss_fn, batches = _tanh_net(2), nn.MSELoss(), [_batches(2, k=1)[0]] * 2
    opt = curvlab.create("groupednewton", model, loss_fn, lr=0.0, plateau_patience=1,
                         plateau_window=2, plateau_factor=0.5)
    scales = []
    for t in range(12):
        _step(model, loss_fn, opt, batches, t)
        scales.append(opt.stats["lr_scale"])
    assert scales == [1.0] * 5 + [0.5] * 4 + [0.25] * 3


def test_plateau_scale_multiplies_lr_and_survives_a_scheduler():
    model, loss_fn, batches = _tanh_net(3), nn.MSELoss(), _batches(3)
    opt = curvlab.create("groupednewton", model, loss_fn, lr=0.2)
    for t in range(3):
        _step(model, loss_fn, opt, batches, t)
    opt.curv_state["lr_scale"] = 0.25
    opt.param_groups[0]["lr"] = 0.1  # as an LR scheduler would
    eta = opt.curv_state["eta"]
    rates = opt.learning_rates
    for i, name in enumerate(opt.subset_names):
        assert rates[name] == pytest.approx(0.1 * 0.25 * float(eta[i]), rel=1e-15)


@pytest.mark.parametrize("ema_before_clip", [False, True], ids=["clip-then-smooth", "paper-order"])
def test_ema_order(ema_before_clip):
    model, loss_fn, batches = _tanh_net(4), nn.MSELoss(), _batches(4)
    opt = curvlab.create("groupednewton", model, loss_fn, period=2, eta_ema=0.5, safeguard=False,
                         recompute_growth=None, clip_negative=True, lr=0.5,
                         ema_before_clip=ema_before_clip)
    raws = []
    for t in range(8):
        _step(model, loss_fn, opt, batches, t)
        if opt.last_tensors.step == t:
            raws.append(opt.last_tensors.eta_raw.clone())
    assert any((r < 0).any() for r in raws), "the test needs a negative raw step size"
    kept = raws[0] if ema_before_clip else raws[0].clamp(min=0)
    for r in raws[1:]:
        kept = 0.5 * kept + 0.5 * (r if ema_before_clip else r.clamp(min=0))
    torch.testing.assert_close(opt.last_tensors.eta, kept.clamp(min=0), rtol=1e-12, atol=0)


def test_learning_rates_are_recorded_in_stats():
    model, loss_fn, batches = _tanh_net(5), nn.MSELoss(), _batches(5)
    opt = curvlab.create("groupednewton", model, loss_fn)
    assert opt.learning_rates == {}
    for t in range(3):
        _step(model, loss_fn, opt, batches, t)
    rates = opt.learning_rates
    assert set(rates) == set(opt.subset_names)
    assert {k[3:]: v for k, v in opt.stats.items() if k.startswith("lr/")} == rates
    eta = opt.last_tensors.eta
    assert [rates[n] for n in opt.subset_names] == pytest.approx((0.1 * eta).tolist(), rel=1e-15)


def test_paper_configuration_is_valid_and_every_value_has_its_source():
    from curvlab_plugins.groupednewton.paper import (
        PAPER_MLP_MNIST,
        PAPER_MLP_MNIST_SAFE,
        PAPER_MLP_MNIST_SETUP,
        PAPER_SOURCES,
    )

    schema = curvlab.info("groupednewton").schema
    for config in (PAPER_MLP_MNIST, PAPER_MLP_MNIST_SAFE):
        assert schema.validate(dict(config))  # every value in range
    assert set(PAPER_MLP_MNIST) - {"safeguard", "recompute_growth"} <= set(PAPER_SOURCES)
    assert {"batch_size", "fresh_batch_size", "epochs"} <= set(PAPER_SOURCES)
    assert PAPER_MLP_MNIST_SETUP["fresh_batch_size"] == 1000
    # the paper's algorithm in its setting (tanh MLP, classification, larger separate batch)
    from curvlab.harness.problems import load_problem

    data = load_problem("digits-mlp").data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)

    def batch(n):
        i = torch.randint(0, len(data.x_train), (n,), generator=gen)
        return data.x_train[i], data.y_train[i]

    def full_loss():
        with torch.no_grad():
            return float(loss_fn(model(data.x_train), data.y_train))

    before = full_loss()
    opt = curvlab.create("groupednewton", model, loss_fn, **PAPER_MLP_MNIST)
    for _ in range(40):
        x, y = batch(32)
        opt.step(curvlab.closure(model, loss_fn, x, y, batches=lambda: batch(256)))
    assert full_loss() < 0.5 * before

"""GroupedNewton optimizer: line search, Newton, invariance, guards, state, partitions."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

import curvlab
from curvlab import reference as ref
from curvlab.optimizer import NonFiniteStepWarning
from curvlab.testing import assert_state_equal
from curvlab_plugins.groupednewton import groups_by

F64 = torch.float64


def _data(seed, n=16, din=3, dout=1, kind="mse"):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, din, generator=gen, dtype=F64)
    y = (torch.randint(0, dout, (n,), generator=gen) if kind == "ce"
         else torch.randn(n, dout, generator=gen, dtype=F64))
    return x, y


def _batches(seed, k=4, **kw):
    return [_data(seed + i, **kw) for i in range(k)]


def _closure(model, loss_fn, batches, t):
    x, y = batches[t % len(batches)]
    fresh = batches[(t + 1) % len(batches)]
    return curvlab.closure(model, loss_fn, x, y, batches=lambda: fresh)


def _run(model, loss_fn, opt, batches, steps, start=0):
    return [float(opt.step(_closure(model, loss_fn, batches, t)).detach())
            for t in range(start, start + steps)]


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _tanh_net(seed, sizes=(3, 8, 1)):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(sizes[0], sizes[1]), nn.Tanh(),
                         nn.Linear(sizes[1], sizes[2])).double()


# ------------------------------------------------------------ exact special cases
def test_one_subset_is_exact_line_search_on_the_fresh_batch():
    model, loss_fn = _tanh_net(0), nn.MSELoss()
    batches = _batches(0, k=2)
    theta0 = _flat(model)
    opt = curvlab.create("groupednewton", model, loss_fn, lr=1.0, order=2, partition="trivial",
                         direction="gradient", period=1, eta_ema=0.0, clip_negative=False)
    x, y = batches[0]
    xf, yf = batches[1]
    u = ref.gradient(model, loss_fn, x, y)              # direction from the step's batch
    g = ref.gradient(model, loss_fn, xf, yf)            # tensors from the separate batch
    h = ref.hessian(model, loss_fn, xf, yf)
    opt.step(_closure(model, loss_fn, batches, 0))
    expected = (g @ u) / (u @ h @ u)
    t = opt.last_tensors
    assert t.names == ("all",)
    assert t.eta_raw.item() == pytest.approx(expected.item(), rel=1e-10)
    assert t.eta.item() == pytest.approx(expected.item(), rel=1e-10)
    torch.testing.assert_close(_flat(model), theta0 - expected * u, rtol=1e-12, atol=1e-14)


class _Quadratic(nn.Module):
    """L(θ) = ½ θᵀAθ − bᵀθ with one scalar parameter per coordinate (finest partition)."""

    def __init__(self, a, b, theta0):
        super().__init__()
        self.a, self.b = a, b
        self.theta = nn.ParameterList([nn.Parameter(v.clone()) for v in theta0])

    def forward(self, _x):
        th = torch.stack(list(self.theta))
        return 0.5 * th @ self.a @ th - self.b @ th


@pytest.mark.parametrize("order", [2, 3], ids=["order2", "order3"])
def test_finest_partition_with_gradient_direction_is_newton(order):
    gen = torch.Generator().manual_seed(1)
    m = torch.randn(5, 5, generator=gen, dtype=F64)
    a = m @ m.T + 0.5 * torch.eye(5, dtype=F64)
    b = torch.randn(5, generator=gen, dtype=F64)
    model = _Quadratic(a, b, torch.randn(5, generator=gen, dtype=F64))
    loss_fn = lambda out, _y: out  # noqa: E731
    opt = curvlab.create("groupednewton", model, loss_fn, lr=1.0, order=order,
                         direction="gradient", period=1, eta_ema=0.0, clip_negative=False)
    opt.step(curvlab.closure(model, loss_fn, None, None))
    theta = torch.stack([p.detach() for p in model.theta])
    torch.testing.assert_close(theta, torch.linalg.solve(a, b), rtol=1e-10, atol=1e-12)
    if order == 3:  # exactly quadratic: D = 0 (no autograd graph left), no solve failure
        assert torch.count_nonzero(opt.last_tensors.d) == 0
        assert opt.stats.get("solve_failures", 0) == 0


# ------------------------------------------------------------------- invariance
class _Reparam(nn.Module):
    """θ_s = a_s θ'_s + b_s per parameter tensor; its parameters are the θ'."""

    def __init__(self, base, a, b):
        super().__init__()
        self.base, self.a, self.b = base, a, b
        self.names = [n for n, _ in base.named_parameters()]
        self.prime = nn.ParameterList(
            [nn.Parameter(((p.detach() - b[n]) / a[n]).clone()) for n, p in base.named_parameters()]
        )

    def theta(self):
        return {n: self.a[n] * q + self.b[n] for n, q in zip(self.names, self.prime)}

    def forward(self, x):
        return functional_call(self.base, self.theta(), (x,))


def _reparam_gap(name, steps, **hp):
    loss_fn = nn.MSELoss()
    batches = _batches(3, k=5, n=32)
    direct = _tanh_net(2, (3, 16, 1))
    base = copy.deepcopy(direct)
    gen = torch.Generator().manual_seed(4)
    a = {n: (0.2 + 4 * torch.rand((), generator=gen, dtype=F64)) * (-1) ** i
         for i, (n, _) in enumerate(base.named_parameters())}
    b = {n: torch.randn((), generator=gen, dtype=F64) for n, _ in base.named_parameters()}
    rep = _Reparam(base, a, b)
    th0 = _flat(direct)
    opt1 = curvlab.create(name, direct, loss_fn, **hp)
    opt2 = curvlab.create(name, rep, loss_fn, **hp)
    _run(direct, loss_fn, opt1, batches, steps)
    _run(rep, loss_fn, opt2, batches, steps)
    th1 = _flat(direct)
    th2 = torch.cat([v.detach().reshape(-1) for v in rep.theta().values()])
    assert torch.isfinite(th1).all()
    def decisions(stats):  # counters and σ; per-subset learning rates scale with a_s²
        return {k: v for k, v in stats.items() if not k.startswith("lr/")}

    assert decisions(opt1.stats) == decisions(opt2.stats)  # rejections, early computations
    return (float((th1 - th2).norm() / th1.norm()), float((th1 - th0).norm() / th0.norm()),
            opt1.stats)


@pytest.mark.parametrize(
    "hp",
    [{}, {"order": 2, "lr": 0.05}, {"clip_negative": False, "lr": 0.05},
     {"recompute_growth": 1.0, "lr": 0.3}, {"ema_before_clip": True},
     {"plateau_patience": 0, "plateau_window": 5}],
    ids=["defaults-order3", "order2", "unclipped", "early-recomputations", "ema-before-clip",
         "plateau-schedule"],
)
def test_trajectory_invariant_under_per_subset_affine_reparametrisation(hp):
    gap, moved, stats = _reparam_gap("groupednewton", 60, **hp)
    assert moved > 1e-3, "the optimizer must actually move for the test to mean anything"
    assert gap <= 1e-8, gap
    if "recompute_growth" in hp:  # the trigger fired, and identically in both coordinates
        assert stats["early_computations"] > 0
    if "plateau_patience" in hp:
        assert stats["lr_scale"] < 1.0


def test_sgd_trajectory_is_not_invariant():
    gap, _, _ = _reparam_gap("sgd", 60, lr=0.05, momentum=0.9)
    assert gap > 1e-2, gap


# ---------------------------------------------------------------------- guards
def test_singular_d_mse_linear_last_layer_trains():
    model, loss_fn = _tanh_net(5, (3, 8, 2)), nn.MSELoss()
    batches = _batches(5, k=4, dout=2)
    opt = curvlab.create("groupednewton", model, loss_fn, period=2)
    losses = _run(model, loss_fn, opt, batches, 30)
    d = opt.last_tensors.d
    assert d[2].item() == 0.0 and d[3].item() == 0.0  # last Linear: exactly zero
    assert all(math.isfinite(v) for v in losses)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert opt.stats["tensor_computations"] == 15


class _DeadNet(nn.Module):
    """Output independent of ``dead`` (u = 0 there) and of ``unused`` (no gradient at all)."""

    def __init__(self, zero_everything=False):
        super().__init__()
        self.lin = nn.Linear(3, 1).double()
        self.dead = nn.Parameter(torch.ones(2, dtype=F64))
        self.unused = nn.Parameter(torch.ones(2, dtype=F64))
        self.zero_everything = zero_everything

    def forward(self, x):
        out = self.lin(x) + 0.0 * self.dead.sum()
        return out * 0.0 if self.zero_everything else out


@pytest.mark.parametrize("zero_everything", [False, True], ids=["some-u-zero", "all-u-zero"])
@pytest.mark.parametrize("order", [2, 3])
def test_zero_directions_do_not_crash(zero_everything, order):
    model, loss_fn = _DeadNet(zero_everything), nn.MSELoss()
    batches = _batches(6, k=3)
    before = [p.detach().clone() for p in model.parameters()]
    opt = curvlab.create("groupednewton", model, loss_fn, order=order, period=1, lr=0.5)
    _run(model, loss_fn, opt, batches, 5)
    eta = opt.last_tensors.eta
    names = opt.subset_names
    assert torch.isfinite(eta).all()
    assert eta[names.index("dead")].item() == 0.0
    for (n, p), p0 in zip(model.named_parameters(), before):
        assert torch.isfinite(p).all()
        if n in ("dead", "unused") or zero_everything:
            assert torch.equal(p, p0), n
    assert opt.stats["skipped_steps"] == 0


def test_nan_on_the_fresh_batch_skips_the_step_and_keeps_state():
    model, loss_fn = _tanh_net(7), nn.MSELoss()
    batches = _batches(7)
    opt = curvlab.create("groupednewton", model, loss_fn, period=2)
    _run(model, loss_fn, opt, batches, 4)  # next step recomputes the tensors
    params = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())
    x, y = batches[0]
    bad = curvlab.closure(model, loss_fn, x, y, batches=lambda: (x * math.nan, y))
    with pytest.warns(NonFiniteStepWarning, match="partition tensors"):
        opt.step(bad)
    for a, b in zip(params, model.parameters()):
        assert torch.equal(a, b)
    after = opt.state_dict()
    assert_state_equal(after["state"], state["state"], "state")
    assert_state_equal(after["curvlab"]["curv_state"], state["curvlab"]["curv_state"], "curv")
    _run(model, loss_fn, opt, batches, 3, start=4)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_overflowing_update_is_skipped():
    torch.manual_seed(12)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))  # float32
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    opt = curvlab.create("groupednewton", model, nn.MSELoss(), lr=1e300, order=2,
                         safeguard=False)  # the overflow path itself, not the safeguard
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(NonFiniteStepWarning, match="non-finite update"):
        opt.step(curvlab.closure(model, nn.MSELoss(), x, y))
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)
    assert opt.curv_state == {} and opt.last_tensors is None


# ------------------------------------------------------------- state and resume
@pytest.mark.parametrize("direction", ["sgd-momentum", "adam", "gradient"])
def test_resume_mid_period_is_bitwise(direction):
    loss_fn = nn.CrossEntropyLoss()
    batches = _batches(8, k=4, dout=3, kind="ce")
    model = _tanh_net(8, (3, 6, 3))
    opt = curvlab.create("groupednewton", model, loss_fn, period=3, direction=direction)
    _run(model, loss_fn, opt, batches, 4)
    saved_opt, saved_model = copy.deepcopy(opt.state_dict()), copy.deepcopy(model.state_dict())
    _run(model, loss_fn, opt, batches, 5, start=4)
    model2 = _tanh_net(99, (3, 6, 3))
    model2.load_state_dict(saved_model)
    opt2 = curvlab.create("groupednewton", model2, loss_fn, period=3, direction=direction)
    opt2.load_state_dict(saved_opt)
    assert opt2.last_tensors is not None
    torch.testing.assert_close(opt2.last_tensors.hbar, saved_opt["curvlab"]["curv_state"]["tensors"]["hbar"])
    _run(model2, loss_fn, opt2, batches, 5, start=4)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert_state_equal(opt.state_dict()["curvlab"], opt2.state_dict()["curvlab"], "curvlab")


def test_period_and_ema_bookkeeping():
    model, loss_fn = _tanh_net(9), nn.MSELoss()
    batches = _batches(9)
    opt = curvlab.create("groupednewton", model, loss_fn, period=3, eta_ema=0.5,
                         safeguard=False,  # exact EMA formula; rejections drop the history
                         recompute_growth=None)  # the fixed period alone
    _run(model, loss_fn, opt, batches, 3)
    first = opt.last_tensors
    assert opt.stats["tensor_computations"] == 1 and first.step == 0
    torch.testing.assert_close(first.eta, first.eta_raw.clamp(min=0))
    _run(model, loss_fn, opt, batches, 1, start=3)
    second = opt.last_tensors
    assert opt.stats["tensor_computations"] == 2 and second.step == 3
    torch.testing.assert_close(second.eta, 0.5 * first.eta + 0.5 * second.eta_raw.clamp(min=0))


def test_full_third_order_tensor_has_the_same_diagonal():
    loss_fn, batches = nn.MSELoss(), _batches(10)
    outs = []
    for full in (False, True):
        model = _tanh_net(10)
        opt = curvlab.create("groupednewton", model, loss_fn, full_third_order=full)
        _run(model, loss_fn, opt, batches, 1)
        outs.append((opt.last_tensors, [p.detach().clone() for p in model.parameters()]))
    (diag, p1), (full, p2) = outs
    assert full.d.shape == (4, 4, 4)
    torch.testing.assert_close(torch.stack([full.d[i, i, i] for i in range(4)]), diag.d,
                               rtol=1e-12, atol=1e-15)
    for a, b in zip(p1, p2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------- partitions
@pytest.mark.parametrize(
    "partition, names",
    [("tensor", ("0.weight", "0.bias", "2.weight", "2.bias")), ("trivial", ("all",)),
     ("weight-bias", ("weights", "biases")), ("layer", ("0", "2"))],
)
def test_partition_names(partition, names):
    opt = curvlab.create("groupednewton", _tanh_net(0), nn.MSELoss(), partition=partition)
    assert opt.subset_names == names


def test_user_partition_from_callable_via_param_groups():
    model, loss_fn = _tanh_net(11), nn.MSELoss()
    groups = groups_by(model, lambda name, p: "first" if name.startswith("0.") else "rest")
    opt = curvlab.create("groupednewton", model, loss_fn, params=groups, partition="groups")
    assert opt.subset_names == ("first", "rest")
    _run(model, loss_fn, opt, _batches(11), 2)
    assert opt.last_tensors.hbar.shape == (2, 2)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: curvlab.create("groupednewton", list(_tanh_net(0).parameters()), nn.MSELoss(),
                                partition="layer"), "needs the model"),
        (lambda: curvlab.create("groupednewton", _tanh_net(0), nn.MSELoss(),
                                params=[{"params": list(_tanh_net(0).parameters()), "order": 2}]),
         "order is optimizer-wide"),
    ],
    ids=["layer-without-model", "per-group-global-knob"],
)
def test_invalid_configurations_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_plain_closure_is_rejected_with_a_hint():
    model, loss_fn = _tanh_net(0), nn.MSELoss()
    opt = curvlab.create("groupednewton", model, loss_fn)
    x, y = _data(0)

    def plain():
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    with pytest.raises(ValueError, match="fresh"):
        opt.step(plain)


def _deep_relu_ae() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    widths = [16, 32, 16, 4, 16, 32, 16]
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    return model, torch.rand(64, 16)


@pytest.mark.parametrize("safeguard", [True, False], ids=["safeguard", "no-safeguard"])
def test_deep_relu_autoencoder_first_step(safeguard):
    """Regression: indefinite cross-layer H̄ + tiny diagonal D gave η ~ 1e10 and loss → inf.

    Along one ReLU layer the BCE alone curves the loss, so D_sss is tiny for the early
    layers while H̄ is strongly indefinite through its off-diagonal blocks; the cubic model's
    minimiser runs along the negative-curvature direction. The safeguard must reject that step.
    """
    model, x = _deep_relu_ae()
    loss_fn = nn.BCEWithLogitsLoss()
    opt = curvlab.create("groupednewton", model, loss_fn, lr=1.0, safeguard=safeguard)
    with torch.no_grad():
        loss0 = float(loss_fn(model(x), x))
    opt.step(curvlab.closure(model, loss_fn, x, x))
    with torch.no_grad():
        loss1 = float(loss_fn(model(x), x))
    if safeguard:
        assert loss1 < loss0 and opt.stats["rejected_steps"] >= 1
        assert opt.last_tensors.reg_scale > 1
    else:  # documents the failure the safeguard prevents
        assert not loss1 < loss0


def test_predicted_decrease_matches_the_solver_model_on_unregularised_subsets():
    """Regression: the safeguard's model decrease must use the solver's 𝒟 (d_s ≤ D_REL_TOL·max d → 0).

    Otherwise a subset the solver leaves unregularised (η_s independent of σ) carries a cubic
    term that grows with σ, the predicted decrease goes to −∞ and every retry is rejected.
    """
    from curvlab_plugins.groupednewton.cubic import cubic_step_sizes
    from curvlab_plugins.groupednewton.tensors import PartitionTensors

    model = nn.Linear(2, 1, bias=True)
    opt = curvlab.create("groupednewton", model, nn.MSELoss(), lr=1.0)
    hbar = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    gbar = torch.tensor([1.0, 1.0], dtype=torch.float64)
    tiny = PartitionTensors(gbar, hbar, torch.tensor([1.0, 1e-19], dtype=torch.float64))  # d₂ ≈ 5e-7
    zero = PartitionTensors(gbar, hbar, torch.tensor([1.0, 0.0], dtype=torch.float64))
    for lam in (10.0, 1e20):
        eta = cubic_step_sizes(hbar, gbar, tiny.d_diag, lam).eta
        assert opt._predicted(tiny, eta, lam) == pytest.approx(opt._predicted(zero, eta, lam))
        assert opt._predicted(tiny, eta, lam) > 0  # the model minimiser decreases the model


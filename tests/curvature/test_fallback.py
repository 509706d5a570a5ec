"""The declared fallback for parameters without a curvature block, and the coverage table.

The fallback's trajectory is replayed with torch's own optimizers on the
gradients the backend saw (Adam/AdamW, SGD with momentum); its
hyper-parameters, scheduler behaviour, refusal, single warning, all-or-nothing
step and bitwise resume are checked for K-FAC and FOOF.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import curvlab
from curvlab.curvature.coverage_table import KINDS, CoverageRow, CoverageTable
from curvlab.curvature.fallback import FallbackWarning
from curvlab.optimizer import NonFiniteStepWarning

DT = torch.float64
BACKENDS = ["kfac", "foof"]


def prelu_net(dtype=DT):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.PReLU(4), nn.Linear(4, 2)).to(dtype)


def batch(seed=1, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 3, generator=g, dtype=dtype), torch.randint(0, 2, (16,), generator=g)


def build(name, model, loss_fn, **hp):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        return curvlab.create(name, model, loss_fn, **hp)


def run_and_record(name, steps=5, params=None, **hp):
    """Train ``prelu_net``; return the model and the PReLU weight's gradient at every step."""
    model, loss_fn = prelu_net(), nn.CrossEntropyLoss()
    opt = build(name, model, loss_fn, params=params(model) if params else None, **hp)
    x, y = batch()
    grads = []
    start = model[1].weight.detach().clone()
    for _ in range(steps):
        opt.step(curvlab.closure(model, loss_fn, x, y))
        grads.append(model[1].weight.grad.detach().clone())
    return model, opt, start, grads


def replay(torch_opt_cls, start, grads, lrs=None, **kw):
    p = nn.Parameter(start.clone())
    opt = torch_opt_cls([p], **kw)
    for i, g in enumerate(grads):
        if lrs is not None:
            opt.param_groups[0]["lr"] = lrs[i]
        p.grad = g
        opt.step()
    return p.detach()


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("wd", [0.0, 0.01], ids=["no-decay", "decay"])
def test_adam_fallback_is_torch_adam_with_decoupled_decay(name, wd):
    """fallback_lr, fallback_betas, fallback_eps honoured; the group's weight_decay decoupled (AdamW)."""
    hp = dict(lr=0.1, weight_decay=wd, fallback="adam", fallback_lr=0.05,
              fallback_betas=(0.8, 0.99), fallback_eps=1e-6)
    model, _, start, grads = run_and_record(name, **hp)
    cls = torch.optim.AdamW if wd else torch.optim.Adam
    want = replay(cls, start, grads, lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd)
    torch.testing.assert_close(model[1].weight.detach(), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", BACKENDS)
def test_sgd_fallback_is_torch_sgd_with_the_group_momentum(name):
    hp = dict(lr=0.1, momentum=0.7, weight_decay=0.01, fallback="sgd", fallback_lr=0.2)
    model, _, start, grads = run_and_record(name, **hp)
    want = replay(torch.optim.SGD, start, grads, lr=0.2, momentum=0.7, weight_decay=0.01)
    torch.testing.assert_close(model[1].weight.detach(), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", BACKENDS)
def test_fallback_lr_none_follows_the_group_lr_and_schedulers(name):
    model, loss_fn = prelu_net(), nn.CrossEntropyLoss()
    opt = build(name, model, loss_fn, lr=0.04, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5**t)
    x, y = batch()
    start, grads, lrs = model[1].weight.detach().clone(), [], []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step(curvlab.closure(model, loss_fn, x, y))
        grads.append(model[1].weight.grad.detach().clone())
        sched.step()
    want = replay(torch.optim.Adam, start, grads, lrs=lrs, lr=lrs[0])
    torch.testing.assert_close(model[1].weight.detach(), want, rtol=1e-12, atol=1e-14)
    frozen, _, start, _ = run_and_record(name, lr=0.0)
    assert torch.equal(frozen[1].weight.detach(), start), "lr=0 moved a fallback parameter"


@pytest.mark.parametrize("name", BACKENDS)
def test_fallback_lr_is_read_per_group(name):
    def groups(m):
        return [{"params": [m[0].weight, m[0].bias, m[2].weight, m[2].bias]},
                {"params": [m[1].weight], "fallback_lr": 0.3, "fallback_betas": (0.5, 0.9)}]

    per_group, _, start, grads = run_and_record(name, params=groups, weight_decay=0.0)
    want = replay(torch.optim.Adam, start, grads, lr=0.3, betas=(0.5, 0.9))
    torch.testing.assert_close(per_group[1].weight.detach(), want, rtol=1e-12, atol=1e-14)
    at_construction, *_ = run_and_record(name, weight_decay=0.0, fallback_lr=0.3,
                                         fallback_betas=(0.5, 0.9))
    assert torch.equal(per_group[1].weight, at_construction[1].weight)


class Container(nn.Module):
    """A bare parameter in a custom forward, a PReLU and a Linear."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.scale = nn.Parameter(torch.ones(2))
        self.act = nn.PReLU()

    def forward(self, x):
        return self.act(self.fc(x)) * self.scale


@pytest.mark.parametrize("name", BACKENDS)
def test_one_warning_at_construction_none_per_step(name):
    model, loss_fn = Container().to(DT), nn.CrossEntropyLoss()
    outside = nn.Parameter(torch.zeros(2, dtype=DT))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = curvlab.create(name, model, loss_fn, params=[*model.parameters(), outside])
        x, y = batch()
        for _ in range(12):
            opt.step(curvlab.closure(model, lambda o, t: loss_fn(o + outside, t), x, y))
    assert len(caught) == 1 and caught[0].category is FallbackWarning, [str(w.message) for w in caught]
    text = str(caught[0].message)
    for needle in ("3 parameters", "scale (2,)", "act.weight (1,)", "PReLU at model.act",
                   "<parameter 4, not in the model>", "fallback 'adam'", "fallback='error'"):
        assert needle in text, (needle, text)
    assert opt.coverage().kinds() == {
        "fc.weight": "kronecker-expand", "fc.bias": "kronecker-expand", "scale": "fallback-adam",
        "act.weight": "fallback-adam", "<parameter 4, not in the model>": "fallback-adam"}
    assert outside.grad is not None and not torch.equal(outside, torch.zeros(2, dtype=DT))


UNCOVERED = [
    ("prelu", lambda: nn.Sequential(nn.Linear(2, 2), nn.PReLU()), ["1.weight"], "PReLU at model.1"),
    ("grouped-conv", lambda: nn.Sequential(nn.Conv2d(2, 2, 1, groups=2), nn.Flatten()),
     ["0.weight", "0.bias"], "groups=1"),
    ("conv1d", lambda: nn.Sequential(nn.Conv1d(2, 2, 1), nn.Flatten()), ["0.weight", "0.bias"],
     "Conv1d at model.0"),
    ("mha", lambda: nn.MultiheadAttention(4, 2, batch_first=True),
     ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"], "MultiheadAttention"),
    ("tied-embedding", lambda: _tied(), ["0.weight"], "shared in different roles"),
    ("container-parameter", Container, ["scale", "act.weight"], "container Container itself"),
]


def _tied():
    emb, head = nn.Embedding(5, 3), nn.Linear(3, 5, bias=False)
    head.weight = emb.weight
    return nn.Sequential(emb, head)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("make, params, reason", [u[1:] for u in UNCOVERED], ids=[u[0] for u in UNCOVERED])
def test_error_refuses_naming_each_parameter_and_why(name, make, params, reason):
    with pytest.raises(ValueError, match="fallback='error'") as info:
        curvlab.create(name, make(), nn.MSELoss(), fallback="error")
    for p in params:
        assert f"{p} (" in str(info.value), (p, str(info.value))
    assert reason in str(info.value)
    with pytest.warns(FallbackWarning, match=reason):
        opt = curvlab.create(name, make(), nn.MSELoss())
    assert {r.name for r in opt.coverage().where("fallback-adam")} == set(params)


def test_error_refuses_a_parameter_outside_the_model():
    model = nn.Sequential(nn.Linear(2, 2))
    extra = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match=r"<parameter 2, not in the model> \(3,\)"):
        curvlab.create("kfac", model, nn.MSELoss(), params=[*model.parameters(), extra],
                       fallback="error")


@pytest.mark.parametrize("name", BACKENDS)
def test_overflowing_fallback_state_skips_the_whole_step(name):
    """Adam's v = g² overflows in float32 while the step stays finite: nothing moves, nothing commits."""
    model, loss_fn = prelu_net(torch.float32), nn.CrossEntropyLoss()
    opt = build(name, model, loss_fn)
    x, y = batch(dtype=torch.float32)
    opt.step(curvlab.closure(model, loss_fn, x, y))
    before, state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())

    model[1].weight.register_hook(lambda g: g * 1e25)  # finite, but g² overflows
    with pytest.warns(NonFiniteStepWarning, match="non-finite update"):
        opt.step(curvlab.closure(model, loss_fn, x, y))
    assert all(torch.equal(a, b) for a, b in zip(before.values(), model.state_dict().values()))
    after = opt.state_dict()
    assert torch.equal(after["state"][2]["exp_avg_sq"], state["state"][2]["exp_avg_sq"])


@pytest.mark.parametrize("name", BACKENDS)
def test_resume_is_bitwise_with_fallback_state_and_private_rng(name):
    loss_fn = nn.CrossEntropyLoss()

    def fresh():
        model = Container().to(DT)
        torch.manual_seed(5)
        hp = {"factor_every": 1} if name == "kfac" else {"stats_steps": None}
        return model, build(name, model, loss_fn, **hp)

    x, y = batch()
    model, opt = fresh()
    for _ in range(3):
        opt.step(curvlab.closure(model, loss_fn, x, y))
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    for _ in range(3):
        opt.step(curvlab.closure(model, loss_fn, x, y))
    resumed, opt2 = fresh()
    torch.manual_seed(999)  # another global stream: the private one must not depend on it
    resumed.load_state_dict(saved_model)
    opt2.load_state_dict(saved_opt)
    for _ in range(3):
        opt2.step(curvlab.closure(resumed, loss_fn, x, y))
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert "exp_avg_sq" in opt2.state[resumed.scale]


def test_coverage_table_prints_and_validates():
    table = CoverageTable([CoverageRow("a", (2,), "fallback-sgd", reason="why"),
                           CoverageRow("b", (1, 2), "unit-wise", "blk")], note="engine")
    text = str(table)
    assert text.splitlines()[0].split() == ["parameter", "shape", "kind", "block", "reason"]
    assert "fallback-sgd" in text and text.endswith("engine")
    assert table.records()[1] == {"name": "b", "shape": (1, 2), "kind": "unit-wise",
                                  "block": "blk", "reason": ""}
    with pytest.raises(ValueError, match="coverage kind must be one of"):
        CoverageRow("c", (), "kronecker")
    assert set(KINDS) >= {"kronecker-expand", "kronecker-reduce", "unit-wise", "diagonal",
                          "fallback-adam", "fallback-sgd", "frozen"}


@pytest.mark.parametrize("name", curvlab.available())
def test_every_optimizer_reports_a_row_per_parameter(name):
    model = prelu_net(torch.float32)
    model[0].bias.requires_grad_(False)
    try:
        opt = build(name, model, nn.CrossEntropyLoss())
    except ValueError as err:  # a backend that refuses PReLU names it
        assert "PReLU" in str(err) or "model.1" in str(err), str(err)
        return
    assert callable(opt.coverage), f"{name}: an attribute shadows CurvatureOptimizer.coverage()"
    table = opt.coverage()
    assert [r.name for r in table] == [n for n, _ in model.named_parameters()]
    assert table.kinds()["0.bias"] == "frozen"
    assert all(r.kind in KINDS for r in table)

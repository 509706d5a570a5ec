"""The two factor engines behind one interface: identical factors, MC statistics, RNG, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from curvlab import reference as ref
from curvlab.curvature.backpack_engine import BackpackEngine
from curvlab.curvature.factor_engine import FactorEngine, make_engine
from curvlab.curvature.hook_engine import HookEngine

DT = torch.float64
LOSSES = {"mse": nn.MSELoss, "ce": nn.CrossEntropyLoss, "bce": nn.BCEWithLogitsLoss}


def mlp():
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT)


def cnn():
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 2, 2), nn.Flatten(),
        nn.Linear(2, 3),
    ).to(DT)


def batch(model_name: str, loss: str, n: int = 6):
    torch.manual_seed(1)
    x = torch.randn(n, 4, dtype=DT) if model_name == "mlp" else torch.randn(n, 2, 4, 4, dtype=DT)
    y = {
        "mse": torch.randn(n, 3, dtype=DT),
        "ce": torch.randint(0, 3, (n,)),
        "bce": torch.rand(n, 3, dtype=DT),  # soft targets
    }[loss]
    return x, y


def run(engine: FactorEngine, model, loss_fn, x, y, **options):
    with engine.capture(**options) as cap:
        model.zero_grad()
        loss_fn(model(x), y).backward()
    return cap


# BackPACK's Conv2d G is the position-summed (reduce) G, so CNNs compare with "reduce"
BOTH = [
    pytest.param(m, loss, red, layout, approx, id=f"{m}-{loss}-{red}-{layout}-{approx}")
    for m, approx in (("mlp", "expand"), ("mlp", "reduce"), ("cnn", "reduce"))
    for loss in ("mse", "ce", "bce")
    for red in ("mean", "sum")
    for layout in ("separate", "homogeneous")
]


@pytest.mark.parametrize("model_name, loss, reduction, layout, approx", BOTH)
def test_engines_agree_where_both_apply(model_name, loss, reduction, layout, approx):
    torch.manual_seed(0)
    model = mlp() if model_name == "mlp" else cnn()
    loss_fn = LOSSES[loss](reduction=reduction)
    x, y = batch(model_name, loss)
    bp = BackpackEngine(model, loss_fn, bias_layout=layout, seed=0)
    hk = HookEngine(model, loss_fn, bias_layout=layout, seed=0)
    assert isinstance(bp, FactorEngine) and isinstance(hk, FactorEngine)
    assert bp.coverage() == hk.coverage()
    a = run(bp, model, loss_fn, x, y, fisher_type="exact", kfac_approx=approx).factors
    b = run(hk, model, loss_fn, x, y, fisher_type="exact", kfac_approx=approx).factors
    assert a.keys() == b.keys()
    for name in a:
        for field in ("A", "G"):
            torch.testing.assert_close(getattr(a[name], field), getattr(b[name], field), rtol=1e-12, atol=1e-15)
        assert a[name].params == b[name].params and a[name].homogeneous == b[name].homogeneous
    # and neither left anything on the model
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert not any(hasattr(p, "kflr") for p in model.parameters())


def test_kfac_equals_dense_ggn_single_layer_batch_one():
    """The spec's exact regime: one Linear layer, batch size 1, exact factors."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2)).to(DT)
    x, y = torch.randn(1, 3, dtype=DT), torch.randint(0, 2, (1,))
    loss_fn = nn.CrossEntropyLoss()
    for engine in (BackpackEngine, HookEngine):
        f = run(engine(model, loss_fn, bias_layout="homogeneous"), model, loss_fn, x, y, fisher_type="exact").factors["0"]
        block = ref.layer_block(ref.ggn(model, loss_fn, x, y), model, "0", bias="folded")
        torch.testing.assert_close(f.dense(), block, rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------- Monte Carlo
MC = [
    pytest.param(eng, loss, red, id=f"{eng.__name__}-{loss}-{red}")
    for eng in (HookEngine, BackpackEngine)
    for loss in ("mse", "ce", "bce")
    for red in ("mean", "sum")
]


@pytest.mark.parametrize("engine_cls, loss, reduction", MC)
def test_mc_expectation_is_exact(engine_cls, loss, reduction):
    """Mean of K one-sample MC factors → exact factor; tolerance 5 standard errors (fixed seed)."""
    torch.manual_seed(0)
    model = mlp()
    loss_fn = LOSSES[loss](reduction=reduction)
    x, y = batch("mlp", loss, n=4)
    engine = engine_cls(model, loss_fn, seed=123)
    exact = run(engine, model, loss_fn, x, y, fisher_type="exact").factors
    K = 200 if engine_cls is HookEngine else 80
    draws = [run(engine, model, loss_fn, x, y, fisher_type="mc").factors for _ in range(K)]
    for name, f in exact.items():
        G = torch.stack([d[name].G for d in draws])
        se = G.std(dim=0) / math.sqrt(K)
        assert bool(((G.mean(0) - f.G).abs() <= 5 * se + 1e-12 * f.G.abs().max()).all()), name
        torch.testing.assert_close(draws[0][name].A, f.A)  # A is deterministic


def test_mc_expectation_on_sequence_reduce():
    """Reduce on a (B, T, C) output: the exact factor is E[MC] (per-position columns)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DT)
    loss_fn = nn.MSELoss(reduction="sum")
    x, y = torch.randn(3, 4, 3, dtype=DT), torch.randn(3, 4, 2, dtype=DT)
    engine = HookEngine(model, loss_fn, seed=5)
    exact = run(engine, model, loss_fn, x, y, fisher_type="exact", kfac_approx="reduce").factors["0"].G
    cap = run(engine, model, loss_fn, x, y, fisher_type="mc", kfac_approx="reduce", mc_samples=4000)
    # 4000 samples: relative error ~ 1/sqrt(4000) = 0.016 per entry; 6 standard errors
    assert (cap.factors["0"].G - exact).abs().max() <= 0.1 * exact.abs().max()


@pytest.mark.parametrize("engine_cls", [HookEngine, BackpackEngine], ids=lambda c: c.__name__)
def test_rng_state_resumes_and_global_rng_untouched(engine_cls):
    torch.manual_seed(0)
    model = mlp()
    loss_fn = nn.CrossEntropyLoss()
    x, y = batch("mlp", "ce")
    engine = engine_cls(model, loss_fn, seed=7)
    first = run(engine, model, loss_fn, x, y).factors
    saved = engine.rng_state.clone()
    global_before = torch.get_rng_state()
    second = run(engine, model, loss_fn, x, y)
    assert torch.equal(torch.get_rng_state(), global_before)
    assert not torch.equal(second.factors["2"].G, first["2"].G)  # the stream moved on
    engine.rng_state = saved
    again = run(engine, model, loss_fn, x, y).factors
    for name in first:
        assert torch.equal(again[name].G, second.factors[name].G)  # same code path, same draws
    fresh = engine_cls(model, loss_fn, seed=7)
    assert torch.equal(run(fresh, model, loss_fn, x, y).factors["2"].G, first["2"].G)


# ---------------------------------------------------------------- empirical
@pytest.mark.parametrize("loss", ["mse", "ce", "bce"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_empirical_equals_dense_empirical_fisher_and_ignores_closure_scale(loss, reduction):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3)).to(DT)
    loss_fn = LOSSES[loss](reduction=reduction)
    x, y = batch("mlp", loss, n=1)
    engine = HookEngine(model, loss_fn, bias_layout="homogeneous")
    f = run(engine, model, loss_fn, x, y, fisher_type="empirical").factors["0"]
    block = ref.layer_block(ref.fisher(model, loss_fn, x, y, kind="empirical"), model, "0", bias="folded")
    torch.testing.assert_close(f.dense(), block, rtol=1e-10, atol=1e-14)
    with engine.capture(fisher_type="empirical") as cap:  # a closure that scales its loss
        model.zero_grad()
        (0.25 * loss_fn(model(x), y) + 3.0 * model[0].weight.square().sum()).backward()
    torch.testing.assert_close(cap.factors["0"].G, f.G, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("fisher_type", ["exact", "empirical"])
def test_ignored_targets_drop_out_of_G_and_the_mean(fisher_type):
    """CE terms with target ignore_index: no curvature, and not counted in the mean's c."""
    torch.manual_seed(0)
    model = mlp()
    x, y = batch("mlp", "ce")
    y[[1, 4]] = -100
    keep = y != -100
    engine = HookEngine(model, nn.CrossEntropyLoss())
    full = run(engine, model, engine.loss_fn, x, y, fisher_type=fisher_type).factors
    engine = HookEngine(model, nn.CrossEntropyLoss(reduction="sum"))
    valid = run(engine, model, engine.loss_fn, x[keep], y[keep], fisher_type=fisher_type).factors
    for name in full:
        torch.testing.assert_close(full[name].G, valid[name].G / int(keep.sum()), rtol=1e-12, atol=1e-15)
    bp = BackpackEngine(model, nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="ignore_index=-100.*engine='hooks'"):
        run(bp, model, bp.loss_fn, x, y)


# ------------------------------------------------------------------- errors
def test_errors_name_the_problem():
    torch.manual_seed(0)
    model = mlp()
    loss_fn = nn.MSELoss()
    x, y = batch("mlp", "mse")
    bp = BackpackEngine(model, loss_fn)
    with pytest.raises(ValueError, match="no empirical-Fisher K-FAC.*engine='hooks'"):
        run(bp, model, loss_fn, x, y, fisher_type="empirical")
    with pytest.raises(ValueError, match=r"2-D Linear inputs; got shape \(6, 2, 4\) at model.0"):
        run(bp, model, loss_fn, x.view(6, 1, 4).expand(6, 2, 4), y.view(6, 1, 3).expand(6, 2, 3))
    hk = HookEngine(model, loss_fn, max_exact_columns=2)
    with pytest.raises(ValueError, match="needs 3 backward passes.*max_exact_columns is 2"):
        run(hk, model, loss_fn, x, y, fisher_type="exact")
    with pytest.raises(ValueError, match="fisher_type must be one of .* got 'kflr'"):
        run(hk, model, loss_fn, x, y, fisher_type="kflr")
    with pytest.raises(ValueError, match="did you mean 'reduce'"):
        run(hk, model, loss_fn, x, y, kfac_approx="reduced")
    with pytest.raises(ValueError, match="mc_samples must be an integer >= 1"):
        run(hk, model, loss_fn, x, y, mc_samples=0)
    with pytest.raises(ValueError, match="loss_fn given to the engine"), hk.capture():
        nn.MSELoss()(model(x), y).backward()
    with pytest.raises(ValueError, match="called twice"), hk.capture():
        (loss_fn(model(x), y) + loss_fn(model(x), y)).backward()
    with pytest.raises(ValueError, match=r"model.2 was not called"), hk.capture(need_G=False):
        model[0](x)
    with pytest.raises(ValueError, match="no gradient reached loss_fn's output"), hk.capture(fisher_type="empirical"):
        loss_fn(model(x), y)
    conv = cnn()
    with pytest.raises(ValueError, match="Conv2d only with kfac_approx='reduce'"):
        run(BackpackEngine(conv, loss_fn), conv, loss_fn, *batch("cnn", "mse"))
    assert type(make_engine(conv, loss_fn)) is HookEngine
    assert make_engine(conv, loss_fn, kfac_approx="reduce").name == "backpack"
    with pytest.raises(ValueError, match="BackPACK engine cannot handle.*LayerNorm"):
        BackpackEngine(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)), loss_fn)
    with pytest.raises(ValueError, match="engine must be one of .*did you mean 'hooks'"):
        make_engine(model, loss_fn, engine="hook")
    with pytest.raises(ValueError, match="label_smoothing must be 0"):
        make_engine(model, nn.CrossEntropyLoss(label_smoothing=0.1))
    # a failed capture leaves no hook behind
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_need_G_false_is_forward_only():
    torch.manual_seed(0)
    model = mlp()
    loss_fn = nn.MSELoss()
    x, y = batch("mlp", "mse")
    for engine in (BackpackEngine(model, loss_fn, bias_layout="homogeneous"), HookEngine(model, loss_fn, bias_layout="homogeneous")):
        with engine.capture(need_G=False) as cap:
            out = model(x)
        assert out.grad_fn is not None and all(p.grad is None for p in model.parameters())
        f = cap.factors["0"]
        assert f.G is None
        a = torch.cat([x, torch.ones(6, 1, dtype=DT)], 1)
        torch.testing.assert_close(f.A, a.T @ a / 6)

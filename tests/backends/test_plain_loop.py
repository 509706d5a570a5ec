"""The plain training loop (``loss.backward(); opt.step()``) for K-FAC and FOOF, and the closure-only errors."""

import gc
import warnings

import pytest
import torch
from torch import nn

import curvlab
from curvlab.closure import OPTION_PURPOSES
from curvlab.curvature.fallback import FallbackWarning

F64 = torch.float64


def mlp():
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(F64)


def cnn():
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 2),
                         nn.Flatten(), nn.Linear(2 * 3 * 3, 3)).to(F64)


def batches(kind, steps, n=8):
    gen = torch.Generator().manual_seed(7)
    shape = (n, 4) if kind == "mlp" else (n, 2, 4, 4)
    return [(torch.randn(shape, generator=gen, dtype=F64), torch.randint(0, 3, (n,), generator=gen))
            for _ in range(steps)]


MODELS = {"mlp": mlp, "cnn": cnn}
HP = {
    "foof": dict(lr=0.2, damping=0.1, inverse_every=3, stats_steps=2, momentum=0.5),
    "kfac": dict(lr=0.2, damping=0.05, factor_every=2, inverse_every=2, momentum=0.5,
                 weight_decay=1e-3, kl_clip=1e-2),
}
CASES = [
    pytest.param("foof", {}, "mlp", id="foof-mlp"),
    pytest.param("foof", {}, "cnn", id="foof-cnn"),
    pytest.param("kfac", {"fisher_type": "empirical"}, "mlp", id="kfac-empirical-mlp"),
    pytest.param("kfac", {"fisher_type": "empirical"}, "cnn", id="kfac-empirical-cnn"),
    pytest.param("kfac", {"fisher_type": "empirical", "kfac_approx": "reduce"}, "cnn",
                 id="kfac-empirical-reduce-cnn"),
    # the hook engine in both loops (Conv2d with expand): the same sampled targets
    pytest.param("kfac", {"fisher_type": "mc"}, "cnn", id="kfac-mc-cnn"),
    pytest.param("kfac", {"fisher_type": "exact"}, "cnn", id="kfac-exact-cnn"),
    # BackPACK serves the closure, the hook engine the plain loop: the same factors and samples
    pytest.param("kfac", {"fisher_type": "mc"}, "mlp", id="kfac-mc-mlp-backpack-vs-hooks"),
    pytest.param("kfac", {"fisher_type": "exact"}, "mlp", id="kfac-exact-mlp-backpack-vs-hooks"),
]


def train(name, hp, kind, plain, steps=7, scale=1.0):
    """Parameters after every step, in the plain loop or through curvlab.closure."""
    torch.manual_seed(0)
    model = MODELS[kind]()
    loss_fn = nn.CrossEntropyLoss()
    opt = curvlab.create(name, model, loss_fn, **HP[name], **hp)
    trajectory = []
    for x, y in batches(kind, steps):
        if plain:
            opt.zero_grad()
            loss = scale * loss_fn(model(x), y)
            loss.backward()
            opt.step()
        else:
            def closure(x=x, y=y):
                opt.zero_grad()
                loss = scale * loss_fn(model(x), y)
                loss.backward()
                return loss

            opt.step(closure)
        trajectory.append([p.detach().clone() for p in model.parameters()])
    return trajectory, opt


@pytest.mark.parametrize("name,hp,kind", CASES)
def test_plain_loop_equals_closure(name, hp, kind):
    """Plain loop and closure: the same trajectory to float64 round-off (the same statistics, one engine)."""
    closure_run, ref = train(name, hp, kind, plain=False)
    plain_run, opt = train(name, hp, kind, plain=True)
    for t, (a, b) in enumerate(zip(closure_run, plain_run)):
        for p, q in zip(a, b):
            torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-13, msg=f"step {t}")
    assert opt.stats["steps"] == ref.stats["steps"] == 7
    assert opt.curv_state["step"] == ref.curv_state["step"] == 7


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_plain_loop_measures_the_scale_of_the_users_backward(kind):
    """``(3 · loss).backward()`` in the plain loop: c = 3 measured, steps as the closure returning 3 · loss."""
    hp = {"fisher_type": "empirical"}
    closure_run, ref = train("kfac", hp, kind, plain=False, scale=3.0)
    plain_run, opt = train("kfac", hp, kind, plain=True, scale=3.0)
    assert opt.curv_state["loss_scale"] == pytest.approx(3.0, rel=1e-12)
    for p, q in zip(closure_run[-1], plain_run[-1]):
        torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("reduction,divide,factor", [
    ("mean", 1.0, "1/(N·C)"), ("sum", 1.0, "1"), ("sum", 5.0, "1/N")],
    ids=["mean-module", "sum-module", "sum-module-over-N"])
def test_empirical_G_from_the_users_backward_closed_form(reduction, divide, factor):
    """One Linear, MSE: G = c · Σ_n ∇ℓ_n ∇ℓ_nᵀ with ∇ℓ_n = 2(z_n − y_n) and c the loss's per-term scale.

    c is the reduction's (1/(N·C) for the mean, 1 for the sum) times the
    multiple the user applied (1/N for ``sum / N``), both measured from the
    user's backward, not read from the closure.
    """
    torch.manual_seed(1)
    N, C = 5, 2
    model = nn.Sequential(nn.Linear(3, C)).to(F64)
    loss_fn = nn.MSELoss(reduction=reduction)
    x, y = torch.randn(N, 3, dtype=F64), torch.randn(N, C, dtype=F64)
    with torch.no_grad():
        r = model(x) - y
    opt = curvlab.create("kfac", model, loss_fn, fisher_type="empirical", lr=0.0)
    (loss_fn(model(x), y) / divide).backward()
    opt.step()
    c = {"1/(N·C)": 1 / (N * C), "1": 1.0, "1/N": 1 / N}[factor]
    want = c * 4 * r.T @ r
    torch.testing.assert_close(opt.curv_state["blocks"]["0.weight"]["G"], want, rtol=1e-12, atol=0)
    torch.testing.assert_close(opt.curv_state["blocks"]["0.bias"]["G"], want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["foof", "kfac"])
def test_plain_loop_ignores_no_grad_evaluations_and_leaves_no_hooks(name):
    """An evaluation under no_grad between steps changes nothing; a collected optimizer removes its hooks."""
    def run(evaluate):
        torch.manual_seed(0)
        model, loss_fn = mlp(), nn.CrossEntropyLoss()
        opt = curvlab.create(name, model, loss_fn, **HP[name], **({"fisher_type": "empirical"}
                                                                   if name == "kfac" else {}))
        for x, y in batches("mlp", 4 if name == "kfac" else 5):  # the next step records
            if evaluate:
                with torch.no_grad():
                    loss_fn(model(x + 1), y)
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        return model, opt

    model, opt = run(False)
    other, _ = run(True)
    for p, q in zip(model.parameters(), other.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-12, atol=0)
    hooked = [m for m in model.modules() if m._forward_hooks]
    assert hooked, "the plain loop keeps forward hooks for the next recording step"
    del opt
    gc.collect()
    assert not [m for m in model.modules() if m._forward_hooks or m._forward_pre_hooks]


@pytest.mark.parametrize("name", ["foof", "kfac"])
def test_plain_step_without_forward_is_a_clear_error(name):
    model = mlp()
    opt = curvlab.create(name, model, nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match=r"step\(\) without closure uses the forward and backward "
                                         r"passes run since the previous step.*loss.backward\(\)"):
        opt.step()


def test_kfac_plain_loop_refuses_a_loss_that_is_not_loss_fn():
    model = mlp()
    opt = curvlab.create("kfac", model, nn.CrossEntropyLoss(), fisher_type="empirical")
    x, y = batches("mlp", 1)[0]
    nn.functional.cross_entropy(model(x), y).backward()  # not the module given at construction
    with pytest.raises(ValueError, match="loss_fn"):
        opt.step()


def test_switching_from_closure_to_plain_loop():
    """A plain step right after closure steps has no statistics of its own: K-FAC reuses its factors."""
    model, loss_fn = mlp(), nn.CrossEntropyLoss()
    opt = curvlab.create("kfac", model, loss_fn, factor_every=1, fisher_type="empirical")
    data = batches("mlp", 3)
    x, y = data[0]
    opt.step(curvlab.closure(model, loss_fn, x, y))
    assert not [m for m in model.modules() if m._forward_hooks]  # disarmed while closures are used
    before = {k: v["G"].clone() for k, v in opt.curv_state["blocks"].items()}
    for x, y in data[1:]:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    assert opt.stats["steps"] == 3 and opt.stats["skipped_steps"] == 0
    assert any(not torch.equal(before[k], v["G"]) for k, v in opt.curv_state["blocks"].items())


# ---------------------------------------------------------------- closure-only methods
def closure_only():
    out = []
    for name in curvlab.available():
        try:
            info = curvlab.info(name)
        except Exception:  # an optional extra that is not installed
            continue
        if info.meta.requires_closure:
            out.append(pytest.param(name, id=name))
    return out


WHY = {
    "kbfgs": "evaluates the loss a second time on the same batch after moving the weights",
    "kbfgsl": "evaluates the loss a second time on the same batch after moving the weights",
    "groupednewton": "separate mini-batch",
    "adahessian": "Hessian-vector products",
    "sophiah": "Hessian-vector products",
}


def test_kfac_and_foof_support_the_plain_loop_and_the_others_say_why_not():
    names = [p.values[0] for p in closure_only()]
    assert "kfac" not in names and "foof" not in names
    assert {"kbfgs", "kbfgsl", "groupednewton"} <= set(names)


@pytest.mark.parametrize("name", closure_only())
def test_closure_only_methods_say_why(name):
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        opt = curvlab.create(name, model, nn.MSELoss())
    meta = curvlab.info(name).meta
    with pytest.raises(ValueError, match=r"needs step\(closure\), not the plain loop") as err:
        opt.step()
    assert meta.why_closure in str(err.value)
    if name in WHY:
        assert WHY[name] in str(err.value)


KEYWORDS = {"groupednewton": ("backward", "fresh"), "adahessian": ("create_graph",)}


@pytest.mark.parametrize("name", [n for n in KEYWORDS if n in [p.values[0] for p in closure_only()]])
def test_keyword_free_closure_names_the_option_and_how(name):
    """Lightning's closure takes no keywords: the error names each needed option, why, and how."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    loss_fn = nn.MSELoss()
    opt = curvlab.create(name, model, loss_fn)
    x, y = torch.randn(8, 3), torch.randn(8, 2)

    def lightning_like():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    with pytest.raises(ValueError) as err:
        for _ in range(3):
            opt.step(lightning_like)
    text = str(err.value)
    for option in KEYWORDS[name]:
        assert f"{option}=..." in text and OPTION_PURPOSES[option] in text
    assert "automatic_optimization = False" in text
    if "fresh" in KEYWORDS[name]:
        assert "batches=..." in text


def test_kbfgs_uses_a_keyword_free_closure():
    """K-BFGS's second evaluation works with a closure that takes no keywords (Lightning's)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(F64)
    loss_fn = nn.MSELoss()
    opt = curvlab.create("kbfgs", model, loss_fn)
    x, y = torch.randn(8, 3, dtype=F64), torch.randn(8, 2, dtype=F64)

    def lightning_like():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    losses = [float(opt.step(lightning_like).detach()) for _ in range(5)]
    assert losses[-1] < losses[0] and opt.stats["skipped_steps"] == 0


def test_loops_are_declared_in_meta():
    assert curvlab.info("kfac").meta.loops == {"plain": True, "closure": True,
                                               "keyword-free closure": True}
    assert curvlab.info("groupednewton").meta.loops["keyword-free closure"] is False
    assert curvlab.info("kbfgs").meta.loops["plain"] is False

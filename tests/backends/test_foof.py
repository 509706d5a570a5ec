"""FOOF: closed form, equivalence with K-FAC at G = I, statistics schedule, errors."""

import copy
import math
import warnings
from dataclasses import replace

import pytest
import torch
from case_oracles import (
    augmented,
    gradients,
    input_rows,
    model_rows,
    module_calls,
    refused,
    snapshot,
    table,
    token_frequencies,
    train_case,
    unit_moments,
)
from torch import nn

import curvlab
from curvlab.curvature.fallback import FallbackWarning
from curvlab.curvature.kronecker import KroneckerBlock
from curvlab.curvature.kronecker_preconditioner import KroneckerPreconditioner
from curvlab.optimizer import Evaluation
from curvlab_plugins.kfac import KFAC

X = torch.tensor([[3.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
T = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)

CLOSED = [
    # Σ is averaged over the batch: an averaged loss takes lr 1, a summed one lr 1/N
    ("half-mean-lr1", lambda o, t: 0.5 * ((o - t) ** 2).mean(), 1.0),
    ("half-sum-lr-half", lambda o, t: 0.5 * ((o - t) ** 2).sum(), 0.5),
]


@pytest.mark.parametrize("loss_fn,lr", [c[1:] for c in CLOSED], ids=[c[0] for c in CLOSED])
def test_closed_form_single_neuron(loss_fn, lr):
    model = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.zero_()
    opt = curvlab.create("foof", model, loss_fn, lr=lr, damping=1e-12, momentum=0.0)
    opt.step(curvlab.closure(model, loss_fn, X, T))
    torch.testing.assert_close(model.weight.detach(), torch.tensor([[-1.0, 4.0]], dtype=torch.float64))
    assert float(loss_fn(model(X), T).detach()) == pytest.approx(0.0, abs=1e-18)


class KFACWithIdentityG(KFAC):
    """K-FAC whose output-side factor is forced to the identity (blocks and estimates with A only)."""

    def _setup(self):
        super()._setup()
        self.blocks = [KroneckerBlock(b.name, b.params, ("A",), view=b.view) for b in self.blocks]
        self.preconditioner = KroneckerPreconditioner(self.blocks)

    def _evaluate(self, closure):
        evaluation = super()._evaluate(closure)
        if evaluation.data is None:
            return evaluation
        only_a = {k: {"A": v["A"]} for k, v in evaluation.data.estimates.items()}
        return Evaluation(evaluation.loss, replace(evaluation.data, estimates=only_a))



MODELS = [
    ("mlp", lambda: nn.Sequential(nn.Linear(4, 5, bias=False), nn.Tanh(), nn.Linear(5, 3, bias=False))),
    ("conv", lambda: nn.Sequential(nn.Conv2d(1, 2, 2, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 3 * 3, 3, bias=False))),
]


@pytest.mark.parametrize("make", [m[1] for m in MODELS], ids=[m[0] for m in MODELS])
def test_foof_equals_kfac_with_identity_G(make):
    torch.manual_seed(0)
    model = make().double()
    twin = copy.deepcopy(model)
    x = torch.randn(6, 4, dtype=torch.float64) if isinstance(model[0], nn.Linear) else torch.randn(6, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (6,))
    hp = dict(lr=0.5, damping=0.1, momentum=0.9, weight_decay=0.01, ema_decay=0.9, inverse_every=2)
    foof = curvlab.create("foof", model, nn.CrossEntropyLoss(), **hp)
    twin_loss = nn.CrossEntropyLoss()
    kfac = KFACWithIdentityG(twin, twin_loss, kl_clip=None, fisher_type="exact", factor_every=1, **hp)
    for _ in range(3):
        foof.step(curvlab.closure(model, nn.CrossEntropyLoss(), x, y))
        kfac.step(curvlab.closure(twin, twin_loss, x, y))
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_homogeneous_block_with_bias_and_relative_damping():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 2)).double()
    loss_fn = nn.MSELoss()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    lam = 0.3
    opt = curvlab.create("foof", model, loss_fn, lr=1.0, damping=lam, relative_damping=True, momentum=0.0)
    w0, b0 = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    opt.step(curvlab.closure(model, loss_fn, x, y))
    xh = torch.cat([x, torch.ones(5, 1, dtype=x.dtype)], 1)
    S = xh.T @ xh / 5
    M = torch.cat([model[0].weight.grad, model[0].bias.grad[:, None]], 1)
    V = M @ torch.linalg.inv(S + lam * torch.trace(S) / 4 * torch.eye(4, dtype=S.dtype))
    torch.testing.assert_close(w0 - model[0].weight.detach(), V[:, :3])
    torch.testing.assert_close(b0 - model[0].bias.detach(), V[:, 3])


def test_stats_steps_schedule():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 2))
    loss_fn = nn.MSELoss()
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    opt = curvlab.create("foof", model, loss_fn, inverse_every=5, stats_steps=2)
    for _ in range(10):
        opt.step(curvlab.closure(model, loss_fn, x, y))
    assert opt.curv_state["blocks"]["0"]["count"] == 4  # steps 0, 4, 5, 9


# ------------------------------------------------------------------ case table
def expected_foof_step(case, ref, grads, lam):
    """``{param name: Δθ}`` of one FOOF step (lr 1, no momentum) from brute-force statistics."""
    kinds = dict(case.model.coverage)
    names = {id(p): n for n, p in ref.model.named_parameters()}
    calls = module_calls(ref.model, ref.inputs)
    want = {}
    for n, kind in kinds.items():
        if kind == "fallback-adam":  # Adam's first step: m̂ = g, v̂ = g²
            g = grads[n]
            want[n] = -g / (g.abs() + 1e-8)
    seen = set()
    for mname, m in ref.model.named_modules():
        own = [(a, p) for a, p in m.named_parameters(recurse=False) if names.get(id(p)) in kinds]
        own = [(a, p) for a, p in own if kinds[names[id(p)]] not in ("fallback-adam", "frozen")]
        if not own or id(m) in seen:
            continue
        seen.add(id(m))
        w = m.weight if getattr(m, "weight", None) is not None and kinds.get(names.get(id(m.weight))) not in (None, "frozen") else None
        b = m.bias if getattr(m, "bias", None) is not None and kinds.get(names.get(id(m.bias))) not in (None, "frozen") else None
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            rows = torch.cat([input_rows(m, a, b is not None) for a, _ in calls[mname]])
            sigma = rows.T @ rows / rows.shape[0]
            grad = augmented(grads[names[id(w)]], grads[names[id(b)]] if b is not None else None)
            step = -torch.linalg.solve(sigma + lam * torch.eye(sigma.shape[0], dtype=sigma.dtype), grad.T).T
            want[names[id(w)]] = step[:, : w[0].numel()].reshape(w.shape)
            if b is not None:
                want[names[id(b)]] = step[:, -1]
        elif isinstance(m, nn.Embedding):
            freq = token_frequencies(m, torch.cat([a.reshape(-1) for a, _ in calls[mname]]))
            want[names[id(w)]] = -grads[names[id(w)]] / (freq + lam)[:, None]
        else:  # affine norm layer at initialisation (γ = 1, β = 0): x̂ is its output
            xh = torch.cat([out for _, out in calls[mname]], 1)
            S = unit_moments(xh, isinstance(m, nn.modules.batchnorm._BatchNorm), w is not None, b is not None)
            G = torch.stack([grads[names[id(p)]].reshape(-1) for p in (w, b) if p is not None], 1)
            step = -torch.linalg.solve(S + lam * torch.eye(S.shape[1], dtype=S.dtype), G[..., None])[..., 0]
            for j, p in enumerate(q for q in (w, b) if q is not None):
                want[names[id(p)]] = step[:, j].reshape(p.shape)
    return want


@pytest.mark.parametrize("case", table())
def test_case_table_step_matches_reference(case):
    """Every row of curvlab.testing.cases, every block type: one step from brute-force statistics.

    lr 1, no momentum: ``Linear``/``Conv2d`` ΔW̃ = −∇W̃ (Σ + λI)⁻¹ with W̃ = [W | b]
    and Σ the mean over examples and positions (all calls) of the inputs;
    ``Embedding`` rows scaled by 1/(token frequency + λ); norm layers the 2×2
    moments of (x̂, 1) per unit; fallback parameters Adam's first step;
    frozen parameters unchanged. Gradients from curvlab.reference.
    """
    lam = 0.1
    problem = case.instantiate()
    ref = snapshot(problem)

    def build():
        return curvlab.create("foof", problem.model, problem.loss_fn, lr=1.0, damping=lam,
                              momentum=0.0, weight_decay=0.0, inverse_every=1, stats_steps=None)

    if refused(case, "foof", build):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        opt = build()
    assert opt.coverage().kinds() == dict(case.model.coverage)
    opt.step(curvlab.closure(problem.model, problem.loss_fn, problem.inputs, problem.targets))
    grads = gradients(ref)
    want = expected_foof_step(case, ref, grads, lam)
    before = dict(ref.model.named_parameters())
    for name, p in problem.model.named_parameters():
        if case.model.coverage[name] == "frozen":
            assert torch.equal(p, before[name]), f"frozen {name} moved"
            continue
        # Adam's first step −g/(|g| + ε) is ±1 and ill-conditioned where g is round-off (≈ 0)
        atol = 1e-7 if case.model.coverage[name] == "fallback-adam" else 1e-11
        torch.testing.assert_close((p - before[name]).detach(), want[name], rtol=1e-8, atol=atol,
                                   msg=name)


@pytest.mark.parametrize("case", model_rows())
def test_case_table_trains_with_defaults(case):
    """20 steps at FOOF's defaults (lr 0.1): finite, decreasing loss; the coverage table of the row."""
    if case.refusal("foof") is not None:
        return
    losses, opt = train_case(case, "foof", lr=0.1)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], losses
    assert opt.coverage().kinds() == dict(case.model.coverage)

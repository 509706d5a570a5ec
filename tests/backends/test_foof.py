"""FOOF: closed form, equivalence with K-FAC at G = I, statistics schedule, errors."""

import copy
from dataclasses import replace

import pytest
import torch
from case_oracles import (
    augmented,
    gradients,
    layer_inputs,
    layers,
    refused,
    second_moment,
    snapshot,
    table,
    trainable,
)
from torch import nn

import curvlab
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


@pytest.mark.parametrize(
    "model,match",
    [(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)), "LayerNorm at model.1"),
     (nn.Sequential(nn.Conv2d(2, 2, 1, groups=2)), "groups=1")],
    ids=["layernorm", "grouped-conv"],
)
def test_unsupported_layers_raise(model, match):
    with pytest.raises(ValueError, match=match):
        curvlab.create("foof", model, nn.MSELoss())


# ------------------------------------------------------------------ case table
@pytest.mark.parametrize("case", table())
def test_case_table_step_matches_reference(case):
    """Every row of curvlab.testing.cases: ΔW̃ = −α ∇W̃ (Σ + λI)⁻¹ with the reference gradient.

    W̃ = [W | b] (bias column only where the bias is trainable), Σ the
    brute-force input second moment, one step with lr 1, no momentum.
    """
    lam = 0.1
    problem = case.instantiate()
    ref = snapshot(problem)

    def build():
        return curvlab.create("foof", problem.model, problem.loss_fn, lr=1.0, damping=lam,
                              momentum=0.0, weight_decay=0.0, inverse_every=1, stats_steps=None)

    if refused(case, "foof", build):
        return
    opt = build()
    opt.step(curvlab.closure(problem.model, problem.loss_fn, problem.inputs, problem.targets))
    grads = gradients(ref)
    inputs = layer_inputs(ref.model, ref.inputs)
    new_layers = layers(problem.model)
    for lname, m in layers(ref.model).items():
        bias = m.bias if trainable(m.bias) else None
        sigma = second_moment(m, inputs[lname], bias is not None)
        grad = augmented(grads[f"{lname}.weight"], grads[f"{lname}.bias"] if bias is not None else None)
        want = -torch.linalg.solve(sigma + lam * torch.eye(sigma.shape[0], dtype=sigma.dtype),
                                   grad.T).T
        new = new_layers[lname]
        got = (augmented(new.weight, new.bias if bias is not None else None)
               - augmented(m.weight, bias)).detach()
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-12)
        if m.bias is not None and bias is None:
            assert torch.equal(new.bias, m.bias), "a frozen bias moved"

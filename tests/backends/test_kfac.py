"""K-FAC (BackPACK) against dense float64 oracles from curvlab.reference."""

import copy
import math
import warnings

import pytest
import torch
from case_oracles import (
    expand_moment,
    layers,
    model_rows,
    module_calls,
    refused,
    snapshot,
    table,
    train_case,
    trainable,
)
from torch import nn

import curvlab
from curvlab.curvature.fallback import FallbackWarning
from curvlab.curvature.kronecker import kron_dense
from curvlab.optimizer import NonFiniteStepWarning
from curvlab.reference.ggn import ggn

EXACT = dict(fisher_type="exact", lr=0.0, momentum=0.0, weight_decay=0.0, kl_clip=None)


def soft_bce_targets(n, k):
    return torch.rand(n, k, dtype=torch.float64)


LOSSES = [
    ("mse-mean", lambda: nn.MSELoss(), lambda n, k: torch.randn(n, k, dtype=torch.float64)),
    ("mse-sum", lambda: nn.MSELoss(reduction="sum"), lambda n, k: torch.randn(n, k, dtype=torch.float64)),
    ("ce-mean", lambda: nn.CrossEntropyLoss(), lambda n, k: torch.randint(0, k, (n,))),
    ("bce-soft-mean", lambda: nn.BCEWithLogitsLoss(), soft_bce_targets),
    ("bce-soft-sum", lambda: nn.BCEWithLogitsLoss(reduction="sum"), soft_bce_targets),
]


def factors_after_one_step(model, loss_fn, x, y, **hp):
    opt = curvlab.create("kfac", model, loss_fn, **{**EXACT, **hp})
    opt.step(curvlab.closure(model, loss_fn, x, y))
    return opt.curv_state["blocks"]


@pytest.mark.parametrize("make_loss,make_y", [c[1:] for c in LOSSES], ids=[c[0] for c in LOSSES])
def test_exact_regime_equals_ggn_block(make_loss, make_y):
    """One Linear layer, batch 1, KFLR factors: G ⊗ A and G are the exact GGN blocks."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4)).double()
    x, y = torch.randn(1, 3, dtype=torch.float64), make_y(1, 4)
    ref = copy.deepcopy(model)
    blocks = factors_after_one_step(model, make_loss(), x, y)
    w = blocks["0.weight"]
    torch.testing.assert_close(
        kron_dense(w["G"], w["A"]), ggn(ref, make_loss(), x, y, params=["0.weight"]), rtol=1e-6, atol=1e-12
    )
    torch.testing.assert_close(blocks["0.bias"]["G"], ggn(ref, make_loss(), x, y, params=["0.bias"]), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_bce_soft_targets_many_outputs_match_ggn(reduction):
    """BackPACK 1.7 refuses this case; our module extension: last-layer bias G is the exact GGN block."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 6)).double()
    loss_fn = nn.BCEWithLogitsLoss(reduction=reduction)
    x, y = torch.randn(7, 3, dtype=torch.float64), soft_bce_targets(7, 6)
    ref = copy.deepcopy(model)
    blocks = factors_after_one_step(model, loss_fn, x, y)
    for name in ("2.bias", "0.bias"):  # a bias block (A = 1) is exact for any batch
        dense = ggn(ref, nn.BCEWithLogitsLoss(reduction=reduction), x, y, params=[name])
        torch.testing.assert_close(blocks[name]["G"], dense, rtol=1e-6, atol=1e-12)


def test_bce_monte_carlo_factor_is_unbiased():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4)).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), soft_bce_targets(5, 4)
    exact = factors_after_one_step(copy.deepcopy(model), nn.BCEWithLogitsLoss(), x, y)["0.bias"]["G"]
    mc = factors_after_one_step(model, nn.BCEWithLogitsLoss(), x, y, fisher_type="mc", mc_samples=4000)["0.bias"]["G"]
    torch.testing.assert_close(mc, exact, rtol=0, atol=0.08 * exact.diagonal().max().item())


class ShiftedConv(nn.Module):
    """Conv2d whose output gets a per-position shift δ (zero): the GGN w.r.t. δ holds every position's G."""

    def __init__(self, conv, rest, out_shape):
        super().__init__()
        self.conv, self.rest = conv, rest
        self.delta = nn.Parameter(torch.zeros(out_shape, dtype=torch.float64))

    def forward(self, x):
        return self.rest(self.conv(x) + self.delta)


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_conv_factors_match_unfold_reference_and_ggn(approx):
    """Conv2d (hook engine): A from unfolded patches, G from the GGN of a per-position shift δ.

    With output positions r and exact columns, expand G = Σ_r GGN_δ[(·, r), (·, r)] (the
    positions' diagonal blocks) and A = Σ_{n,r} a aᵀ / (N R); reduce G = Σ_{r, r'}
    GGN_δ[(·, r), (·, r')] (= the bias's GGN block) and A = (1/N) Σ_n ā ā ᵀ with ā the mean patch.
    """
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 3, 2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)).double()
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.randn(5, 2, 3, 3, dtype=torch.float64), torch.randint(0, 4, (5,))
    ref = copy.deepcopy(model)
    blocks = factors_after_one_step(model, loss_fn, x, y, kfac_approx=approx)
    patches = nn.functional.unfold(x, 2, padding=1).transpose(1, 2)  # (N, R, C·k·k)
    R = patches.shape[1]
    shifted = ShiftedConv(ref[0], ref[1:], (3, 4, 4))
    dense = ggn(shifted, nn.CrossEntropyLoss(), x, y, params=["delta"]).reshape(3, R, 3, R)
    if approx == "expand":
        A = torch.einsum("nri,nrj->ij", patches, patches) / (5 * R)
        G = torch.einsum("arbr->ab", dense)
    else:
        mean = patches.mean(1)
        A = mean.T @ mean / 5
        G = dense.sum(dim=(1, 3))
        torch.testing.assert_close(G, ggn(ref, nn.CrossEntropyLoss(), x, y, params=["0.bias"]))
    torch.testing.assert_close(blocks["0.weight"]["A"], A, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(blocks["0.weight"]["G"], G, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(blocks["0.bias"]["G"], G, rtol=1e-6, atol=1e-12)


def test_unit_wise_direction_equals_damped_dense_ggn_solve():
    """LayerNorm, exact GGN (rows independent): Δ(γ_i, β_i) = −(GGN_i + λI)⁻¹ g_i with GGN from curvlab.reference."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, 2)).double()
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.randn(9, 3, dtype=torch.float64), torch.randint(0, 2, (9,))
    ref = copy.deepcopy(model)
    lam = 0.05
    opt = curvlab.create("kfac", model, loss_fn, **{**EXACT, "lr": 1.0}, damping=lam)
    opt.step(curvlab.closure(model, loss_fn, x, y))
    H = ggn(ref, nn.CrossEntropyLoss(), x, y, params=["1.weight", "1.bias"])
    g = torch.cat([model[1].weight.grad, model[1].bias.grad])
    for i in range(4):
        idx = torch.tensor([i, 4 + i])
        want = -torch.linalg.solve(H[idx][:, idx] + lam * torch.eye(2, dtype=H.dtype), g[idx])
        got = torch.stack([model[1].weight[i] - ref[1].weight[i], model[1].bias[i] - ref[1].bias[i]])
        torch.testing.assert_close(got.detach(), want, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("heuristic", ["pi", "equal"])
def test_preconditioned_gradient_equals_dense_damped_solve(heuristic):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    lam = 0.05
    opt = curvlab.create("kfac", model, loss_fn, **{**EXACT, "lr": 1.0}, damping=lam, damping_heuristic=heuristic)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(curvlab.closure(model, loss_fn, x, y))
    blocks = opt.curv_state["blocks"]
    for i, name in enumerate(["0.weight", "0.bias", "2.weight", "2.bias"]):
        p = dict(model.named_parameters())[name]
        step = before[i] - p.detach()
        G = blocks[name]["G"]
        if name.endswith("weight"):
            A = blocks[name]["A"]
            if heuristic == "pi":
                pi = math.sqrt((torch.trace(A) / A.shape[0]) / (torch.trace(G) / G.shape[0]))
                la, lg = pi * math.sqrt(lam), math.sqrt(lam) / pi
            else:
                la = lg = math.sqrt(lam)
            dense = kron_dense(G + lg * torch.eye(G.shape[0], dtype=G.dtype), A + la * torch.eye(A.shape[0], dtype=A.dtype))
        else:
            dense = G + lam * torch.eye(G.shape[0], dtype=G.dtype)
        want = torch.linalg.solve(dense, p.grad.reshape(-1)).reshape(p.shape)
        torch.testing.assert_close(step, want, rtol=1e-8, atol=1e-12)


def test_kl_clip_bounds_the_predicted_change():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 2)).double()
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    opt = curvlab.create("kfac", model, loss_fn, **{**EXACT, "lr": 1.0, "kl_clip": 1e-6})
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(curvlab.closure(model, loss_fn, x, y))
    assert opt.stats["kl_clip_nu"] < 1
    # the step is s = lr·ν·v, so lr·ν·⟨s, g⟩ = lr²ν²⟨v, g⟩ must equal κ
    s_dot_g = sum(float(((b - p.detach()) * p.grad).sum()) for b, p in zip(before, model.parameters()))
    assert s_dot_g * opt.stats["kl_clip_nu"] == pytest.approx(1e-6, rel=1e-9)


BAD_LOSSES = [
    ("l1", nn.L1Loss(), "supports the losses MSELoss, CrossEntropyLoss, BCEWithLogitsLoss; got L1Loss"),
    ("none-reduction", nn.MSELoss(reduction="none"), "reduction"),
    ("ce-weight", nn.CrossEntropyLoss(weight=torch.ones(2)), "weight"),
    ("ce-smoothing", nn.CrossEntropyLoss(label_smoothing=0.1), "label_smoothing"),
    ("bce-pos-weight", nn.BCEWithLogitsLoss(pos_weight=torch.ones(2)), "pos_weight"),
    ("function", torch.nn.functional.mse_loss, "got function"),
]


@pytest.mark.parametrize("loss_fn,match", [b[1:] for b in BAD_LOSSES], ids=[b[0] for b in BAD_LOSSES])
def test_unsupported_loss_raises(loss_fn, match):
    with pytest.raises(ValueError, match=match):
        curvlab.create("kfac", nn.Sequential(nn.Linear(2, 2)), loss_fn)


def test_nan_factors_skip_step_and_keep_state():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(3, 2))
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    opt = curvlab.create("kfac", model, loss_fn, factor_every=1)
    opt.step(curvlab.closure(model, loss_fn, x, y))
    params, state = [p.detach().clone() for p in model.parameters()], copy.deepcopy(opt.curv_state)
    evaluate = opt._evaluate

    def poisoned(closure):
        evaluation = evaluate(closure)  # the estimates reach _update only through its return value
        factors = evaluation.data.estimates["0.weight"]
        factors["A"] = factors["A"] * math.nan
        return evaluation

    opt._evaluate = poisoned
    with pytest.warns(NonFiniteStepWarning, match="non-finite Kronecker factors"):
        opt.step(curvlab.closure(model, loss_fn, x, y))
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert torch.equal(state["blocks"]["0.weight"]["A"], opt.curv_state["blocks"]["0.weight"]["A"])
    assert opt.curv_state["step"] == state["step"]


def test_mc_sampling_uses_private_rng():
    """Sampling does not consume the global RNG and repeats from the same construction seed."""
    def run():
        torch.manual_seed(7)
        model = nn.Sequential(nn.Linear(3, 3))
        loss_fn = nn.CrossEntropyLoss()
        opt = curvlab.create("kfac", model, loss_fn)
        x, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
        rng = torch.get_rng_state()
        opt.step(curvlab.closure(model, loss_fn, x, y))
        assert torch.equal(rng, torch.get_rng_state())
        return opt.curv_state["blocks"]["0.weight"]["G"]

    assert torch.equal(run(), run())


def digits_problem():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    return X[:1024], torch.tensor(y[:1024])


def train(name, steps, **hp):
    X, y = digits_problem()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    loss_fn = nn.CrossEntropyLoss()
    opt = curvlab.create(name, model, loss_fn, **hp)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(X), (128,), generator=gen)
        opt.step(curvlab.closure(model, loss_fn, X[idx], y[idx]))
    with torch.no_grad():
        return float(loss_fn(model(X), y))


# Stated hparams: K-FAC defaults except lr (= SGD's tuned lr); SGD lr 0.1, momentum 0.9.
@pytest.mark.slow
def test_digits_mlp_kfac_beats_sgd():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kfac = train("kfac", 100, lr=0.1)
        sgd = train("sgd", 100, lr=0.1, momentum=0.9)
    assert kfac < sgd, (kfac, sgd)


def test_backpack_hooks_only_during_factor_passes():
    """No BackPACK hooks or stored inputs stay on the model; factors follow factor_every."""
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    opt = curvlab.create("kfac", model, loss_fn, factor_every=2, inverse_every=4)
    for _ in range(5):
        opt.step(curvlab.closure(model, loss_fn, x, y))
        for m in [*model.modules(), loss_fn]:
            assert not m._forward_hooks and not m._backward_hooks
            assert not hasattr(m, "input0") and not hasattr(m, "output")
    assert opt.curv_state["blocks"]["0.weight"]["count"] == 3  # steps 0, 2, 4


def test_user_extended_model_gives_same_factors():
    from backpack import extend

    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
    plain = factors_after_one_step(copy.deepcopy(model), nn.CrossEntropyLoss(), x, y)
    extended = factors_after_one_step(extend(model), extend(nn.CrossEntropyLoss()), x, y)
    for name, entry in plain.items():
        for key in ("A", "G"):
            if key in entry:
                assert torch.equal(entry[key], extended[name][key]), (name, key)


def test_non_finite_direction_skips_step():
    torch.manual_seed(10)
    model = nn.Sequential(nn.Linear(3, 2))
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    opt = curvlab.create("kfac", model, loss_fn, factor_every=10, inverse_every=10)
    opt.step(curvlab.closure(model, loss_fn, x, y))
    opt.curv_state["blocks"]["0.weight"]["A_inv"][0, 0] = math.inf
    params, step = [p.detach().clone() for p in model.parameters()], opt.curv_state["step"]
    with pytest.warns(NonFiniteStepWarning, match="non-finite preconditioned gradient"):
        opt.step(curvlab.closure(model, loss_fn, x, y))
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert opt.curv_state["step"] == step


# ------------------------------------------------------------------ case table
def covered_layers(case, model, x):
    """Linear/Conv2d layers whose weight has a Kronecker block, called once: ``{name: (module, input)}``."""
    kinds = dict(case.model.coverage)
    calls = module_calls(model, x)
    names = {id(p): n for n, p in model.named_parameters()}
    return {n: (m, calls[n][0][0]) for n, m in layers(model).items()
            if kinds.get(names.get(id(m.weight)), "").startswith("kronecker") and len(calls.get(n, ())) == 1}


@pytest.mark.parametrize("case", table())
def test_case_table_factors_match_reference(case):
    """Every row of curvlab.testing.cases against brute force (exact GGN factors).

    For every Kronecker-covered Linear/Conv2d called once: A is the input
    second moment over examples and positions (expand). For a Linear on 2-D
    inputs also: its bias's G is the exact GGN block (6 examples), and with
    one example G ⊗ A is the weight's exact GGN block. Frozen and fallback
    parameters get no block. (Other block types: tests/curvature.)
    """
    for batch in (6, 1):
        problem = case.instantiate(batch=batch)
        ref = snapshot(problem)

        def build(problem=problem):
            return curvlab.create("kfac", problem.model, problem.loss_fn, **EXACT)

        if refused(case, "kfac", build):
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FallbackWarning)
            opt = build()
        opt.step(curvlab.closure(problem.model, problem.loss_fn, problem.inputs, problem.targets))
        blocks = opt.curv_state["blocks"]
        for name, kind in case.model.coverage.items():
            if kind in ("frozen", "fallback-adam"):
                assert name not in blocks, name
        for lname, (m, a) in covered_layers(case, ref.model, ref.inputs).items():
            bias = m.bias if trainable(m.bias) else None
            entry = blocks[f"{lname}.weight"]
            torch.testing.assert_close(entry["A"], expand_moment(m, a, False), rtol=1e-10, atol=1e-12)
            if not isinstance(m, nn.Linear) or a.dim() != 2:
                continue
            if bias is not None and batch > 1:
                dense = ggn(ref.model, ref.loss_fn, ref.inputs, ref.targets, params=[f"{lname}.bias"])
                torch.testing.assert_close(blocks[f"{lname}.bias"]["G"], dense, rtol=1e-6, atol=1e-12)
            if batch == 1 and m.weight.numel() <= 1000:
                dense = ggn(ref.model, ref.loss_fn, ref.inputs, ref.targets, params=[f"{lname}.weight"])
                torch.testing.assert_close(kron_dense(entry["G"], entry["A"]), dense, rtol=1e-6,
                                           atol=1e-12)


@pytest.mark.parametrize("case", table())
def test_case_table_step_is_the_preconditioned_gradient(case):
    """One step (lr 1, no momentum): every block's Δθ = −its damped direction, fallback Δθ = Adam's
    first step −g/(|g| + ε), frozen parameters unchanged; the coverage table is the row's."""
    problem = case.instantiate()
    before = {n: p.detach().clone() for n, p in problem.model.named_parameters()}

    def build():
        return curvlab.create("kfac", problem.model, problem.loss_fn, **{**EXACT, "lr": 1.0},
                              damping=0.1)

    if refused(case, "kfac", build):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        opt = build()
    assert opt.coverage().kinds() == dict(case.model.coverage)
    opt.step(curvlab.closure(problem.model, problem.loss_fn, problem.inputs, problem.targets))
    state = opt.curv_state["blocks"]
    names = {id(p): n for n, p in problem.model.named_parameters()}
    want = {}
    for b in opt.blocks:
        for p, d in zip(b.params, opt.preconditioner.directions(state, b)):
            want[names[id(p)]] = -d
    for name, p in problem.model.named_parameters():
        kind = case.model.coverage[name]
        delta = (p - before[name]).detach()
        if kind == "frozen":
            assert torch.equal(delta, torch.zeros_like(delta)), name
        elif kind == "fallback-adam":
            torch.testing.assert_close(delta, -p.grad / (p.grad.abs() + 1e-8), rtol=1e-8, atol=1e-7)
        else:
            torch.testing.assert_close(delta, want[name], rtol=1e-10, atol=1e-13, msg=name)


@pytest.mark.parametrize("case", model_rows())
def test_case_table_trains_with_defaults(case):
    """20 steps at K-FAC's defaults: finite, decreasing loss; the coverage table of the row."""
    if case.refusal("kfac") is not None:
        return
    losses, opt = train_case(case, "kfac")
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], losses
    assert opt.coverage().kinds() == dict(case.model.coverage)

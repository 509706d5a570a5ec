"""K-FAC's standard damping ((G⊗A + λI)⁻¹ through the eigenbases) and the K-FAC/FOOF update cosine."""

import math

import pytest
import torch
from torch import nn

import curvlab
from curvlab.curvature.eigen_damping import damped_kron_solve, eigen_factor
from curvlab.curvature.kronecker import kron_dense

F64 = torch.float64
PLAIN = dict(lr=1.0, momentum=0.0, weight_decay=0.0, kl_clip=None, fisher_type="exact",
             factor_every=1, inverse_every=1)


def spd(n, gen, rank=None):
    X = torch.randn(n, rank or n + 2, generator=gen, dtype=F64)
    return X @ X.T / X.shape[1]


@pytest.mark.parametrize("right_diagonal", [False, True], ids=["dense", "diagonal-right"])
@pytest.mark.parametrize("rank", [None, 1], ids=["full-rank", "rank-1-left"])
def test_eigen_solve_equals_dense_solve(right_diagonal, rank):
    gen = torch.Generator().manual_seed(0)
    L = spd(3, gen, rank)
    R = torch.rand(4, generator=gen, dtype=F64) if right_diagonal else spd(4, gen)
    M = torch.randn(3, 4, generator=gen, dtype=F64)
    lam = 0.05
    dense = kron_dense(L, torch.diag(R) if right_diagonal else R) + lam * torch.eye(12, dtype=F64)
    want = torch.linalg.solve(dense, M.reshape(-1)).reshape(3, 4)
    got = damped_kron_solve(M, eigen_factor(L), eigen_factor(R), lam)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def one_step(model, loss_fn, x, y, **hp):
    before = [p.detach().clone() for p in model.parameters()]
    opt = curvlab.create("kfac", model, loss_fn, **{**PLAIN, **hp})
    opt.step(curvlab.closure(model, loss_fn, x, y))
    deltas = {n: (p - b).detach() for (n, p), b in zip(model.named_parameters(), before)}
    return opt, deltas


@pytest.mark.parametrize("lam", [1e-3, 0.1, 10.0])
def test_standard_damping_step_is_the_dense_damped_solve(lam):
    """Linear layers: Δ vec(W) = −(G⊗A + λI)⁻¹ vec(∇W), Δb = −(G + λI)⁻¹ ∇b, with the optimizer's factors."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(F64)
    x, y = torch.randn(7, 3, dtype=F64), torch.randint(0, 2, (7,))
    opt, delta = one_step(model, nn.CrossEntropyLoss(), x, y, damping=lam,
                          damping_heuristic="standard")
    blocks = opt.curv_state["blocks"]
    for layer in ("0", "2"):
        w, b = model.get_submodule(layer).weight, model.get_submodule(layer).bias
        G, A = blocks[f"{layer}.weight"]["G"], blocks[f"{layer}.weight"]["A"]
        dense = kron_dense(G, A) + lam * torch.eye(w.numel(), dtype=F64)
        want = -torch.linalg.solve(dense, w.grad.reshape(-1)).reshape(w.shape)
        torch.testing.assert_close(delta[f"{layer}.weight"], want, rtol=1e-9, atol=1e-12)
        Gb = blocks[f"{layer}.bias"]["G"]
        want_b = -torch.linalg.solve(Gb + lam * torch.eye(Gb.shape[0], dtype=F64), b.grad)
        torch.testing.assert_close(delta[f"{layer}.bias"], want_b, rtol=1e-9, atol=1e-12)


def test_standard_damping_embedding_block():
    """Embedding (A diagonal, A⊗G): Δ vec(E) = −(diag(A)⊗G + λI)⁻¹ vec(∇E)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Embedding(5, 3), nn.Flatten(), nn.Linear(6, 2)).to(F64)
    x, y = torch.randint(0, 5, (6, 2)), torch.randint(0, 2, (6,))
    lam = 0.1
    opt, delta = one_step(model, nn.CrossEntropyLoss(), x, y, damping=lam,
                          damping_heuristic="standard")
    entry = opt.curv_state["blocks"]["0.weight"]
    E = model[0].weight
    dense = kron_dense(torch.diag(entry["A"]), entry["G"]) + lam * torch.eye(E.numel(), dtype=F64)
    want = -torch.linalg.solve(dense, E.grad.reshape(-1)).reshape(E.shape)
    torch.testing.assert_close(delta["0.weight"], want, rtol=1e-9, atol=1e-12)


def test_standard_damping_survives_state_dict_round_trip():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 2)).to(F64)
    x, y = torch.randn(5, 3, dtype=F64), torch.randn(5, 2, dtype=F64)
    loss_fn = nn.MSELoss()
    opt = curvlab.create("kfac", model, loss_fn, damping_heuristic="standard", inverse_every=3)
    opt.step(curvlab.closure(model, loss_fn, x, y))
    twin = nn.Sequential(nn.Linear(3, 2)).to(F64)
    twin.load_state_dict(model.state_dict())
    other = curvlab.create("kfac", twin, loss_fn, damping_heuristic="standard", inverse_every=3)
    other.load_state_dict(opt.state_dict())
    for _ in range(2):
        opt.step(curvlab.closure(model, loss_fn, x, y))
        other.step(curvlab.closure(twin, loss_fn, x, y))
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def brute_force_cosine(opt, model, lam):
    """⟨U, F⟩_A / (‖U‖_A ‖F‖_A) over the Linear weights, U = K-FAC's direction, F = ∇W (A + λI)⁻¹."""
    dot = uu = ff = 0.0
    blocks = opt.curv_state["blocks"]
    for b in opt.blocks:
        if not b.name.endswith(".weight"):
            continue
        A = blocks[b.name]["A"]
        (U,) = opt.preconditioner.directions(blocks, b)
        F = b.params[0].grad @ torch.linalg.inv(A + lam * torch.eye(A.shape[0], dtype=F64))
        dot += float(torch.trace(U @ A @ F.T))
        uu += float(torch.trace(U @ A @ U.T))
        ff += float(torch.trace(F @ A @ F.T))
    return dot / math.sqrt(uu * ff)


@pytest.mark.parametrize("heuristic", ["pi", "standard"])
def test_update_cosine_matches_brute_force(heuristic):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 5, bias=False), nn.Tanh(), nn.Linear(5, 3, bias=False)).to(F64)
    x, y = torch.randn(9, 3, dtype=F64), torch.randint(0, 3, (9,))
    lam = 0.3
    loss_fn = nn.CrossEntropyLoss()
    opt = curvlab.create("kfac", model, loss_fn, **{**PLAIN, "lr": 0.0},
                         damping=lam, damping_heuristic=heuristic, diagnostics=True)
    opt.step(curvlab.closure(model, loss_fn, x, y))
    cos = opt.stats["update_cosine"]
    assert -1.0 <= cos <= 1.0
    assert cos == pytest.approx(brute_force_cosine(opt, model, lam), rel=1e-10)


def test_update_cosine_is_one_when_kfac_is_foof():
    """One Linear, MSE with one output: G is a scalar g, standard-damped K-FAC = ∇W (gA + λ)⁻¹ ∝ FOOF at λ/g."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 1, bias=False)).to(F64)
    x, y = torch.randn(16, 4, dtype=F64), torch.randn(16, 1, dtype=F64)
    loss_fn = nn.MSELoss()
    opt = curvlab.create("kfac", model, loss_fn, **{**PLAIN, "lr": 0.0}, damping=1e-8,
                         damping_heuristic="standard", diagnostics=True)
    opt.step(curvlab.closure(model, loss_fn, x, y))
    assert opt.stats["update_cosine"] == pytest.approx(1.0, abs=1e-9)


def test_diagnostics_off_records_nothing():
    model, loss_fn = nn.Sequential(nn.Linear(3, 2)), nn.MSELoss()
    opt = curvlab.create("kfac", model, loss_fn)
    opt.step(curvlab.closure(model, loss_fn, torch.randn(4, 3), torch.randn(4, 2)))
    assert "update_cosine" not in opt.stats

"""The shared preconditioner per block type: direction = dense solve with the damped block.

Factors come from the factor engine on small float64 models covering every
block type (Linear on 3-D inputs, Conv2d, Embedding, LayerNorm, RMSNorm,
BatchNorm with and without a bias); the dense damped block is built here
from those factors with ``torch.kron`` / ``torch.block_diag`` and the
damping split written out (π of a diagonal factor = its mean).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from curvlab.curvature.factor_blocks import capture_estimates, plan_blocks_for
from curvlab.curvature.hook_engine import HookEngine
from curvlab.curvature.kronecker_preconditioner import KroneckerPreconditioner

DT = torch.float64


class Tokens(nn.Module):
    """Embedding → LayerNorm → Linear on (N, T, ·) → RMSNorm (weight only) → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 5)
        self.rms = nn.RMSNorm(5)
        self.out = nn.Linear(5, 3)

    def forward(self, idx):
        h = torch.tanh(self.fc(self.ln(self.emb(idx))))
        return self.out(self.rms(h)).flatten(1)


class Images(nn.Module):
    """Conv2d → BatchNorm2d → ReLU → Conv2d (no bias) → BatchNorm2d (frozen bias) → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 2, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(2)
        self.c2 = nn.Conv2d(2, 2, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(2)
        self.bn2.bias.requires_grad_(False)
        self.head = nn.Linear(2 * 3 * 3, 3)

    def forward(self, x):
        h = torch.relu(self.bn1(self.c1(x)))
        return self.head(self.bn2(self.c2(h)).flatten(1))


MODELS = {
    "tokens": (Tokens, lambda: torch.randint(0, 7, (5, 3))),
    "images": (Images, lambda: torch.randn(5, 1, 5, 5, dtype=DT)),
}


def capture(model_name, approx, need_G, seed=0):
    torch.manual_seed(seed)
    build, inputs = MODELS[model_name]
    model = build().to(DT)
    x = inputs()
    loss_fn = nn.CrossEntropyLoss()
    engine = HookEngine(model, loss_fn if need_G else None, seed=0,
                        bias_layout="separate" if need_G else "homogeneous")
    with engine.capture(fisher_type="exact", kfac_approx=approx, need_G=need_G) as cap:
        out = model(x)
        y = torch.randint(0, 3, (out.shape[0],))
        loss_fn(out, y).backward()
    blocks = plan_blocks_for(engine.plan, need_G=need_G)
    return model, blocks, capture_estimates(engine.plan, cap.factors, need_G=need_G)


def mean_trace(F):
    return float(F.mean()) if F.dim() == 1 else float(torch.trace(F)) / F.shape[0]


def damped(F, lam):
    if F.dim() == 1:
        return torch.diag(F + lam)
    return F + lam * torch.eye(F.shape[0], dtype=F.dtype)


def dense_damped_block(block, entry, lam, heuristic, relative):
    """The damped block over the row-major vec of the block's matrix view, built from scratch."""
    if block.view == "unit":
        U = entry["U"]
        if relative:
            lam = lam * float(U.diagonal(dim1=1, dim2=2).mean())
        return torch.block_diag(*[u + lam * torch.eye(u.shape[0], dtype=DT) for u in U])
    A, G = entry.get("A"), entry.get("G")
    if relative:
        lam = lam * (mean_trace(A) if A is not None else 1.0) * (mean_trace(G) if G is not None else 1.0)
    if A is None:
        return damped(G, lam)
    if G is None:  # FOOF: G = I, all of λ on A
        out = block.params[0].shape[1] if block.view == "in_out" else block.params[0].shape[0]
        eye = torch.eye(out, dtype=DT)
        return torch.kron(damped(A, lam), eye) if block.view == "in_out" else torch.kron(eye, damped(A, lam))
    pi = math.sqrt(mean_trace(A) / mean_trace(G)) if heuristic == "pi" else 1.0
    la, lg = pi * math.sqrt(lam), math.sqrt(lam) / pi
    if block.view == "in_out":
        return torch.kron(damped(A, la), damped(G, lg))
    return torch.kron(damped(G, lg), damped(A, la))


def grad_vector(block):
    grads = [p.grad for p in block.params]
    if block.view == "unit":
        return torch.stack([g.reshape(-1) for g in grads], 1).reshape(-1)
    rows = grads[0].shape[0]
    return torch.cat([g.reshape(rows, -1) for g in grads], 1).reshape(-1)


CASES = [
    pytest.param(m, a, g, h, r, id=f"{m}-{a}-{'kfac' if g else 'foof'}-{h}{'-relative' if r else ''}")
    for m in MODELS for a in ("expand", "reduce") for g in (True, False)
    for h in (("pi", "equal") if g else ("pi",)) for r in ((False,) if g else (False, True))
]


@pytest.mark.parametrize("model_name, approx, need_G, heuristic, relative", CASES)
def test_direction_equals_dense_damped_solve(model_name, approx, need_G, heuristic, relative):
    model, blocks, estimates = capture(model_name, approx, need_G)
    pre = KroneckerPreconditioner(blocks, heuristic=heuristic, relative_damping=relative)
    state = pre.accumulate({}, estimates, 0.95)
    lam = 0.07
    state.update(pre.invert(state, {b.name: lam for b in blocks}))
    views = {b.view for b in blocks}
    assert views == {"out_in", "unit"} | ({"in_out"} if model_name == "tokens" else set())
    for block in blocks:
        dense = dense_damped_block(block, state[block.name], lam, heuristic, relative)
        want = torch.linalg.solve(dense, grad_vector(block))
        got = torch.cat([d.reshape(d.shape[0], -1) if block.view != "unit" else d.reshape(-1, 1)
                         for d in pre.directions(state, block)], 1).reshape(-1)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, msg=block.name)


def test_every_block_type_is_exercised():
    kinds = set()
    for model_name in MODELS:
        _, blocks, estimates = capture(model_name, "expand", True)
        for b in blocks:
            est = estimates[b.name]
            rank = (est["A"] if "A" in est else est["G"] if "G" in est else est["U"][0]).dim()
            kinds.add((b.view, tuple(sorted(est)), rank, len(b.params)))
    assert ("in_out", ("A", "G"), 1, 1) in kinds  # Embedding, diagonal A
    assert ("unit", ("U",), 2, 2) in kinds and ("unit", ("U",), 2, 1) in kinds  # γ, β / γ only
    assert ("out_in", ("A", "G"), 2, 1) in kinds and ("out_in", ("G",), 2, 1) in kinds


def test_non_finite_or_failed_inverse_returns_none():
    _, blocks, estimates = capture("tokens", "expand", True)
    pre = KroneckerPreconditioner(blocks)
    state = pre.accumulate({}, estimates, 0.95)
    bad = {k: dict(v) for k, v in state.items()}
    ln = next(b.name for b in blocks if b.view == "unit")
    bad[ln]["U"] = bad[ln]["U"] * math.nan
    assert pre.invert(bad, {b.name: 0.1 for b in blocks}) is None
    poisoned = {k: {f: t * math.inf for f, t in v.items()} for k, v in estimates.items()}
    assert pre.accumulate({}, poisoned, 0.95) is None

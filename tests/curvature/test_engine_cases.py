"""Case table: modern architectures × losses × reductions through the factor interface.

Every case: the engine ``make_engine`` picks, the coverage table (expected
kinds as data), and one MC and one exact capture whose factors are finite,
shaped as the parameters they cover and positive semi-definite.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from factor_models import AttentionClassifier, ResBlockBN, TinyGPT
from torch import nn

from curvlab.curvature.factor_engine import make_engine

DT = torch.float64
K, U, D, X, F = "kronecker-expand", "unit-wise", "diagonal", "uncovered", "frozen"


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[], torch.Tensor]
    outputs: int  # logits per row of the loss input
    engine: str
    kinds: dict[str, str]  # expected coverage kind per parameter (all parameters)


def _mlp(inplace=False, frozen_bias=False):
    def build():
        net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(inplace=inplace), nn.Linear(5, 3))
        if frozen_bias:
            net[0].bias.requires_grad_(False)
        return net

    return build


def _gpt_kinds(tied: bool) -> dict[str, str]:
    kinds = {
        "wte.weight": X if tied else K, "wpe": X,
        "block.ln_1.weight": U, "block.ln_1.bias": U,
        "block.attn.c_attn.weight": K, "block.attn.c_attn.bias": K,
        "block.attn.c_proj.weight": K, "block.attn.c_proj.bias": K,
        "block.ln_2.weight": U, "block.ln_2.bias": U,
        "block.mlp.0.weight": K, "block.mlp.0.bias": K, "block.mlp.2.weight": K, "block.mlp.2.bias": K,
        "ln_f.weight": U, "ln_f.bias": U,
    }
    if not tied:
        kinds["lm_head.weight"] = K
    return kinds


CASES = [
    Case("mlp", _mlp(), lambda: torch.randn(6, 4), 3, "backpack",
         {"0.weight": K, "0.bias": K, "2.weight": K, "2.bias": K}),
    Case("cnn", lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3)),
         lambda: torch.randn(6, 1, 4, 4), 3, "hooks",
         {"0.weight": K, "0.bias": K, "3.weight": K, "3.bias": K}),
    Case("inplace-relu", _mlp(inplace=True), lambda: torch.randn(6, 4), 3, "hooks",
         {"0.weight": K, "0.bias": K, "2.weight": K, "2.bias": K}),
    Case("frozen-bias", _mlp(frozen_bias=True), lambda: torch.randn(6, 4), 3, "backpack",
         {"0.weight": K, "0.bias": F, "2.weight": K, "2.bias": K}),
    Case("resnet-bn", ResBlockBN, lambda: torch.randn(6, 1, 4, 4), 3, "hooks",
         {"stem.weight": K, "conv1.weight": K, "bn1.weight": U, "bn1.bias": U, "conv2.weight": K,
          "bn2.weight": U, "bn2.bias": U, "head.weight": K, "head.bias": K}),
    Case("gpt", TinyGPT, lambda: torch.randint(0, 11, (3, 5)), 11, "hooks", _gpt_kinds(False)),
    Case("gpt-tied", lambda: TinyGPT(tied=True), lambda: torch.randint(0, 11, (3, 5)), 11, "hooks",
         _gpt_kinds(True)),
    Case("mha", AttentionClassifier, lambda: torch.randn(4, 5, 3), 3, "hooks",
         {"embed.weight": K, "embed.bias": K, "mha.in_proj_weight": X, "mha.in_proj_bias": X,
          "mha.out_proj.weight": X, "mha.out_proj.bias": X, "head.weight": K, "head.bias": K}),
]
LOSSES = {"mse": nn.MSELoss, "ce": nn.CrossEntropyLoss, "bce": nn.BCEWithLogitsLoss}
TABLE = [
    pytest.param(case, loss, red, id=f"{case.name}-{loss}-{red}")
    for case in CASES
    for loss in (("ce",) if case.name.startswith("gpt") else ("mse", "ce", "bce"))
    for red in ("mean", "sum")
]


def _targets(loss: str, out: torch.Tensor) -> torch.Tensor:
    if loss == "ce":
        return torch.randint(0, out.shape[1], (out.shape[0],))
    return torch.rand_like(out) if loss == "bce" else torch.randn_like(out)


@pytest.mark.parametrize("case, loss, reduction", TABLE)
def test_case(case: Case, loss: str, reduction: str):
    torch.manual_seed(0)
    model = case.build().to(DT)
    x = case.inputs()
    x = x.to(DT) if x.is_floating_point() else x
    loss_fn = LOSSES[loss](reduction=reduction)
    engine = make_engine(model, loss_fn, seed=0)
    assert engine.name == case.engine
    rows = engine.coverage()
    assert {r.name: r.kind for r in rows} == case.kinds
    assert all(r.reason for r in rows if r.kind == "uncovered")
    y = _targets(loss, model(x))
    params = dict(model.named_parameters())
    for fisher_type in ("mc", "exact"):
        with engine.capture(fisher_type=fisher_type) as cap:
            model.zero_grad()
            loss_fn(model(x), y).backward()
        covered = {r.block for r in rows if r.block is not None}
        assert set(cap.factors) == covered
        for f in cap.factors.values():
            p = params[f.params[0]]
            if f.unit is not None:
                assert f.unit.shape == (p.numel(), len(f.params), len(f.params))
                assert torch.isfinite(f.unit).all() and (torch.linalg.eigvalsh(f.unit) > -1e-10).all()
                continue
            out = p.shape[1] if f.weight_view == "in_out" else p.shape[0]
            assert f.G.shape == (out, out)
            for m in (f.A, f.G):
                if m is None or m.dim() == 1:
                    continue
                assert torch.isfinite(m).all() and torch.allclose(m, m.T)
                assert torch.linalg.eigvalsh(m).min() > -1e-10 * max(1.0, float(m.abs().max()))
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

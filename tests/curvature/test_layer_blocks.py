"""Embedding, norm-layer, shared-weight, in-place and frozen-parameter blocks of the hook engine."""

from __future__ import annotations

import pytest
import torch
from factor_models import AttentionClassifier, TinyGPT
from torch import nn

from curvlab import reference as ref
from curvlab.curvature.block_plan import plan_blocks
from curvlab.curvature.hook_engine import HookEngine

DT = torch.float64


class MeanPool(nn.Module):
    def forward(self, x):
        return x.mean(dim=1)


def capture(model, loss_fn, x, y, **options):
    engine = HookEngine(model, loss_fn, seed=0, bias_layout=options.pop("bias_layout", "separate"))
    with engine.capture(**{"fisher_type": "exact", **options}) as cap:
        model.zero_grad()
        loss_fn(model(x), y).backward()
    return cap.factors


def param_index(model, name):
    layout = {p.name: p.slice for p in ref.param_layout(model)}
    return torch.arange(layout[name].start, layout[name].stop)


# ----------------------------------------------------------------- Embedding
@pytest.mark.parametrize("padding_idx", [None, 0], ids=["no-pad", "pad0"])
@pytest.mark.parametrize("pool, approx", [(False, "expand"), (True, "reduce")], ids=["per-token-expand", "pooled-reduce"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_embedding_exact_regime_equals_dense_ggn(padding_idx, pool, approx, reduction):
    torch.manual_seed(0)
    layers = [nn.Embedding(6, 3, padding_idx=padding_idx), nn.Linear(3, 2)]
    if pool:
        layers.insert(1, MeanPool())
    model = nn.Sequential(*layers).to(DT)
    idx = torch.tensor([[0, 1, 1, 4], [2, 0, 5, 5], [3, 3, 3, 1]])
    y = torch.randn(3, 2, dtype=DT) if pool else torch.randn(3, 4, 2, dtype=DT)
    loss_fn = nn.MSELoss(reduction=reduction)
    f = capture(model, loss_fn, idx, y, kfac_approx=approx)["0"]
    assert f.weight_view == "in_out" and (f.A.dim() == 1) == (approx == "expand")
    block = ref.layer_block(ref.ggn(model, loss_fn, idx, y), model, "0")
    torch.testing.assert_close(f.dense(), block, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------- norm layers
def unit_mask(units: int, k: int) -> torch.Tensor:
    eye = torch.eye(units, dtype=torch.bool)
    return eye.repeat(k, k)


NORMS = [
    ("layernorm", lambda: nn.LayerNorm(4), "seq"),
    ("layernorm-nobias", lambda: nn.LayerNorm(4, bias=False), "seq"),
    ("layernorm-2d-shape", lambda: nn.LayerNorm((2, 4)), "seq2"),
    ("rmsnorm", lambda: nn.RMSNorm(4), "seq"),
    ("batchnorm1d", lambda: nn.BatchNorm1d(4), "flat"),
    ("batchnorm1d-seq", lambda: nn.BatchNorm1d(4), "chan-seq"),
    ("batchnorm2d", lambda: nn.BatchNorm2d(4), "image"),
]


def norm_model(norm: nn.Module, layout: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if layout == "seq":
        model, x = nn.Sequential(nn.Linear(3, 4), norm, nn.Tanh(), nn.Linear(4, 3)), torch.randn(5, 3, 3)
    elif layout == "seq2":
        model = nn.Sequential(nn.Linear(3, 4), norm, nn.Tanh(), nn.Flatten(2), nn.Linear(8, 3))
        x = torch.randn(5, 3, 2, 3)
    elif layout == "flat":
        model, x = nn.Sequential(nn.Linear(3, 4), norm, nn.Tanh(), nn.Linear(4, 3)), torch.randn(5, 3)
    elif layout == "chan-seq":
        model = nn.Sequential(nn.Conv1d(3, 4, 1), norm, nn.Tanh(), nn.Flatten(), nn.Linear(12, 3))
        x = torch.randn(5, 3, 3)
    else:
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), norm, nn.Tanh(), nn.Flatten(), nn.Linear(36, 3))
        x = torch.randn(5, 1, 3, 3)
    with torch.no_grad():  # non-trivial affine parameters and running statistics
        for p in norm.parameters():
            p.add_(0.3 * torch.randn_like(p))
        if isinstance(norm, nn.modules.batchnorm._BatchNorm):
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
    model = model.to(DT).eval()  # the dense oracle needs BatchNorm in eval mode
    return model, x.to(DT)


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("name, make, layout", NORMS, ids=[n[0] for n in NORMS])
def test_norm_unit_blocks_equal_dense_ggn_unit_blocks(name, make, layout, loss):
    model, x = norm_model(make(), layout)
    out = model(x)
    torch.manual_seed(3)
    if loss == "ce":
        loss_fn = nn.CrossEntropyLoss()
        if out.dim() == 3:  # (B, T, C) → class dim 1
            model = nn.Sequential(model, Transpose())
            out = out.transpose(1, 2)
        y = torch.randint(0, out.shape[1], out.shape[:1] + out.shape[2:])
    else:
        loss_fn, y = nn.MSELoss(reduction="sum"), torch.randn_like(out)
    norm_name = "1" if loss == "mse" or out.dim() == 2 and not isinstance(model[0], nn.Sequential) else "0.1"
    factors = capture(model, loss_fn, x, y)
    f = factors[norm_name]
    k = len(f.params)
    assert f.kind == ("unit-wise" if k == 2 else "diagonal")
    idx = torch.cat([param_index(model, p) for p in f.params])
    block = ref.ggn(model, loss_fn, x, y)[idx][:, idx]
    units = f.unit.shape[0]
    torch.testing.assert_close(f.dense(), block * unit_mask(units, k), rtol=1e-10, atol=1e-12)
    assert (block * ~unit_mask(units, k)).abs().max() > 1e-6  # the dropped entries are not zero


class Transpose(nn.Module):
    def forward(self, x):
        return x.transpose(1, 2)


def test_batchnorm_train_mode_uses_batch_statistics():
    """In training mode x̂ uses the batch statistics, as the layer does (checked on the affine output)."""
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3).to(DT)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
    model = nn.Sequential(nn.Linear(2, 3), bn, nn.Linear(3, 1)).to(DT)
    x, y = torch.randn(8, 2, dtype=DT), torch.randn(8, 1, dtype=DT)
    engine = HookEngine(model, nn.MSELoss())
    seen = {}
    model[1].register_forward_hook(lambda m, a, o: seen.setdefault("z", o.detach()))
    with engine.capture(fisher_type="exact"):
        engine.loss_fn(model(x), y).backward()
    from curvlab.curvature.unit_blocks import normalized_input

    bn.train()
    xh = normalized_input(bn, model[0](x))
    torch.testing.assert_close(xh[:, 0] * bn.weight + bn.bias, seen["z"])


# ------------------------------------------------------------ shared weights
class TwoCalls(nn.Module):
    """One Linear called on two inputs (weight sharing across calls), a second layer per call."""

    def __init__(self, second: nn.Linear | None = None) -> None:
        super().__init__()
        self.shared = nn.Linear(3, 4)
        self.twin = second  # a second module holding the same Parameters, or None
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        other = self.twin if self.twin is not None else self.shared
        return torch.stack([self.head(self.shared(x[:, 0])), self.head(other(x[:, 1]))], dim=1)


@pytest.mark.parametrize("how", ["module-called-twice", "two-modules-one-parameter"])
@pytest.mark.parametrize("layout", ["separate", "homogeneous"])
def test_shared_weight_sum_over_uses_is_exact_for_deep_linear(how, layout):
    """Correct = expand over the union of the uses' positions; exact for a deep linear net."""
    torch.manual_seed(0)
    model = TwoCalls()
    if how == "two-modules-one-parameter":
        twin = nn.Linear(3, 4)
        twin.weight, twin.bias = model.shared.weight, model.shared.bias
        model.twin = twin
    model = model.to(DT)
    plan = plan_blocks(model)
    assert len(plan.groups["shared"].modules) == (2 if how.startswith("two") else 1)
    x, y = torch.randn(5, 2, 3, dtype=DT), torch.randn(5, 2, 2, dtype=DT)
    loss_fn = nn.MSELoss(reduction="sum")
    f = capture(model, loss_fn, x, y, bias_layout=layout)["shared"]
    assert f.positions == 2.0
    ggn = ref.ggn(model, loss_fn, x, y)
    block = ref.layer_block(ggn, model, "shared", bias="folded" if layout == "homogeneous" else "separate")
    if layout == "separate":
        block = torch.block_diag(block[:12, :12], block[12:, 12:])
    torch.testing.assert_close(f.dense(), block, rtol=1e-10, atol=1e-12)


def test_tied_embedding_and_lm_head_are_uncovered_naming_both_uses():
    model = TinyGPT(tied=True)
    rows = {r.name: r for r in plan_blocks(model).rows}
    row = rows["wte.weight"]
    assert row.kind == "uncovered"
    assert "Embedding.weight at model.wte" in row.reason and "Linear.weight at model.lm_head" in row.reason
    assert row.uses == ("model.wte", "model.lm_head")
    assert "lm_head.weight" not in rows  # one Parameter, one row


# --------------------------------------------------------- in-place, frozen
@pytest.mark.parametrize("fisher_type", ["exact", "mc", "empirical"])
@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_inplace_activation_gives_the_out_of_place_factors(fisher_type, approx):
    def build(inplace):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Linear(3, 4), nn.ReLU(inplace=inplace), nn.LayerNorm(4), nn.ReLU(inplace=inplace),
            nn.Linear(4, 3),
        ).to(DT)

    x, y = torch.randn(6, 2, 3, dtype=DT), torch.randint(0, 3, (6, 2))
    loss_fn = nn.CrossEntropyLoss()
    results = []
    for inplace in (False, True):
        model = build(inplace)
        wrapped = nn.Sequential(model, Transpose())
        results.append(capture(wrapped, loss_fn, x, y, fisher_type=fisher_type, kfac_approx=approx))
    a, b = results
    for name in a:
        for field in ("A", "G", "unit"):
            if getattr(a[name], field) is not None:
                assert torch.equal(getattr(a[name], field), getattr(b[name], field)), (name, field)


def test_frozen_parameters_are_ignored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2), nn.Linear(2, 2)).to(DT)
    model[0].bias.requires_grad_(False)
    model[2].weight.requires_grad_(False)
    for p in model[3].parameters():
        p.requires_grad_(False)
    kinds = {r.name: r.kind for r in plan_blocks(model).rows}
    assert kinds == {
        "0.weight": "kronecker-expand", "0.bias": "frozen", "2.weight": "frozen",
        "2.bias": "kronecker-expand", "3.weight": "frozen", "3.bias": "frozen",
    }
    x, y = torch.randn(5, 3, dtype=DT), torch.randn(5, 2, dtype=DT)
    loss_fn = nn.MSELoss()
    for layout in ("separate", "homogeneous"):
        f = capture(model, loss_fn, x, y, bias_layout=layout)
        assert set(f) == {"0", "2"}
        assert f["0"].params == ("0.weight",) and f["0"].A.shape == (3, 3) and not f["0"].homogeneous
        assert f["2"].params == ("2.bias",)
        block = ref.layer_block(ref.ggn(model, loss_fn, x, y), model, "2")
        torch.testing.assert_close(f["2"].dense(), block, rtol=1e-10, atol=1e-12)  # a bias is exact


def test_multihead_attention_is_uncovered_and_reported():
    model = AttentionClassifier().to(DT)
    rows = {r.name: r for r in plan_blocks(model).rows}
    for name in ("mha.in_proj_weight", "mha.in_proj_bias", "mha.out_proj.weight", "mha.out_proj.bias"):
        assert rows[name].kind == "uncovered", name
        assert "MultiheadAttention" in rows[name].reason
    assert rows["embed.weight"].kind == rows["head.weight"].kind == "kronecker-expand"
    x, y = torch.randn(4, 5, 3, dtype=DT), torch.randint(0, 3, (4,))
    factors = capture(model, nn.CrossEntropyLoss(), x, y)
    assert set(factors) == {"embed", "head"}

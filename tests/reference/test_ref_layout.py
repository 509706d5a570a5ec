"""Flat layout, blocks, and the G ⊗ A structure of exact single-sample GGN blocks."""

import pytest
import torch
from torch import nn

from curvlab import reference as ref


def _mlp(seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4, bias=bias), nn.Tanh(), nn.Linear(4, 2, bias=bias))


def test_layout_order_and_row_major():
    net = _mlp()
    lay = ref.param_layout(net)
    assert [p.name for p in lay] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [(p.slice.start, p.slice.stop) for p in lay] == [(0, 12), (12, 16), (16, 24), (24, 26)]
    flat = ref.flatten_params(net, lay)
    w = net[0].weight
    for o in range(4):
        for i in range(3):
            assert flat[o * 3 + i] == w[o, i]
    back = ref.unflatten(flat, lay)
    for name, p in net.named_parameters():
        assert torch.equal(back[name], p.detach())


def test_subset_layout_follows_model_order():
    lay = ref.param_layout(_mlp(), ["2.bias", "0.bias"])
    assert [(p.name, p.slice.start, p.slice.stop) for p in lay] == [("0.bias", 0, 4), ("2.bias", 4, 6)]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ref.param_layout(_mlp(), ["nope"]), "unknown"),
        (lambda: ref.param_layout(_mlp(), ["0.bias", "0.bias"]), "distinct"),
        (lambda: ref.unflatten(torch.zeros(5), ref.param_layout(_mlp())), "length 26"),
        (lambda: ref.block(torch.zeros(26, 26), ref.param_layout(_mlp()), "x"), "not in the layout"),
        (lambda: ref.block(torch.zeros(3, 3), ref.param_layout(_mlp()), "0.bias"), "26×26"),
        (lambda: ref.layer_block(torch.zeros(26, 26), _mlp(), "9"), "not a module"),
        (lambda: ref.layer_block(torch.zeros(26, 26), _mlp(), "0", bias="x"), "bias must be"),
        (lambda: ref.layer_block(torch.zeros(20, 20), _mlp(bias=False), "0", bias="folded"), "folded"),
    ],
    ids=["unknown-name", "repeated-name", "unflatten-length", "block-name", "block-shape",
         "layer-unknown", "layer-bias-mode", "folded-without-bias"],
)
def test_layout_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_block_and_layer_block_agree():
    net = _mlp()
    lay = ref.param_layout(net)
    m = torch.arange(26.0 * 26).view(26, 26)
    assert torch.equal(ref.block(m, lay, "2.weight", "0.bias"), m[16:24, 12:16])
    assert torch.equal(ref.layer_block(m, net, "2"), m[16:26, 16:26])
    folded = ref.layer_block(m, net, "2", bias="folded")
    idx = [16, 17, 18, 19, 24, 20, 21, 22, 23, 25]
    assert torch.equal(folded, m[idx][:, idx])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_single_sample_mse_ggn_blocks_are_kronecker(reduction):
    """Batch size 1: every Linear block of the GGN is exactly G ⊗ Ā (row-major, bias folded)."""
    net = _mlp(seed=3).double()
    torch.manual_seed(4)
    x, y = torch.randn(1, 3, dtype=torch.float64), torch.randn(1, 2, dtype=torch.float64)
    ggn = ref.ggn(net, nn.MSELoss(reduction=reduction), x, y)
    h_out = (2.0 / 2 if reduction == "mean" else 2.0) * torch.eye(2, dtype=torch.float64)
    # last layer: input a = tanh(s), output Jacobian = I
    s = net[0](x)[0]
    a2 = torch.cat([torch.tanh(s), torch.ones(1, dtype=torch.float64)])
    expected2 = torch.kron(h_out, torch.outer(a2, a2))
    # first layer: B = ∂f/∂s = W2 diag(1 − tanh² s), G = Bᵀ H B
    b = net[2].weight.detach() @ torch.diag(1 - torch.tanh(s) ** 2)
    a1 = torch.cat([x[0], torch.ones(1, dtype=torch.float64)])
    expected1 = torch.kron(b.T @ h_out @ b, torch.outer(a1, a1))
    torch.testing.assert_close(ref.layer_block(ggn, net, "2", bias="folded"), expected2, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(ref.layer_block(ggn, net, "0", bias="folded"), expected1.detach(), rtol=1e-12, atol=1e-13)
    # weight-only block: G ⊗ A with A = a aᵀ (no bias entry)
    lay = ref.param_layout(net)
    torch.testing.assert_close(
        ref.block(ggn, lay, "2.weight"), torch.kron(h_out, torch.outer(a2[:-1], a2[:-1])), rtol=1e-12, atol=1e-13
    )


def test_conv_folded_block_is_kronecker_with_unfold_order():
    """Conv2d whose kernel covers the input (one output position), N = 1: block = G ⊗ ããᵀ, ã = [unfold(x); 1]."""
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(2, 3, kernel_size=2), nn.Flatten()).double()
    x, y = torch.randn(1, 2, 2, 2, dtype=torch.float64), torch.randn(1, 3, dtype=torch.float64)
    idx = ref.layer_indices(net, "0", bias="folded")
    assert idx.tolist() == [*range(0, 8), 24, *range(8, 16), 25, *range(16, 24), 26]
    ggn = ref.ggn(net, nn.MSELoss(reduction="sum"), x, y)
    a = torch.cat([nn.functional.unfold(x, 2)[0, :, 0], torch.ones(1, dtype=torch.float64)])
    expected = torch.kron(2 * torch.eye(3, dtype=torch.float64), torch.outer(a, a))
    torch.testing.assert_close(ref.layer_block(ggn, net, "0", bias="folded"), expected, rtol=1e-12, atol=1e-13)

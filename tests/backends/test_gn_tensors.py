"""GroupedNewton's partition tensors equal the dense float64 oracles of curvlab.reference."""

import pytest
import torch
from torch import nn

from curvlab import reference as ref
from curvlab_plugins.groupednewton.partition import build_partition
from curvlab_plugins.groupednewton.tensors import partition_tensors


def _mlp(act):
    return nn.Sequential(nn.Linear(3, 4), act, nn.Linear(4, 2))


def _targets(kind, n, gen):
    if kind == "ce":
        return torch.randint(0, 2, (n,), generator=gen)
    return torch.randn(n, 2, generator=gen, dtype=torch.float64)


CASES = [  # id, model factory, loss, target kind, partition
    ("tanh-mse-tensor", lambda: _mlp(nn.Tanh()), nn.MSELoss(), "mse", "tensor"),
    ("tanh-ce-tensor", lambda: _mlp(nn.Tanh()), nn.CrossEntropyLoss(), "ce", "tensor"),
    ("sigmoid-ce-layer", lambda: _mlp(nn.Sigmoid()), nn.CrossEntropyLoss(), "ce", "layer"),
    ("tanh-mse-weight-bias", lambda: _mlp(nn.Tanh()), nn.MSELoss(), "mse", "weight-bias"),
    ("tanh-ce-trivial", lambda: _mlp(nn.Tanh()), nn.CrossEntropyLoss(), "ce", "trivial"),
    ("linear-mse-tensor", lambda: nn.Linear(3, 2), nn.MSELoss(), "mse", "tensor"),
]


def _setup(factory, loss_fn, kind, partition, seed=0):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = factory().double()
    x = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    y = _targets(kind, 6, gen)
    params = list(model.parameters())
    dirs = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
    subsets = build_partition(partition, params, model=model)
    return model, x, y, params, dirs, subsets


def _oracle(model, loss_fn, x, y, dirs, subsets):
    layout = ref.param_layout(model)
    u = torch.cat([d.reshape(-1) for d in dirs])
    names = [n for n, _ in model.named_parameters()]
    groups = [[names[i] for i in idx] for _, idx in subsets]
    pieces = ref.split_direction(u, layout, groups)
    g, h, d = ref.partition_tensors(model, loss_fn, x, y, directions=pieces)
    U = torch.stack(pieces, dim=1)
    return g, h, d, U


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("full", [False, True], ids=["diag", "full"])
def test_tensors_match_dense_oracle(case, full):
    _, factory, loss_fn, kind, partition = case
    model, x, y, params, dirs, subsets = _setup(factory, loss_fn, kind, partition)
    loss = loss_fn(model(x), y)
    got = partition_tensors(loss, params, dirs, [idx for _, idx in subsets], order=3, full=full)
    g, h, d, U = _oracle(model, loss_fn, x, y, dirs, subsets)
    torch.testing.assert_close(got.gbar, g, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(got.hbar, h, rtol=1e-10, atol=1e-13)
    # H̄ = Uᵀ H U with the dense Hessian as a second, independent oracle.
    torch.testing.assert_close(got.hbar, U.T @ ref.hessian(model, loss_fn, x, y) @ U,
                               rtol=1e-10, atol=1e-13)
    expected_d = d if full else torch.diagonal(torch.diagonal(d, dim1=0, dim2=1), dim1=0, dim2=1)
    torch.testing.assert_close(got.d, expected_d, rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(got.d_diag, torch.stack([d[i, i, i] for i in range(len(subsets))]),
                               rtol=1e-9, atol=1e-13)


def test_order2_has_no_third_tensor():
    model, x, y, params, dirs, subsets = _setup(CASES[0][1], nn.MSELoss(), "mse", "tensor")
    got = partition_tensors(nn.MSELoss()(model(x), y), params, dirs,
                            [idx for _, idx in subsets], order=2)
    assert got.d is None and got.d_diag is None
    assert got.hbar.shape == (4, 4)


def test_mse_linear_last_layer_has_exactly_zero_third_derivative():
    model, x, y, params, dirs, subsets = _setup(CASES[0][1], nn.MSELoss(), "mse", "tensor")
    got = partition_tensors(nn.MSELoss()(model(x), y), params, dirs, [idx for _, idx in subsets])
    assert got.d[2].item() == 0.0 and got.d[3].item() == 0.0  # last Linear: weight, bias
    assert got.d[0].item() != 0.0


def test_quadratic_loss_without_graph_gives_zero_d():
    # Exactly quadratic: H̄ carries no autograd graph; differentiating it must not raise.
    w = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    a = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    loss = 0.5 * w @ a @ w
    u = [torch.tensor([1.0, 1.0], dtype=torch.float64)]
    for full in (False, True):
        got = partition_tensors(loss, [w], u, [[0]], full=full)
        assert got.hbar.item() == pytest.approx(7.0)
        assert torch.count_nonzero(got.d) == 0


def test_zero_direction_gives_zero_tensors():
    model, x, y, params, dirs, subsets = _setup(CASES[1][1], nn.CrossEntropyLoss(), "ce", "tensor")
    zeros = [torch.zeros_like(p) for p in params]
    got = partition_tensors(nn.CrossEntropyLoss()(model(x), y), params, zeros,
                            [idx for _, idx in subsets])
    for t in (got.gbar, got.hbar, got.d):
        assert torch.count_nonzero(t) == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [({"order": 4}, "order"), ({"loss_shape": (2,)}, "scalar"), ({"drop": True}, "lengths")],
    ids=["bad-order", "non-scalar-loss", "length-mismatch"],
)
def test_invalid_arguments_raise(kwargs, match):
    w = torch.ones(2, requires_grad=True)
    loss = (w**2).sum() if "loss_shape" not in kwargs else w**2
    dirs = [] if kwargs.get("drop") else [torch.ones(2)]
    with pytest.raises(ValueError, match=match):
        partition_tensors(loss, [w], dirs, [[0]], order=kwargs.get("order", 3))

"""The shared helpers: finiteness check, guarded descent, torch SGD's rule, layer coverage, RNG."""

import math

import pytest
import torch
from torch import nn

from curvlab.curvature.coverage import layer_coverage
from curvlab.curvature.descent import descend_
from curvlab.curvature.finite import all_finite, finite_flags
from curvlab.curvature.momentum import heavy_ball
from curvlab.curvature.rng import derive_seed, lend_rng


def _sparse(values):
    idx = torch.tensor([[0, 2, 2]])
    return torch.sparse_coo_tensor(idx, torch.tensor(values), (4,), check_invariants=True)


FINITE = [
    ("dense", [torch.ones(3), torch.zeros(2, 2)], True),
    ("nan", [torch.ones(3), torch.tensor([1.0, math.nan])], False),
    ("inf", [torch.tensor([-math.inf])], False),
    ("overflowing-sum-of-finite", [torch.full((8,), 3e38)], True),
    ("float16-sum-above-65504", [torch.full((16,), 6e4, dtype=torch.float16)], True),
    ("bfloat16-inf", [torch.tensor([1.0, math.inf], dtype=torch.bfloat16)], False),
    ("sparse-finite-uncoalesced", [_sparse([1.0, 2.0, 3.0])], True),
    ("sparse-nan", [_sparse([1.0, math.nan, 3.0])], False),
    ("none-and-ints", [None, torch.arange(3), torch.ones(1, dtype=torch.bool)], True),
    ("mixed-dtypes", [torch.ones(2, dtype=torch.float64), torch.ones(2)], True),
    ("empty", [], True),
]


@pytest.mark.parametrize("tensors,expected", [c[1:] for c in FINITE], ids=[c[0] for c in FINITE])
def test_all_finite_is_exact(tensors, expected):
    assert all_finite(tensors) is expected


def test_finite_flags_per_tensor_without_sync():
    flags = finite_flags([torch.ones(2), torch.tensor([math.nan]), torch.tensor([math.inf, 1.0])])
    assert flags.tolist() == [True, False, False] and flags.dtype == torch.bool


def test_descend_applies_or_changes_nothing():
    p, q = torch.ones(3), torch.ones(2, dtype=torch.float64)
    assert descend_([p, q], [torch.ones(3), torch.full((2,), 2.0, dtype=torch.float64)], [0.5, 0.25])
    assert p.tolist() == [0.5] * 3 and q.tolist() == [0.5] * 2
    before = [p.clone(), q.clone()]
    for lr in (1e38, 1e300, math.inf):  # overflow of the product, of the alpha= scalar, inf
        assert not descend_([p, q], [torch.full((3,), 10.0), torch.ones(2, dtype=torch.float64)],
                            [lr, 0.1])
        assert torch.equal(p, before[0]) and torch.equal(q, before[1])


def test_descend_with_a_sparse_step():
    p = torch.zeros(4)
    assert descend_([p], [_sparse([1.0, 2.0, 3.0])], [1.0])
    assert p.tolist() == [-1.0, 0.0, -5.0, 0.0]


SGD_CASES = [
    ("plain", dict(momentum=0.0)),
    ("momentum", dict(momentum=0.9)),
    ("dampening-decay", dict(momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("nesterov", dict(momentum=0.8, nesterov=True)),
]


@pytest.mark.parametrize("hp", [c[1] for c in SGD_CASES], ids=[c[0] for c in SGD_CASES])
def test_heavy_ball_is_torch_sgd_bit_for_bit(hp):
    """Steps from heavy_ball applied with lr equal torch.optim.SGD's updates exactly (float64)."""
    torch.manual_seed(0)
    ours, theirs = [torch.randn(5, 3, dtype=torch.float64) for _ in range(2)]
    theirs = ours.clone().requires_grad_(True)
    opt = torch.optim.SGD([theirs], lr=0.1, **hp)
    buf = None
    for _ in range(4):
        g = torch.randn(5, 3, dtype=torch.float64)
        theirs.grad = g.clone()
        opt.step()
        (s,), (buf,) = heavy_ball([g], [ours], [buf], **hp)
        assert descend_([ours], [s], [0.1])
        assert torch.equal(ours, theirs.detach())
        if hp["momentum"]:
            assert torch.equal(buf, opt.state[theirs]["momentum_buffer"])


def test_heavy_ball_is_out_of_place_and_refuses_sparse_decay():
    g, buf = torch.ones(2), torch.full((2,), 5.0)
    heavy_ball([g], [g], [buf], momentum=0.5)
    assert buf.tolist() == [5.0, 5.0]
    with pytest.raises(ValueError, match="weight_decay must be 0 .* sparse"):
        heavy_ball([_sparse([1.0, 1.0, 1.0])], [torch.zeros(4)], [None], momentum=0.0,
                   weight_decay=0.1)


def test_coverage_maps_trainable_parameters_and_refuses_the_rest():
    net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1), nn.LayerNorm(1))
    net[3].requires_grad_(False)  # frozen: neither covered nor refused
    net[2].bias.requires_grad_(False)
    groups = [{"params": list(net[0].parameters()), "lr": 0.1},
              {"params": list(net[2].parameters()) + list(net[3].parameters()), "lr": 0.2}]
    cov = layer_coverage(net, groups, (nn.Linear,), who="demo")
    assert list(cov.layers) == ["0", "2"]
    assert cov.group(net[2].weight)["lr"] == 0.2 and not cov.trainable(net[2].bias)
    net[2].bias.grad = torch.zeros(1)  # unfrozen after construction: refused at the step
    with pytest.raises(ValueError, match=r"model.2.bias has a gradient but was frozen"):
        cov.check_gradients("demo")
    net[3].requires_grad_(True)
    with pytest.raises(ValueError, match=r"demo supports Linear; got LayerNorm at model.3"):
        layer_coverage(net, groups, (nn.Linear,), who="demo")
    with pytest.raises(ValueError, match=r"got parameter 0 \(shape \(4,\), not in the model\)"):
        layer_coverage(net, [{"params": [nn.Parameter(torch.zeros(4))]}], (nn.Linear,), who="demo")


def test_private_rng_is_reproducible_and_leaves_the_global_stream_alone():
    torch.manual_seed(3)
    seed = derive_seed()
    global_state = torch.get_rng_state()
    with lend_rng(None, seed=seed) as first:
        a = torch.rand(3)
    with lend_rng(first["state"], seed=seed) as second:
        b = torch.rand(3)
    with lend_rng(None, seed=seed):
        assert torch.equal(torch.rand(3), a)
    with lend_rng(first["state"], seed=seed):
        assert torch.equal(torch.rand(3), b)
    assert torch.equal(torch.get_rng_state(), global_state) and not torch.equal(a, b)
    assert set(second["state"]) == {"cpu"}

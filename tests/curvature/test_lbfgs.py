"""L-BFGS two-loop recursion against dense BFGS products; the tensor memory."""

import copy

import pytest
import torch

from curvlab.curvature.bfgs import bfgs_inverse_update
from curvlab.curvature.lbfgs import LBFGSMemory, compact_apply, compact_factors, two_loop

F64 = torch.float64


def _pairs(k, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(d, d, generator=g, dtype=F64)
    B = X @ X.T / d + 0.5 * torch.eye(d, dtype=F64)
    S = torch.randn(k, d, generator=g, dtype=F64)
    Y = S @ B + 0.05 * torch.randn(k, d, generator=g, dtype=F64)
    assert bool(((S * Y).sum(1) > 0).all())
    return S, Y


def _dense(S, Y, gamma=1.0):
    H = gamma * torch.eye(S.shape[1], dtype=S.dtype)
    for s, y in zip(S, Y):
        H, applied = bfgs_inverse_update(H, s, y)
        assert bool(applied)
    return H


CASES = [
    pytest.param(0, 4, 1.0, id="empty"),
    pytest.param(1, 4, 1.0, id="k1"),
    pytest.param(5, 8, 1.0, id="k5-d8"),
    pytest.param(12, 6, 1.0, id="k12>d"),
    pytest.param(5, 8, 0.3, id="gamma0.3"),
]


@pytest.mark.parametrize(("k", "d", "gamma"), CASES)
def test_two_loop_equals_dense_bfgs_product(k, d, gamma):
    S, Y = _pairs(k, d)
    H = _dense(S, Y, gamma)
    v = torch.randn(d, dtype=F64)
    V = torch.randn(d, 3, dtype=F64)
    assert torch.allclose(two_loop(S, Y, v, gamma), H @ v, rtol=1e-10, atol=1e-12)
    assert torch.allclose(two_loop(S, Y, V, gamma), H @ V, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("k", "d", "gamma"), CASES)
def test_compact_form_equals_two_loop(k, d, gamma):
    S, Y = _pairs(k, d, seed=2)
    V = torch.randn(d, 4, dtype=F64)
    assert torch.allclose(compact_apply(S, Y, V, gamma), two_loop(S, Y, V, gamma), rtol=1e-10,
                          atol=1e-12)
    assert torch.allclose(compact_apply(S, Y, V[:, 0], gamma), two_loop(S, Y, V[:, 0], gamma),
                          rtol=1e-10, atol=1e-12)
    ref = two_loop(S, Y, V, gamma)
    got32 = compact_apply(S.float(), Y.float(), V.float(), gamma)
    assert got32.dtype == torch.float32
    assert torch.allclose(got32.double(), ref, rtol=1e-3, atol=1e-4 * float(ref.abs().max()))


def test_secant_equation_for_the_newest_pair():
    S, Y = _pairs(6, 5)
    assert torch.allclose(two_loop(S, Y, Y[-1]), S[-1], rtol=1e-10)


def test_memory_keeps_the_last_pairs_and_matches_dense():
    S, Y = _pairs(7, 4, seed=3)
    mem = LBFGSMemory(4, size=3, dtype=F64)
    for s, y in zip(S, Y):
        mem.push(s, y)
    assert len(mem) == 3
    assert torch.equal(mem.S, S[-3:]) and torch.equal(mem.Y, Y[-3:])
    assert torch.allclose(mem.dense(), _dense(S[-3:], Y[-3:]), rtol=1e-10, atol=1e-12)


def test_memory_round_trips_through_its_state():
    S, Y = _pairs(4, 3, seed=1)
    mem = LBFGSMemory(3, size=10, dtype=F64)
    for s, y in zip(S, Y):
        mem.push(s, y)
    state = copy.deepcopy(mem.state_dict())
    assert set(state) == {"S", "Y"} and all(isinstance(x, torch.Tensor) for x in state.values())
    back = LBFGSMemory.from_state(state, size=10)
    v = torch.randn(3, dtype=F64)
    assert torch.equal(back.apply(v), mem.apply(v))


@pytest.mark.parametrize(("dim", "size", "match"), [(3, 0, "memory size"), (0, 3, "dimension")])
def test_invalid_memory_raises(dim, size, match):
    with pytest.raises(ValueError, match=match):
        LBFGSMemory(dim, size)


@pytest.mark.parametrize("fn", [two_loop, compact_apply], ids=["two_loop", "compact"])
def test_shape_mismatch_raises(fn):
    with pytest.raises(ValueError, match=f"{fn.__name__} needs"):
        fn(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(4))


def test_precomputed_factors_give_the_same_product():
    """compact_factors once, then several applications: equal to computing them each time."""
    S, Y = _pairs(6, 9, seed=4)
    factors = compact_factors(S, Y)
    for v in (torch.randn(9, dtype=F64), torch.randn(9, 5, dtype=F64)):
        assert torch.equal(compact_apply(S, Y, v, factors=factors), compact_apply(S, Y, v))
        assert torch.allclose(compact_apply(S, Y, v, factors=factors), _dense(S, Y) @ v,
                              rtol=1e-10, atol=1e-12)

"""Powell and Levenberg–Marquardt damping: closed forms, bounds, guards, adversarial pairs."""

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from curvlab.curvature.bfgs import bfgs_inverse_update
from curvlab.curvature.double_damping import (
    double_damping,
    double_damping_blocks,
    lm_damping,
    powell_damping,
)

F64 = torch.float64


def t(*v, dtype=F64):
    return torch.tensor(v, dtype=dtype)


# (s, y, H, mu1, expected theta1) — theta1 computed by hand from the formula
POWELL = [
    pytest.param(t(1, 0), t(-1, 0), torch.eye(2, dtype=F64), 0.2, 0.8 * 1 / (1 + 1), id="sTy<0"),
    pytest.param(t(1, 0), t(0.1, 0), torch.eye(2, dtype=F64), 0.2, 0.8 * 0.01 / (0.01 - 0.1),
                 id="sTy>=mu1yHy-no-fire"),
    pytest.param(t(1, 0), t(0.0, 1), 2 * torch.eye(2, dtype=F64), 0.2, 0.8 * 2 / 2, id="sTy=0"),
    pytest.param(t(0, 0), t(1, 1), torch.eye(2, dtype=F64), 0.2, 0.8, id="s-zero"),
    pytest.param(t(1, 2), t(0, 0), torch.eye(2, dtype=F64), 0.2, 1.0, id="y-zero"),
]


@pytest.mark.parametrize(("s", "y", "H", "mu1", "theta"), POWELL)
def test_powell_closed_form(s, y, H, mu1, theta):
    Hy = H @ y
    fires = bool(s @ y < mu1 * (y @ Hy))
    theta = theta if fires else 1.0
    st_, fired = powell_damping(s, y, Hy, mu1)
    assert bool(fired) == fires
    assert torch.allclose(st_, theta * s + (1 - theta) * Hy, atol=1e-15)
    assert float(st_ @ y) >= mu1 * float(y @ Hy) - 1e-12


# (s, y, mu2, expected theta2)
LM = [
    pytest.param(t(1, 0), t(0.1, 0), 0.5, 0.5 * 1 / (1 - 0.1), id="weak-curvature"),
    pytest.param(t(1, 0), t(-2, 0), 0.5, 0.5 * 1 / (1 + 2), id="sTy<0"),
    pytest.param(t(1, 0), t(3, 0), 0.5, 1.0, id="no-fire"),
    pytest.param(t(2, 0), t(0, 0), 0.3, 0.7, id="y-zero"),
    pytest.param(t(1, 1), t(1, -1), 1.0, 0.0, id="mu2=1-y-becomes-s"),
]


@pytest.mark.parametrize(("s", "y", "mu2", "theta"), LM)
def test_lm_closed_form(s, y, mu2, theta):
    yt, fired = lm_damping(s, y, mu2)
    assert bool(fired) == (theta < 1.0)
    assert torch.allclose(yt, theta * y + (1 - theta) * s, atol=1e-15)
    assert float(s @ yt) >= mu2 * float(s @ s) - 1e-12


def test_double_damping_bounds_on_hand_made_pair():
    s, y = t(1, 0.5), t(-1, 2)
    H = torch.tensor([[2.0, 0.3], [0.3, 1.0]], dtype=F64)
    pair = double_damping(s, y, H @ y, mu1=0.2, mu2=math.sqrt(0.3))
    assert bool(pair.valid) and bool(pair.powell)
    assert float(pair.s @ y) >= 0.2 * float(y @ H @ y) - 1e-12
    assert float(pair.s @ pair.y) >= math.sqrt(0.3) * float(pair.s @ pair.s) - 1e-12


INVALID = [
    pytest.param(t(0, 0), t(0, 0), id="both-zero"),
    pytest.param(t(math.nan, 0), t(1, 0), id="nan"),
    pytest.param(t(1, 0), t(math.inf, 0), id="inf"),
    pytest.param(t(1e30, 1e30, dtype=torch.float32), t(1e30, -1e30, dtype=torch.float32),
                 id="overflow-f32"),
]


@pytest.mark.parametrize(("s", "y"), INVALID)
def test_invalid_pairs_are_zero_and_flagged(s, y):
    pair = double_damping(s, y, y.clone(), mu1=0.2, mu2=0.5)
    assert not bool(pair.valid)
    assert not torch.any(pair.s) and not torch.any(pair.y)
    assert not bool(pair.powell) and not bool(pair.lm)


@pytest.mark.parametrize("mu1", [0.0, 1.0, -0.1])
def test_mu1_out_of_range_raises(mu1):
    with pytest.raises(ValueError, match="mu1"):
        powell_damping(t(1.0), t(1.0), t(1.0), mu1)


@pytest.mark.parametrize("mu2", [0.0, 1.5])
def test_mu2_out_of_range_raises(mu2):
    with pytest.raises(ValueError, match="mu2"):
        lm_damping(t(1.0), t(1.0), mu2)


# ---------------------------------------------------------------- adversarial
_magnitudes = st.sampled_from([0.0, 1e-38, 1e-20, 1e-8, 1e-3, 1.0, 1e3, 1e8, 1e20, 1e30])
_entries = st.tuples(_magnitudes, st.floats(-1, 1, allow_nan=False)).map(lambda m: m[0] * m[1])
_vectors = st.lists(_entries, min_size=3, max_size=3)


@settings(max_examples=300, deadline=None)
@example(s=[1e30, 0.0, 0.0], y=[-1.5625e-10, 0.0, 0.0], h=0.03125, dtype=torch.float32, lam=1e-4)
@given(s=_vectors, y=_vectors, h=st.floats(1e-4, 1e4), dtype=st.sampled_from([torch.float32, F64]),
       lam=st.sampled_from([1e-4, 0.1, 0.3, 1.0]))
def test_adversarial_pairs_never_give_nan_and_keep_bounds(s, y, h, dtype, lam):
    s, y = torch.tensor(s, dtype=dtype), torch.tensor(y, dtype=dtype)
    H = h * torch.eye(3, dtype=dtype)
    mu1, mu2 = 0.2, math.sqrt(lam)
    pair = double_damping(s, y, H @ y, mu1=mu1, mu2=mu2)
    for v in pair.s, pair.y:
        assert torch.isfinite(v).all()
    Hn, applied = bfgs_inverse_update(H, pair.s, pair.y)
    assert torch.isfinite(Hn).all()
    if not bool(applied):
        assert torch.equal(Hn, H)
        return
    assert bool(pair.valid)
    y64, st64, yt64 = y.double(), pair.s.double(), pair.y.double()
    yHy = h * float(y64 @ y64)
    rtol = 1e-4 if dtype == torch.float32 else 1e-10
    scale = float(st64.norm() * max(y64.norm(), yt64.norm(), st64.norm()))
    assert float(st64 @ y64) >= mu1 * yHy - rtol * max(scale, yHy)
    assert float(st64 @ yt64) >= mu2 * float(st64 @ st64) - rtol * scale
    assert float(st64 @ yt64) > 0
    # the secant equation after the damped update
    # (backward-error scale: |H| |y~| + |s~|, the size of the terms that cancel)
    res = float((Hn.double() @ yt64 - st64).norm())
    ref = float(Hn.double().norm() * yt64.norm() + st64.norm())
    assert res <= (1e-4 if dtype == torch.float32 else 1e-12) * ref


_moderate = st.one_of(st.just(0.0), st.floats(1e-6, 1e6), st.floats(-1e6, -1e-6))


@settings(max_examples=100, deadline=None)
@given(s=st.lists(_moderate, min_size=4, max_size=4), y=st.lists(_moderate, min_size=4, max_size=4))
def test_reasonable_nonzero_pairs_are_always_usable_in_float64(s, y):
    """Entries 0 or of magnitude in [1e-6, 1e6]: DD always yields a usable pair."""
    s, y = torch.tensor(s, dtype=F64), torch.tensor(y, dtype=F64)
    if float(s.norm()) < 1e-6 and float(y.norm()) < 1e-6:
        return
    pair = double_damping(s, y, y.clone(), mu1=0.2, mu2=math.sqrt(0.3))
    assert bool(pair.valid)
    _, applied = bfgs_inverse_update(torch.eye(4, dtype=F64), pair.s, pair.y)
    assert bool(applied)


def _blocks_case(dims, seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(sum(dims), generator=g, dtype=F64)
    y = torch.randn(sum(dims), generator=g, dtype=F64)
    Hy = 0.5 * y + 0.1 * torch.randn(sum(dims), generator=g, dtype=F64)
    return s, y, Hy


BLOCK_CASES = [
    pytest.param([3], 0, id="one-block"),
    pytest.param([4, 1, 6], 1, id="three-blocks"),
    pytest.param([2, 5, 3, 7, 1], 2, id="five-blocks"),
]


@pytest.mark.parametrize(("dims", "seed"), BLOCK_CASES)
def test_blocks_equal_damping_each_block(dims, seed):
    s, y, Hy = _blocks_case(dims, seed)
    s[: dims[0]] = 0.0  # a zero step: Powell fires with s̃ = Hy
    index = torch.repeat_interleave(torch.arange(len(dims)), torch.tensor(dims))
    got = double_damping_blocks(s, y, Hy, index, len(dims), mu1=0.2, mu2=0.4)
    for b, (sb, yb, hb) in enumerate(zip(*(v.split(dims) for v in (s, y, Hy)))):
        ref = double_damping(sb, yb, hb, mu1=0.2, mu2=0.4)
        sl = slice(sum(dims[:b]), sum(dims[: b + 1]))
        assert torch.allclose(got.s[sl], ref.s, rtol=1e-12, atol=1e-14)
        assert torch.allclose(got.y[sl], ref.y, rtol=1e-12, atol=1e-14)
        for field in ("powell", "lm", "valid"):
            assert bool(getattr(got, field)[b]) == bool(getattr(ref, field))


def test_blocks_guard_zero_and_non_finite_blocks():
    """A zero block and a NaN block come out invalid and zero; the others are untouched."""
    dims = [2, 2, 2]
    s, y, Hy = _blocks_case(dims, 3)
    s[:2], y[:2], Hy[:2] = 0.0, 0.0, 0.0
    s[2] = math.nan
    index = torch.repeat_interleave(torch.arange(3), torch.tensor(dims))
    got = double_damping_blocks(s, y, Hy, index, 3, mu2=0.5)
    assert got.valid.tolist() == [False, False, True]
    assert torch.equal(got.s[:4], torch.zeros(4, dtype=F64))
    assert bool(torch.isfinite(got.s).all() and torch.isfinite(got.y).all())
    assert bool(got.s[4:] @ got.y[4:] >= 0.5 * (got.s[4:] @ got.s[4:]) - 1e-12)


def test_blocks_shape_mismatch_raises():
    with pytest.raises(ValueError, match="one shape"):
        double_damping_blocks(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.zeros(2,
                              dtype=torch.long), 1, mu2=0.5)

"""Guarded BFGS inverse update: secant equation, dense formula, skips, Hessian-action limit."""

import math

import pytest
import torch

from curvlab.curvature.bfgs import bfgs_gram_coefficients, bfgs_inverse_update, safe_curvature

F64 = torch.float64


def _spd(d, seed, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(d, d, generator=g, dtype=F64)
    M = X @ X.T / d + 0.1 * torch.eye(d, dtype=F64)
    return ((M + M.T) / 2).to(dtype)  # X @ X.T is symmetric only up to the BLAS kernel


def test_update_of_slightly_asymmetric_H_is_exactly_symmetric():
    # what a BLAS product can hand in: symmetric up to round-off
    H = _spd(7, 3)
    H = H + 1e-15 * torch.triu(torch.ones_like(H), 1)
    s, y = _pair(7, 4)
    Hn, applied = bfgs_inverse_update(H, s, y)
    assert bool(applied)
    assert torch.equal(Hn, Hn.T)


def _pair(d, seed, dtype=F64):
    g = torch.Generator().manual_seed(seed + 100)
    s = torch.randn(d, generator=g, dtype=F64)
    y = _spd(d, seed + 7) @ s  # positive curvature along s
    return s.to(dtype), y.to(dtype)


CASES = [
    pytest.param(1, F64, 1e-12, id="d1-float64"),
    pytest.param(5, F64, 1e-10, id="d5-float64"),
    pytest.param(32, F64, 1e-9, id="d32-float64"),
    pytest.param(8, torch.float32, 2e-4, id="d8-float32"),
]


@pytest.mark.parametrize(("d", "dtype", "tol"), CASES)
def test_secant_equation_and_dense_formula(d, dtype, tol):
    H = _spd(d, 1, dtype)
    s, y = _pair(d, 2, dtype)
    Hn, applied = bfgs_inverse_update(H, s, y)
    assert bool(applied)
    # secant equation H_new y = s
    assert torch.allclose(Hn @ y, s, rtol=tol, atol=tol * s.abs().max())
    # the literal formula (I - rho s y^T) H (I - rho y s^T) + rho s s^T, in float64
    H64, s64, y64 = H.double(), s.double(), y.double()
    rho = 1 / (s64 @ y64)
    eye = torch.eye(d, dtype=F64)
    ref = (eye - rho * torch.outer(s64, y64)) @ H64 @ (eye - rho * torch.outer(y64, s64))
    ref = ref + rho * torch.outer(s64, s64)
    assert torch.allclose(Hn.double(), ref, rtol=tol, atol=tol * ref.abs().max())
    assert torch.equal(Hn, Hn.T), "the update must keep H exactly symmetric"
    assert torch.linalg.eigvalsh(Hn.double()).min() > 0


def test_secant_holds_after_every_update_of_a_sequence():
    d = 6
    H = torch.eye(d, dtype=F64)
    for k in range(20):
        s, y = _pair(d, k)
        H, applied = bfgs_inverse_update(H, s, y)
        assert bool(applied)
        assert torch.allclose(H @ y, s, rtol=1e-9, atol=1e-9)


_s, _y = torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([0.5, -0.1], dtype=F64)
SKIPS = [
    pytest.param(torch.zeros(2, dtype=F64), _y, id="s-zero"),
    pytest.param(_s, torch.zeros(2, dtype=F64), id="y-zero"),
    pytest.param(_s, -_y, id="negative-curvature"),
    pytest.param(torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
                 id="orthogonal"),
    pytest.param(torch.tensor([math.nan, 1.0], dtype=F64), _y, id="nan-s"),
    pytest.param(_s, torch.tensor([math.inf, 1.0], dtype=F64), id="inf-y"),
    pytest.param(torch.tensor([1e-30, 1e-30]), torch.tensor([1e-30, 1e-30]), id="underflow-f32"),
    pytest.param(torch.tensor([1e30, 1e30]), torch.tensor([1e30, 1e30]), id="overflow-f32"),
]


@pytest.mark.parametrize(("s", "y"), SKIPS)
def test_unsafe_pairs_leave_H_unchanged(s, y):
    H = torch.eye(2, dtype=s.dtype)
    Hn, applied = bfgs_inverse_update(H, s, y)
    assert not bool(applied) and not bool(safe_curvature(s, y))
    assert torch.equal(Hn, H)


@pytest.mark.parametrize("d", [3, 7])
def test_hessian_action_bfgs_converges_to_damped_inverse(d):
    """s = H ā, y = (A + λI) s with a constant A and varying ā: H → (A + λI)⁻¹."""
    lam = math.sqrt(0.3)
    M = _spd(d, 5) + lam * torch.eye(d, dtype=F64)
    H = torch.eye(d, dtype=F64)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        a = torch.randn(d, generator=g, dtype=F64)
        s = H @ a
        H, applied = bfgs_inverse_update(H, s, M @ s)
        assert bool(applied)
    assert torch.allclose(H, torch.linalg.inv(M), atol=1e-10)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="bfgs_inverse_update needs H"):
        bfgs_inverse_update(torch.eye(3), torch.ones(2), torch.ones(2))


@pytest.mark.parametrize(("d", "dtype", "tol"), CASES)
def test_gram_coefficients_reproduce_the_update(d, dtype, tol):
    """H + VᵀCV with C from the Gram matrix of V = [s; y; Hy] is the BFGS update (batched)."""
    g = torch.Generator().manual_seed(d)
    Hs, Vs, refs = [], [], []
    for _ in range(3):
        X = torch.randn(d, d, generator=g, dtype=F64)
        H = (X @ X.T / d + torch.eye(d, dtype=F64)).to(dtype)
        s = torch.randn(d, generator=g, dtype=F64).to(dtype)
        y = s + 0.1 * torch.randn(d, generator=g, dtype=F64).to(dtype)
        Hs.append(H)
        Vs.append(torch.stack([s, y, H @ y]))
        refs.append(bfgs_inverse_update(H, s, y)[0])
    C, ok = bfgs_gram_coefficients(torch.stack([V @ V.T for V in Vs]))
    assert ok.tolist() == [True] * 3
    for H, V, c, ref in zip(Hs, Vs, C, refs):
        assert torch.allclose(H + V.T @ c @ V, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize(("s", "y"), [p for p in SKIPS if p.id not in ("nan-s", "inf-y")])
def test_gram_coefficients_reject_unsafe_pairs_with_zero_C(s, y):
    """Rejected (finite) pairs: C = 0, so H + VᵀCV is H exactly."""
    H = torch.eye(2, dtype=s.dtype)
    V = torch.stack([s, y, H @ y])
    C, ok = bfgs_gram_coefficients(V @ V.T)
    assert not bool(ok) and torch.equal(C, torch.zeros_like(C))
    assert torch.equal(torch.addmm(H, V.T, C @ V), H)


def test_gram_coefficients_shape_check():
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, 3\)"):
        bfgs_gram_coefficients(torch.zeros(2, 2))

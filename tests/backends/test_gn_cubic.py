"""GroupedNewton's step-size solves against closed forms and optimality conditions."""

import math

import numpy as np
import pytest
import torch

from curvlab_plugins.groupednewton.cubic import cubic_step_sizes, newton_step_sizes

F64 = torch.float64


def _random_problem(seed, S, shift):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(S, S, generator=gen, dtype=F64)
    h = a @ a.T / S + shift * torch.eye(S, dtype=F64)
    g = torch.randn(S, generator=gen, dtype=F64)
    d3 = torch.randn(S, generator=gen, dtype=F64)
    return h, g, d3


def _check_global_minimiser(h, g, d3, lam, eta):
    """Nesterov–Polyak: (H̄ + c r D²) η = ḡ with r = ‖Dη‖ and H̄ + c r D² ⪰ 0."""
    d = d3.abs().pow(1 / 3)
    c = lam / 2
    r = torch.linalg.norm(d * eta)
    m = h + c * r * torch.diag(d**2)
    torch.testing.assert_close(m @ eta, g, rtol=1e-9, atol=1e-11)
    assert torch.linalg.eigvalsh(m)[0] >= -1e-9 * torch.linalg.eigvalsh(m).abs().max()


CUBIC_CASES = [  # id, seed, S, diagonal shift of H̄ (negative: indefinite), λ_int
    ("pd-s1", 0, 1, 0.5, 10.0),
    ("pd-s4", 1, 4, 0.5, 10.0),
    ("indefinite-s5", 2, 5, -1.0, 10.0),
    ("indefinite-weak-reg", 3, 6, -0.5, 0.5),
    ("pd-strong-reg", 4, 3, 0.1, 1000.0),
]


@pytest.mark.parametrize("case", CUBIC_CASES, ids=[c[0] for c in CUBIC_CASES])
def test_cubic_solution_is_the_global_minimiser(case):
    _, seed, S, shift, lam = case
    h, g, d3 = _random_problem(seed, S, shift)
    out = cubic_step_sizes(h, g, d3, lam)
    assert out.ok, out.reason
    _check_global_minimiser(h, g, d3, lam, out.eta)


def test_cubic_one_subset_closed_form():
    # η > 0 solves c d³ η² + h η − g = 0.
    h, g, d, lam = 0.3, 2.0, 0.7, 10.0
    c = lam / 2
    expected = (-h + math.sqrt(h * h + 4 * c * d**3 * g)) / (2 * c * d**3)
    out = cubic_step_sizes(torch.tensor([[h]], dtype=F64), torch.tensor([g], dtype=F64),
                           torch.tensor([-(d**3)], dtype=F64), lam)
    assert out.eta.item() == pytest.approx(expected, rel=1e-13)
    assert out.r == pytest.approx(d * expected, rel=1e-12)


def test_cubic_singular_d_eliminates_unregularised_subsets():
    h, g, d3 = _random_problem(5, 5, 0.5)
    d3[1] = 0.0
    d3[3] = 0.0
    out = cubic_step_sizes(h, g, d3, 10.0)
    assert out.ok
    _check_global_minimiser(h, g, d3, 10.0, out.eta)


def test_cubic_all_d_zero_is_newton():
    h, g, _ = _random_problem(6, 4, 0.5)
    out = cubic_step_sizes(h, g, torch.zeros(4, dtype=F64), 10.0)
    torch.testing.assert_close(out.eta, torch.linalg.solve(h, g), rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "h, g, d3, lam",
    [
        # hard case: ḡ ⟂ critical eigenvector and weak regularisation
        (torch.diag(torch.tensor([-1.0, 1.0], dtype=F64)), torch.tensor([0.0, 1.0], dtype=F64),
         torch.ones(2, dtype=F64), 0.2),
        # D = 0 where H̄ is not positive definite through the cross terms
        (torch.tensor([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64),
         torch.ones(3, dtype=F64), torch.tensor([0.0, 0.0, 1.0], dtype=F64), 10.0),
        # zero gradient with negative curvature
        (torch.diag(torch.tensor([-1.0, 1.0], dtype=F64)), torch.zeros(2, dtype=F64),
         torch.ones(2, dtype=F64), 10.0),
        # NaN input
        (torch.eye(2, dtype=F64), torch.tensor([math.nan, 1.0], dtype=F64),
         torch.ones(2, dtype=F64), 10.0),
    ],
    ids=["hard-case", "indefinite-where-d-zero", "zero-gradient-indefinite", "nan"],
)
def test_cubic_failures_give_zero_step(h, g, d3, lam):
    out = cubic_step_sizes(h, g, d3, lam)
    assert not out.ok and out.reason
    assert torch.count_nonzero(out.eta) == 0


UNBOUNDED_CASES = [  # id, H̄ diagonal entries of the unbounded subsets, their ḡ
    ("negative-curvature", -1.0, 1.0),
    ("zero-curvature", 0.0, 1.0),
    # an attention key bias: gradient and curvature are rounding noise, D_sss = 0 exactly
    ("rounding-noise", -4e-36, 3e-23),
]


@pytest.mark.parametrize("case", UNBOUNDED_CASES, ids=[c[0] for c in UNBOUNDED_CASES])
def test_cubic_unbounded_subsets_are_dropped_not_fatal(case):
    """d_s = 0 and H̄_ss ≤ 0: the model has no minimiser along s; η_s = 0, the rest is solved.

    Regression: one such subset (the key bias of an attention layer) made every solve on the
    byte-level transformer fail, so GroupedNewton never moved.
    """
    _, h_bad, g_bad = case
    h, g, d3 = _random_problem(12, 4, 0.5)
    bad = 2
    h[bad, :] = h[:, bad] = 0.0
    h[bad, bad], g[bad], d3[bad] = h_bad, g_bad, 0.0
    out = cubic_step_sizes(h, g, d3, 10.0)
    assert out.ok and out.dropped == (bad,) and out.eta[bad].item() == 0.0
    keep = [i for i in range(4) if i != bad]
    expected = cubic_step_sizes(h[keep][:, keep], g[keep], d3[keep], 10.0)
    torch.testing.assert_close(out.eta[keep], expected.eta, rtol=1e-12, atol=0)


def test_negligible_d_is_judged_per_subset_not_against_the_others():
    """d_s is negligible only against its own H̄_ss (scale-free), never against max_i d_i.

    Regression: on the deep auto-encoder the first layers' d_s were 1e-10 of the last
    layers' (their u_s are tiny), were treated as D = 0, H̄ on them was not positive definite
    and every solve failed: GroupedNewton stalled at the loss of the mean image.
    """
    from curvlab_plugins.groupednewton.cubic import effective_d

    h, g, d3 = _random_problem(13, 4, -0.3)
    a = torch.tensor([1e-10, 1e-8, 1.0, 3.0], dtype=F64)  # tiny directions on two subsets
    hs, gs, ds = torch.diag(a) @ h @ torch.diag(a), a * g, a**3 * d3
    assert torch.count_nonzero(effective_d(hs, ds)) == 4
    out = cubic_step_sizes(hs, gs, ds, 10.0)
    assert out.ok
    torch.testing.assert_close(a * out.eta, cubic_step_sizes(h, g, d3, 10.0).eta, rtol=1e-8, atol=0)
    noise = d3.clone()
    noise[1] = 1e-18 * h[1, 1].abs() ** 1.5  # d² = 1e-12·|H̄_ss|: below D_REL_TOL
    assert effective_d(h, noise)[1] == 0.0


def test_cubic_zero_subsets_get_zero_step():
    h, g, d3 = _random_problem(7, 3, 0.5)
    h[2, :] = 0.0
    h[:, 2] = 0.0
    g[2] = 0.0
    d3[2] = 0.0
    out = cubic_step_sizes(h, g, d3, 10.0)
    assert out.ok and out.eta[2].item() == 0.0
    _check_global_minimiser(h[:2, :2], g[:2], d3[:2], 10.0, out.eta[:2])


@pytest.mark.parametrize("order", [2, 3])
def test_solves_are_invariant_under_subset_rescaling(order):
    # u_s → a_s u_s: ḡ → Aḡ, H̄ → AH̄A, D_sss → a_s³ D_sss; then η → A⁻¹ η.
    h, g, d3 = _random_problem(8, 5, -0.3)
    a = torch.tensor([1e-3, 2.0, -7.0, 1e2, 0.5], dtype=F64)
    A = torch.diag(a)
    if order == 2:
        e1, e2 = newton_step_sizes(h, g).eta, newton_step_sizes(A @ h @ A, a * g).eta
    else:
        e1 = cubic_step_sizes(h, g, d3, 10.0).eta
        e2 = cubic_step_sizes(A @ h @ A, a * g, a**3 * d3, 10.0).eta
    torch.testing.assert_close(a * e2, e1, rtol=1e-10, atol=0)


def test_newton_matches_dense_solve_and_skips_zero_rows():
    h, g, _ = _random_problem(9, 4, 0.2)
    torch.testing.assert_close(newton_step_sizes(h, g).eta, torch.linalg.solve(h, g))
    h[0, :] = 0.0
    h[:, 0] = 0.0
    out = newton_step_sizes(h, g)
    assert out.ok and out.eta[0].item() == 0.0
    torch.testing.assert_close(out.eta[1:], torch.linalg.solve(h[1:, 1:], g[1:]))


def test_newton_singular_fails():
    out = newton_step_sizes(torch.ones(2, 2, dtype=F64), torch.ones(2, dtype=F64))
    assert not out.ok and torch.count_nonzero(out.eta) == 0


def test_float32_inputs_are_solved_in_float64():
    h, g, d3 = _random_problem(10, 3, 0.5)
    out = cubic_step_sizes(h.float(), g.float(), d3.float(), 10.0)
    assert out.eta.dtype == F64
    _check_global_minimiser(h.float().double(), g.float().double(), d3.float().double(), 10.0,
                            out.eta)


def test_lambda_int_must_be_positive():
    with pytest.raises(ValueError, match="lambda_int"):
        cubic_step_sizes(torch.eye(1), torch.ones(1), torch.ones(1), 0.0)


def test_brute_force_agrees_on_a_small_case():
    # Independent check by minimising m(η) directly (scipy, many starts).
    from scipy.optimize import minimize

    h, g, d3 = _random_problem(11, 3, -0.4)
    lam = 10.0
    hn, gn, dn = h.numpy(), g.numpy(), np.cbrt(np.abs(d3.numpy()))

    def m(e):
        return -gn @ e + 0.5 * e @ hn @ e + lam / 6 * np.linalg.norm(dn * e) ** 3

    rng = np.random.default_rng(0)
    best = min((minimize(m, x0, method="BFGS", options={"gtol": 1e-12}) for x0 in
                rng.normal(size=(10, 3))), key=lambda r: r.fun)
    out = cubic_step_sizes(h, g, d3, lam)
    assert m(out.eta.numpy()) <= best.fun + 1e-12
    np.testing.assert_allclose(out.eta.numpy(), best.x, rtol=1e-5, atol=1e-7)

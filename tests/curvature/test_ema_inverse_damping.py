"""EMA, damped inverses, Tikhonov splits, KL-clipping and the momentum step vs their formulas."""

import math
import warnings

import pytest
import torch

from curvlab.curvature.ema import ema_update
from curvlab.curvature.inverse import InverseFallbackWarning, damped_inverse
from curvlab.curvature.kl_clip import kl_clip_factor
from curvlab.curvature.momentum import momentum_step_
from curvlab.curvature.tikhonov import pi_factor, split_damping


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.95])
def test_ema_is_bias_corrected_weighted_mean(decay):
    xs = [torch.randn(3, 3, dtype=torch.float64) for _ in range(6)]
    avg = None
    for t, x in enumerate(xs, start=1):
        avg = ema_update(avg, x, decay, t)
        w = torch.tensor([(1 - decay) * decay ** (t - s) for s in range(1, t + 1)], dtype=torch.float64)
        want = sum(wi * xi for wi, xi in zip(w, xs[:t])) / w.sum()
        torch.testing.assert_close(avg, want)


@pytest.mark.parametrize("method", ["cholesky", "eigh"])
@pytest.mark.parametrize("damping", [0.0, 1e-3, 1.0])
def test_damped_inverse_matches_dense(method, damping):
    X = torch.randn(5, 7, dtype=torch.float64)
    M = X @ X.T
    got = damped_inverse(M, damping, method=method)
    torch.testing.assert_close(got, torch.linalg.inv(M + damping * torch.eye(5, dtype=M.dtype)))


def test_damped_inverse_retries_in_float64():
    M = torch.ones(2, 2, dtype=torch.float32)  # singular: 1e-12 is lost in float32
    with pytest.warns(InverseFallbackWarning, match="float64"):
        inv = damped_inverse(M, 1e-12)
    assert inv.dtype == torch.float32 and torch.isfinite(inv).all()
    want = torch.linalg.inv(M.double() + 1e-12 * torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(inv.double(), want, rtol=1e-3, atol=0)


def test_damped_inverse_eigh_projects_negative_eigenvalues():
    M = torch.diag(torch.tensor([-0.5, 2.0], dtype=torch.float64))
    torch.testing.assert_close(damped_inverse(M, 0.5, method="eigh"), torch.diag(torch.tensor([2.0, 0.4], dtype=torch.float64)))


@pytest.mark.parametrize(
    "M,damping,err",
    [(torch.full((2, 2), math.nan), 0.1, torch.linalg.LinAlgError), (torch.ones(2, 3), 0.1, ValueError),
     (torch.eye(2), -1.0, ValueError)],
    ids=["nan", "not-square", "negative-damping"],
)
def test_damped_inverse_errors(M, damping, err):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InverseFallbackWarning)
        with pytest.raises(err):
            damped_inverse(M, damping)


def test_pi_damping_matches_formula():
    A = torch.randn(4, 6, dtype=torch.float64)
    A = A @ A.T
    G = torch.randn(3, 3, dtype=torch.float64)
    G = G @ G.T
    lam = 0.03
    pi = math.sqrt((torch.trace(A).item() / 4) / (torch.trace(G).item() / 3))
    assert pi_factor(A, G) == pytest.approx(pi, rel=1e-12)
    la, lg = split_damping(lam, A, G, "pi")
    assert la == pytest.approx(pi * math.sqrt(lam), rel=1e-12)
    assert lg == pytest.approx(math.sqrt(lam) / pi, rel=1e-12)
    assert la * lg == pytest.approx(lam, rel=1e-12)
    assert split_damping(lam, A, G, "equal") == pytest.approx((math.sqrt(lam), math.sqrt(lam)))
    assert split_damping(lam, None, G) == (0.0, lam)
    assert split_damping(lam, A, None) == (lam, 0.0)
    assert pi_factor(torch.zeros(2, 2), G) == 1.0


@pytest.mark.parametrize("bad", [dict(damping=0.0), dict(heuristic="pie"), dict(A=None, G=None)])
def test_split_damping_errors(bad):
    kw = dict(damping=0.1, A=torch.eye(2), G=torch.eye(2), heuristic="pi") | bad
    with pytest.raises(ValueError):
        split_damping(kw["damping"], kw["A"], kw["G"], kw["heuristic"])


@pytest.mark.parametrize("lr,kappa", [(1.0, 1e-3), (0.01, 1e-3), (0.1, 10.0), (0.0, 1e-3)])
def test_kl_clip_matches_formula(lr, kappa):
    v = [torch.randn(3, 2, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
    g = [x + 0.1 * torch.randn_like(x) for x in v]
    vg = sum(float((a * b).sum()) for a, b in zip(v, g)) * lr**2
    want = 1.0 if vg <= 0 else min(1.0, math.sqrt(kappa / vg))
    assert kl_clip_factor(v, g, lr, kappa) == pytest.approx(want, rel=1e-12)


def test_momentum_step_matches_torch_sgd():
    torch.manual_seed(0)
    p1 = torch.nn.Parameter(torch.randn(4))
    p2 = torch.nn.Parameter(p1.detach().clone())
    ref = torch.optim.SGD([p1], lr=0.1, momentum=0.9, weight_decay=0.01)
    ours = torch.optim.SGD([p2], lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(4):
        g = torch.randn(4)
        p1.grad = g.clone()
        ref.step()
        p2.grad = torch.zeros(4)  # ignored: the direction is given
        momentum_step_(ours, {p2: g.clone()})
    torch.testing.assert_close(p1, p2)

"""Directional derivatives (orders 1-3) and GroupedNewton's partition tensors."""

import pytest
import torch
from torch import nn

from curvlab import reference as ref

F64 = torch.float64


def _cubic(p=4, seed=0):
    """f(θ) = T[θ,θ,θ]/6 + θᵀAθ/2 + bᵀθ with symmetric T, A: D³f = T, D²f = T[θ] + A, ∇f = T[θ,θ]/2 + Aθ + b."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(p, p, p, generator=g, dtype=F64)
    t = sum(t.permute(*perm) for perm in [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]) / 6
    a = torch.randn(p, p, generator=g, dtype=F64)
    a = a + a.T
    b = torch.randn(p, generator=g, dtype=F64)

    def f(th):
        return torch.einsum("abc,a,b,c->", t, th, th, th) / 6 + th @ a @ th / 2 + b @ th

    return f, t, a, b, torch.randn(p, generator=g, dtype=F64)


def _directions(p, count, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(p, generator=g, dtype=F64) for _ in range(count)]


def test_cubic_closed_forms():
    f, t, a, b, th = _cubic()
    u, v, w = _directions(4, 3)
    grad = torch.einsum("abc,b,c->a", t, th, th) / 2 + a @ th + b
    hess = torch.einsum("abc,c->ab", t, th) + a
    torch.testing.assert_close(ref.first_directional(f, th, u=u), grad @ u, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ref.second_directional(f, th, u=u, v=v), u @ hess @ v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        ref.third_directional(f, th, u=u, v=v, w=w), torch.einsum("abc,a,b,c->", t, u, v, w), rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(ref.third_derivative_tensor(f, th), t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ref.hessian(f, th), hess, rtol=1e-12, atol=1e-12)


def test_sum_of_cubes():
    """f = Σ c_i θ_i³: D³f[u, v, w] = 6 Σ c_i u_i v_i w_i, independent of θ."""
    c = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    u, v, w = _directions(3, 3, seed=5)
    for th in (torch.zeros(3), torch.tensor([1.0, 2.0, -3.0])):
        got = ref.third_directional(lambda x: (c * x**3).sum(), th, u=u, v=v, w=w)
        torch.testing.assert_close(got, 6 * (c * u * v * w).sum(), rtol=1e-13, atol=1e-13)


def _mlp_problem(loss_name, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x = torch.randn(6, 3)
    if loss_name == "ce":
        return net, nn.CrossEntropyLoss(), x, torch.randint(2, (6,))
    return net, nn.MSELoss(), x, torch.randn(6, 2)


LOSSES = ["mse", "ce"]


@pytest.mark.parametrize("loss_name", LOSSES)
def test_third_directional_matches_finite_differences_of_hessian(loss_name):
    """D³L[u,v,w] ≈ (D²L(θ+εw)[u,v] − D²L(θ−εw)[u,v]) / 2ε on a tanh MLP (error O(ε²))."""
    prob = ref.Problem.from_model(*_mlp_problem(loss_name))
    p = prob.theta.numel()
    u, v, w = _directions(p, 3, seed=2)
    exact = ref.third_directional(prob, u=u, v=v, w=w)
    eps = 1e-4
    hp = ref.hessian(prob.__call__, prob.theta + eps * w)
    hm = ref.hessian(prob.__call__, prob.theta - eps * w)
    fd = u @ (hp - hm) @ v / (2 * eps)
    assert abs(exact.item()) > 1e-3  # the check is not vacuous
    torch.testing.assert_close(exact, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("loss_name", LOSSES)
def test_model_form_agrees_with_dense_tensors(loss_name):
    net, loss, x, y = _mlp_problem(loss_name)
    g = ref.gradient(net, loss, x, y)
    h = ref.hessian(net, loss, x, y)
    t = ref.third_derivative_tensor(net, loss, x, y)
    u, v, w = _directions(g.numel(), 3, seed=3)
    torch.testing.assert_close(ref.first_directional(net, loss, x, y, u=u), g @ u, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ref.second_directional(net, loss, x, y, u=u, v=v), u @ h @ v, rtol=1e-10, atol=1e-12)
    d3 = ref.third_directional(net, loss, x, y, u=u, v=v, w=w)
    torch.testing.assert_close(d3, torch.einsum("abc,a,b,c->", t, u, v, w), rtol=1e-10, atol=1e-12)
    # symmetric in its arguments
    torch.testing.assert_close(ref.third_directional(net, loss, x, y, u=w, v=u, w=v), d3, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(t, t.permute(1, 0, 2), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(t, t.permute(2, 1, 0), rtol=1e-10, atol=1e-12)


PARTITIONS = {
    "per-tensor": [["0.weight"], ["0.bias"], ["2.weight"], ["2.bias"]],
    "weights-biases": [["0.weight", "2.weight"], ["0.bias", "2.bias"]],
    "trivial": [["0.weight", "0.bias", "2.weight", "2.bias"]],
}


@pytest.mark.parametrize("loss_name", LOSSES)
@pytest.mark.parametrize("partition", list(PARTITIONS), ids=list(PARTITIONS))
def test_partition_tensors_match_dense(partition, loss_name):
    net, loss, x, y = _mlp_problem(loss_name)
    prob = ref.Problem.from_model(net, loss, x, y)
    g = ref.gradient(prob)
    h = ref.hessian(prob)
    t = ref.third_derivative_tensor(prob)
    u = _directions(g.numel(), 1, seed=4)[0]
    pieces = ref.split_direction(u, prob.layout, PARTITIONS[partition])
    torch.testing.assert_close(sum(pieces), u, rtol=0, atol=0)
    mat_u = torch.stack(pieces, dim=1)  # (P, S)
    g_bar, h_bar, d = ref.partition_tensors(prob, directions=pieces)
    torch.testing.assert_close(g_bar, mat_u.T @ g, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h_bar, mat_u.T @ h @ mat_u, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(d, torch.einsum("abc,ai,bj,ck->ijk", t, mat_u, mat_u, mat_u), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_bar.sum(), g @ u, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h_bar.sum(), u @ h @ u, rtol=1e-10, atol=1e-12)


def test_mse_last_layer_third_derivative_vanishes():
    """MSE is quadratic in the last Linear layer: D_iii = 0 exactly there, not elsewhere."""
    net, loss, x, y = _mlp_problem("mse")
    prob = ref.Problem.from_model(net, loss, x, y)
    u = _directions(prob.theta.numel(), 1, seed=6)[0]
    pieces = ref.split_direction(u, prob.layout, PARTITIONS["per-tensor"])
    _, _, d = ref.partition_tensors(prob, directions=pieces)
    diag = torch.diagonal(torch.diagonal(d)).abs()
    assert diag[2] == 0 and diag[3] == 0
    assert diag[0] > 1e-6 and diag[1] > 1e-6


def test_params_subset_in_model_form():
    net, loss, x, y = _mlp_problem("ce")
    full = ref.Problem.from_model(net, loss, x, y)
    sub = ref.Problem.from_model(net, loss, x, y, params=["2.weight"])
    u_sub = _directions(sub.theta.numel(), 1, seed=7)[0]
    u_full = torch.zeros_like(full.theta)
    u_full[next(p.slice for p in full.layout if p.name == "2.weight")] = u_sub
    torch.testing.assert_close(
        ref.third_directional(net, loss, x, y, u=u_sub, v=u_sub, w=u_sub, params=["2.weight"]),
        ref.third_directional(full, u=u_full, v=u_full, w=u_full),
        rtol=1e-12, atol=1e-14,
    )


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda lay: ref.split_direction(torch.zeros(26), lay, [["0.bias"], ["0.bias"]]), "more than one group"),
        (lambda lay: ref.split_direction(torch.zeros(26), lay, [["x"]]), "not in the layout"),
        (lambda lay: ref.split_direction(torch.zeros(26), lay, [[]]), "empty"),
        (lambda lay: ref.split_direction(torch.zeros(3), lay, [["0.bias"]]), "shape"),
        (lambda lay: ref.partition_tensors(lambda t: t.sum(), torch.zeros(2), directions=[]), "at least one"),
        (lambda lay: ref.third_directional(lambda t: t.sum(), torch.zeros(2), u=torch.zeros(2), v=torch.zeros(2),
                                           w=torch.zeros(3)), "w must be"),
    ],
    ids=["repeated", "unknown", "empty-group", "bad-length", "no-directions", "bad-direction"],
)
def test_directional_errors(call, match):
    lay = ref.param_layout(_mlp_problem("mse")[0])
    with pytest.raises(ValueError, match=match):
        call(lay)

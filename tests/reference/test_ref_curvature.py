"""Hessian, GGN and Fisher oracles against closed forms and each other."""

import copy
import zlib
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from curvlab import reference as ref

F64 = torch.float64


@dataclass(frozen=True)
class Case:
    """A tiny model + loss + batch."""

    id: str
    loss: str  # "mse" | "ce" | "bce"
    reduction: str
    hidden: int | None  # None: a single Linear layer
    n: int = 5
    d: int = 3
    k: int = 3

    def build(self):
        g = torch.Generator().manual_seed(zlib.crc32(self.id.encode()))
        if self.hidden is None:
            net = nn.Linear(self.d, self.k)
        else:
            net = nn.Sequential(nn.Linear(self.d, self.hidden), nn.Tanh(), nn.Linear(self.hidden, self.k))
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        x = torch.randn(self.n, self.d, generator=g)
        if self.loss == "mse":
            loss, y = nn.MSELoss(reduction=self.reduction), torch.randn(self.n, self.k, generator=g)
        elif self.loss == "ce":
            loss, y = nn.CrossEntropyLoss(reduction=self.reduction), torch.randint(self.k, (self.n,), generator=g)
        else:  # soft targets in [0, 1]
            loss, y = nn.BCEWithLogitsLoss(reduction=self.reduction), torch.rand(self.n, self.k, generator=g)
        return net, loss, x, y

    def factor(self):
        """Reduction factor c of L = c Σ_n ℓ_n."""
        if self.reduction == "sum":
            return 1.0
        return 1.0 / self.n if self.loss == "ce" else 1.0 / (self.n * self.k)


LINEAR = [Case(f"linear-{loss}-{red}", loss, red, None) for loss in ("mse", "ce", "bce") for red in ("mean", "sum")]
MLP = [Case(f"mlp-{loss}-{red}", loss, red, 4) for loss in ("mse", "ce", "bce") for red in ("mean", "sum")]
ALL = LINEAR + MLP


def _ids(cases):
    return [c.id for c in cases]


def _logits64(net, x):
    return copy.deepcopy(net).double()(x.to(F64)).detach()


def _aug(x):
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1).to(F64)


def _output_curvature(case, logits):
    """Closed-form per-sample Hessian of ℓ_n w.r.t. the outputs, (N, K, K), without c."""
    if case.loss == "mse":
        return 2.0 * torch.eye(case.k, dtype=F64).expand(case.n, case.k, case.k)
    if case.loss == "ce":
        p = logits.softmax(1)
        return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    s = torch.sigmoid(logits)
    return torch.diag_embed(s * (1 - s))


@pytest.mark.parametrize("case", LINEAR, ids=_ids(LINEAR))
def test_linear_hessian_closed_form(case):
    """Linear model: H = c Σ_n M_n ⊗ x̃_n x̃_nᵀ in the folded [W | b] row-major order."""
    net, loss, x, y = case.build()
    logits = _logits64(net, x)
    xa = _aug(x)
    m = _output_curvature(case, logits)
    expected = case.factor() * sum(torch.kron(m[i], torch.outer(xa[i], xa[i])) for i in range(case.n))
    h = ref.hessian(net, loss, x, y)
    torch.testing.assert_close(ref.layer_block(h, net, "", bias="folded"), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_linear_regression_hessian_separate_blocks(reduction):
    """MSE: H_WW = 2c I_K ⊗ XᵀX, H_Wb = 2c I_K ⊗ Xᵀ1, H_bb = 2cN I_K."""
    case = Case(f"linreg-{reduction}", "mse", reduction, None, n=6, d=2, k=3)
    net, loss, x, y = case.build()
    x64, eye = x.to(F64), torch.eye(3, dtype=F64)
    c2 = 2 * case.factor()
    h = ref.hessian(net, loss, x, y)
    lay = ref.param_layout(net)
    torch.testing.assert_close(ref.block(h, lay, "weight"), c2 * torch.kron(eye, x64.T @ x64))
    torch.testing.assert_close(ref.block(h, lay, "weight", "bias"), c2 * torch.kron(eye, x64.sum(0)[:, None]))
    torch.testing.assert_close(ref.block(h, lay, "bias"), c2 * 6 * eye)


@pytest.mark.parametrize("case", LINEAR, ids=_ids(LINEAR))
def test_ggn_equals_hessian_for_linear_models(case):
    net, loss, x, y = case.build()
    torch.testing.assert_close(ref.ggn(net, loss, x, y), ref.hessian(net, loss, x, y), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", MLP, ids=_ids(MLP))
def test_ggn_closed_form_on_mlp(case):
    """GGN = c Σ_n J_nᵀ M_n J_n with J_n from jacobian() of the float64 network."""
    net, loss, x, y = case.build()
    net64, x64 = copy.deepcopy(net).double(), x.to(F64)
    lay = ref.param_layout(net64)
    theta = ref.flatten_params(net64, lay)
    jac = torch.func.jacrev(
        lambda t: torch.func.functional_call(net64, ref.unflatten(t, lay), (x64,))
    )(theta)  # (N, K, P)
    m = _output_curvature(case, net64(x64).detach())
    expected = case.factor() * torch.einsum("nkp,nkl,nlq->pq", jac, m, jac)
    torch.testing.assert_close(ref.ggn(net, loss, x, y), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", ALL, ids=_ids(ALL))
def test_true_fisher_equals_ggn(case):
    net, loss, x, y = case.build()
    torch.testing.assert_close(
        ref.fisher(net, loss, x, y, kind="true"), ref.ggn(net, loss, x, y), rtol=1e-9, atol=1e-11
    )


@pytest.mark.parametrize("case", LINEAR, ids=_ids(LINEAR))
def test_empirical_fisher_closed_form(case):
    """F_emp = c Σ_n v_n v_nᵀ, v_n = ∇_f ℓ_n ⊗ x̃_n (folded order); ∇_f ℓ = 2r, p − e_y, σ − y."""
    net, loss, x, y = case.build()
    logits = _logits64(net, x)
    if case.loss == "mse":
        r = 2 * (logits - y.to(F64))
    elif case.loss == "ce":
        r = logits.softmax(1) - nn.functional.one_hot(y, case.k).to(F64)
    else:
        r = torch.sigmoid(logits) - y.to(F64)
    xa = _aug(x)
    v = torch.stack([torch.kron(r[i], xa[i]) for i in range(case.n)])
    expected = case.factor() * v.T @ v
    emp = ref.fisher(net, loss, x, y, kind="empirical")
    torch.testing.assert_close(ref.layer_block(emp, net, "", bias="folded"), expected, rtol=1e-10, atol=1e-12)


def test_bce_soft_targets_many_outputs_ggn_diag():
    """BCE with soft targets and 7 outputs: output Hessian is diag σ(1−σ)/(N·K), independent of y."""
    case = Case("bce-many", "bce", "mean", 4, n=3, k=7)
    net, loss, x, y = case.build()
    out = ref.output_hessian(net, loss, x, y)
    s = torch.sigmoid(_logits64(net, x)).reshape(-1)
    torch.testing.assert_close(out, torch.diag(s * (1 - s)) / 21, rtol=1e-12, atol=1e-14)
    g1 = ref.ggn(net, loss, x, y)
    torch.testing.assert_close(g1, ref.ggn(net, loss, x, 1 - y), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ref.fisher(net, loss, x, y, kind="true"), g1, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", [ALL[0], MLP[2], MLP[5]], ids=lambda c: c.id)
def test_hessian_symmetric_and_hvp(case):
    net, loss, x, y = case.build()
    h = ref.hessian(net, loss, x, y)
    assert h.dtype == F64
    torch.testing.assert_close(h, h.T, rtol=1e-12, atol=1e-13)
    v = torch.randn(h.shape[0], generator=torch.Generator().manual_seed(1), dtype=F64)
    torch.testing.assert_close(ref.hvp(net, loss, x, y, v=v), h @ v, rtol=1e-10, atol=1e-12)
    # the mlp's Hessian is not its GGN (otherwise the GGN tests above prove nothing)
    if case.hidden is not None:
        assert (h - ref.ggn(net, loss, x, y)).abs().max() > 1e-3


def test_oracles_leave_model_untouched_and_flat_form_agrees():
    case = MLP[1]
    net, loss, x, y = case.build()
    before = [p.detach().clone() for p in net.parameters()]
    prob = ref.Problem.from_model(net, loss, x, y)
    h_model = ref.hessian(net, loss, x, y)
    h_prob = ref.hessian(prob)
    h_flat = ref.hessian(prob.__call__, prob.theta)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    torch.testing.assert_close(h_prob, h_model, rtol=0, atol=0)
    torch.testing.assert_close(h_flat, h_model, rtol=0, atol=0)
    torch.testing.assert_close(ref.gradient(net, loss, x, y), torch.func.grad(prob)(prob.theta))


def test_params_subset_is_sub_block():
    case = MLP[0]
    net, loss, x, y = case.build()
    h = ref.hessian(net, loss, x, y)
    lay = ref.param_layout(net)
    sub = ref.hessian(net, loss, x, y, params=[net[2].weight, "0.bias"])
    idx = torch.cat([torch.arange(p.slice.start, p.slice.stop) for p in lay if p.name in ("0.bias", "2.weight")])
    torch.testing.assert_close(sub, h[idx][:, idx], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ref.ggn(net, loss, x, y, params=["0.bias", "2.weight"]),
                               ref.ggn(net, loss, x, y)[idx][:, idx], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "loss, kind, match",
    [
        (nn.NLLLoss(), "true", "got NLLLoss"),
        (nn.MSELoss(reduction="none"), "true", "reduction='none' for MSELoss"),
        (nn.CrossEntropyLoss(label_smoothing=0.1), "empirical", "label_smoothing"),
        (nn.CrossEntropyLoss(weight=torch.ones(3)), "true", "class weights"),
        (nn.BCEWithLogitsLoss(pos_weight=torch.ones(3)), "true", "pos_weight"),
        (nn.MSELoss(), "monte-carlo", "kind must be"),
    ],
    ids=["nll", "mse-none", "ce-smoothing", "ce-weight", "bce-posweight", "bad-kind"],
)
def test_fisher_rejects(loss, kind, match):
    net = nn.Linear(2, 3)
    y = torch.zeros(4, dtype=torch.long) if isinstance(loss, (nn.NLLLoss, nn.CrossEntropyLoss)) else torch.zeros(4, 3)
    with pytest.raises(ValueError, match=match):
        ref.fisher(net, loss, torch.zeros(4, 2), y, kind=kind)


def test_problem_form_errors():
    with pytest.raises(TypeError, match="the problem must be"):
        ref.hessian(nn.Linear(2, 1), nn.MSELoss())
    with pytest.raises(ValueError, match="flat form"):
        ref.ggn(lambda t: t.sum(), torch.ones(2))
    with pytest.raises(ValueError, match="shape"):
        ref.hvp(lambda t: t.sum(), torch.ones(2), v=torch.ones(3))


def _single(loss, out_shape, target):
    def build():
        torch.manual_seed(11)
        if len(out_shape) == 2:
            net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, out_shape[1]))
            x = torch.randn(1, 3)
        else:  # (1, C, L): a 1x1 convolution over a length-L signal
            net = nn.Sequential(nn.Conv1d(2, out_shape[1], 1), nn.Tanh())
            x = torch.randn(1, 2, out_shape[2])
        return net, loss, x, target

    return build


SINGLE = {
    "mse-mean": _single(nn.MSELoss(), (1, 3), torch.randn(1, 3)),
    "ce-sum": _single(nn.CrossEntropyLoss(reduction="sum"), (1, 3), torch.tensor([2])),
    "ce-soft-targets": _single(nn.CrossEntropyLoss(), (1, 3), torch.tensor([[0.2, 0.5, 0.3]])),
    "ce-spatial": _single(nn.CrossEntropyLoss(), (1, 3, 4), torch.tensor([[0, 2, 1, 1]])),
    "bce-soft-mean": _single(nn.BCEWithLogitsLoss(), (1, 3), torch.tensor([[0.1, 0.9, 0.5]])),
}


@pytest.mark.parametrize("build", list(SINGLE.values()), ids=list(SINGLE))
def test_empirical_fisher_batch_of_one_is_scaled_outer_gradient(build):
    """N = 1: F_emp = (1/c) g gᵀ with g the gradient of the reduced loss."""
    net, loss, x, y = build()
    outputs = net(x).detach().to(F64)
    c = ref.reduction_factor(loss, outputs, y.to(F64) if y.is_floating_point() else y)
    g = ref.gradient(net, loss, x, y)
    torch.testing.assert_close(ref.fisher(net, loss, x, y, kind="empirical"), torch.outer(g, g) / c,
                               rtol=1e-10, atol=1e-13)


def test_true_fisher_rejects_spatial_cross_entropy():
    net, loss, x, y = SINGLE["ce-spatial"]()
    with pytest.raises(ValueError, match=r"outputs of shape \(N, C\)"):
        ref.fisher(net, loss, x, y, kind="true")


def test_fisher_rejects_ignored_targets():
    with pytest.raises(ValueError, match="ignore_index=-100"):
        ref.fisher(nn.Linear(2, 3), nn.CrossEntropyLoss(), torch.zeros(2, 2), torch.tensor([0, -100]),
                   kind="empirical")

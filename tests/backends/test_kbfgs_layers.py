"""K-BFGS / K-BFGS(L) on Linear layers with N-D inputs and on Conv2d (issue 14), float64 oracles.

Conventions under test (``curvlab_plugins.kbfgs.optimizer``): a layer sees
``N`` examples with ``R`` positions each (``NR`` rows ``a``, ``h``).

* Linear: ``A = Σ_rows a aᵀ / (NR)``, ``λ_A = √λ``; ``s`` the row mean of
  ``Δh``, ``y = κ Σ_rows Δ(∂L/∂h)``; LM threshold ``μ₂ = √λ``.
* Conv2d (KFC split): ``A = Σ_rows a aᵀ / N`` (patches), ``λ_A = √(λR)``;
  ``s`` the row mean of ``Δh``, ``y = κ Σ_rows Δ(∂L/∂h) / R``; ``μ₂ = √(λ/R)``.

Every oracle below is brute force (hooks on a deep copy, autograd), no backend code.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from case_oracles import input_rows, refused
from torch import Tensor, nn

import curvlab
from curvlab.curvature.double_damping import double_damping
from curvlab.testing.cases import backend_cases

F64 = torch.float64
LAM, LR, MU, WD = 0.3, 0.3, 0.9, 1e-3


def _seq_model() -> nn.Module:
    """Two Linear layers on (N, T, 5) sequences."""
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))


def _cnn() -> nn.Module:
    """Two Conv2d (padding, stride, one without bias) and a Linear head."""
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(),
                         nn.Conv2d(3, 4, 2, stride=2, bias=False), nn.Flatten(), nn.Linear(16, 3))


# name → (builder, input shape of one example, target shape of one example)
MODELS = {
    "linear-3d": (_seq_model, (6, 5), (6, 3)),
    "linear-4d": (_seq_model, (2, 3, 5), (2, 3, 3)),
    "cnn": (_cnn, (2, 4, 4), (3,)),
}


def _problem(name: str, n: int = 7, seed: int = 0):
    build, xs, ys = MODELS[name]
    torch.manual_seed(seed)
    model = build().to(F64)
    g = torch.Generator().manual_seed(seed + 1)
    return model, torch.randn(n, *xs, generator=g, dtype=F64), torch.randn(n, *ys, generator=g,
                                                                            dtype=F64)


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def _rows(t: Tensor, conv: bool) -> Tensor:
    """Output-side vectors as (NR, out): channel-last for a convolution."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]) if conv else t.reshape(-1, t.shape[-1])


def _oracle_A(module: nn.Module, a: Tensor, homogeneous: bool) -> tuple[Tensor, float, int]:
    """``(A, λ_A, R)`` of one layer from its input ``a`` by brute force."""
    rows = input_rows(module, a, homogeneous)
    R = rows.shape[0] // a.shape[0]
    if isinstance(module, nn.Conv2d):
        return rows.T @ rows / a.shape[0], math.sqrt(LAM * R), R
    return rows.T @ rows / rows.shape[0], math.sqrt(LAM), R


def _pass(model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor):
    """Loss, per-layer inputs, outputs h and ∂L/∂h of one forward/backward (brute force)."""
    ins, outs = {}, {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
            ins[name], outs[name] = args[0].detach(), out
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in _layers(model).items()]
    try:
        loss = loss_fn(model(x), y)
    finally:
        for h in hooks:
            h.remove()
    grads = torch.autograd.grad(loss, list(outs.values()))
    return loss, ins, {n: o.detach() for n, o in outs.items()}, dict(zip(outs, grads))


def _homogeneous(m: nn.Module) -> bool:
    return m.bias is not None and m.bias.requires_grad


def _matrix(m: nn.Module, use_bias: bool) -> Tensor:
    W = m.weight.detach().reshape(m.weight.shape[0], -1)
    return torch.cat([W, m.bias.detach()[:, None]], 1) if use_bias else W


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("name", ["kbfgs", "kbfgsl"])
def test_first_step_and_pair_match_the_brute_force_oracle(name, model_name, reduction):
    """Step 1 is W̃ − α(1−μ)(κ∇W̃ + wW̃)(A + λ_A I)⁻¹ (H_g = I); the stored pair is (1−c)(s, y)."""
    model, x, y = _problem(model_name)
    loss_fn = nn.MSELoss(reduction=reduction)
    ref = copy.deepcopy(model)
    opt = curvlab.create(name, model, loss_fn, lr=LR, damping=LAM, momentum=MU, weight_decay=WD,
                         line_search=False)
    opt.step(curvlab.closure(model, loss_fn, x, y))
    # κ: the paper's loss is the mean over the N examples of the loss summed over their entries
    kappa = y[0].numel() if reduction == "mean" else 1.0 / x.shape[0]
    assert opt.stats["loss_scale"] == pytest.approx(kappa, rel=1e-9)
    loss0, ins, h0, g0 = _pass(ref, loss_fn, x, y)
    params = dict(ref.named_parameters())
    grads = dict(zip(params, torch.autograd.grad(loss_fn(ref(x), y), list(params.values()))))
    _, _, h1, g1 = _pass(model, loss_fn, x, y)
    for lname, m in _layers(ref).items():
        hom = _homogeneous(m)
        A, lam_a, R = _oracle_A(m, ins[lname], hom)
        H_a = torch.linalg.inv(A + lam_a * torch.eye(A.shape[0], dtype=F64))
        grad = grads[f"{lname}.weight"].reshape(m.weight.shape[0], -1)
        if hom:
            grad = torch.cat([grad, grads[f"{lname}.bias"][:, None]], 1)
        M = (1 - MU) * (kappa * grad + WD * _matrix(m, hom))
        new = _layers(model)[lname]
        torch.testing.assert_close(_matrix(new, hom), _matrix(m, hom) - LR * M @ H_a,
                                   rtol=1e-9, atol=1e-12)
        st = opt.curv_state[lname]
        torch.testing.assert_close(st["A"], A, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(st["H_a"], H_a, rtol=1e-9, atol=1e-12)
        conv = isinstance(m, nn.Conv2d)
        s = (_rows(h1[lname], conv) - _rows(h0[lname], conv)).mean(0)
        y_ = kappa * (_rows(g1[lname], conv) - _rows(g0[lname], conv)).sum(0) / (R if conv else 1)
        torch.testing.assert_close(st["s"], (1 - 0.9) * s, rtol=1e-8, atol=1e-13)
        torch.testing.assert_close(st["y"], (1 - 0.9) * y_, rtol=1e-8, atol=1e-13)


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("name", ["kbfgs", "kbfgsl"])
def test_H_a_stays_the_damped_inverse_of_A_on_fixed_inputs(name, model_name):
    """Fixed batch: A is the (position-aware) second moment, H_a (A + λ_A I) = I after every step.

    With the same inputs each step the EMA keeps A, and the Hessian-action
    BFGS updates of H_a must keep it the exact inverse (a wrong A or λ_A
    convention, e.g. a mean where the sum over positions is due, breaks it).
    The first layer's input does not move, so its A is checked at every step.
    """
    model, x, y = _problem(model_name)
    mse = nn.MSELoss()
    opt = curvlab.create(name, model, mse, lr=0.05, damping=LAM)
    first = next(iter(_layers(model)))
    m0 = _layers(model)[first]
    A, lam_a, _ = _oracle_A(m0, x, _homogeneous(m0))
    eye = torch.eye(A.shape[0], dtype=F64)
    for _ in range(5):
        opt.step(curvlab.closure(model, mse, x, y))
        st = opt.curv_state[first]
        torch.testing.assert_close(st["A"], A, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(st["H_a"] @ (A + lam_a * eye), eye, rtol=0, atol=1e-8)
    for lname, st in opt.curv_state.items():  # every layer: H_a is the inverse of its own A
        m = _layers(model)[lname]
        lam_l = math.sqrt(LAM * (1 if isinstance(m, nn.Linear) else _positions(model, lname, x)))
        eye_l = torch.eye(st["A"].shape[0], dtype=F64)
        assert torch.linalg.norm(st["H_a"] @ (st["A"] + lam_l * eye_l) - eye_l) < 0.5


def _positions(model: nn.Module, lname: str, x: Tensor) -> int:
    out = {}

    def hook(module: nn.Module, args: tuple, o: Tensor) -> None:
        out["o"] = o

    h = _layers(model)[lname].register_forward_hook(hook)
    with torch.no_grad():
        model(x)
    h.remove()
    return out["o"].shape[2] * out["o"].shape[3]


@pytest.mark.parametrize("name", ["kbfgs", "kbfgsl"])
def test_conv_1x1_on_1x1_images_equals_the_linear_layer(name):
    """R = 1: a 1×1 convolution is a Linear layer; both trajectories agree for 6 steps."""
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(F64)
    conv = nn.Sequential(nn.Conv2d(4, 5, 1), nn.Tanh(), nn.Conv2d(5, 3, 1), nn.Flatten()).to(F64)
    with torch.no_grad():
        for c, li in ((conv[0], lin[0]), (conv[2], lin[2])):
            c.weight.copy_(li.weight[:, :, None, None])
            c.bias.copy_(li.bias)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(9, 4, generator=g, dtype=F64), torch.randn(9, 3, generator=g, dtype=F64)
    mse = nn.MSELoss()
    opts = [curvlab.create(name, m, mse) for m in (lin, conv)]
    for _ in range(6):
        la = opts[0].step(curvlab.closure(lin, mse, x, y))
        lb = opts[1].step(curvlab.closure(conv, mse, x[:, :, None, None], y))
        torch.testing.assert_close(la, lb, rtol=1e-9, atol=1e-12)
    for c, li in ((conv[0], lin[0]), (conv[2], lin[2])):
        torch.testing.assert_close(c.weight[:, :, 0, 0], li.weight, rtol=1e-8, atol=1e-11)


def test_conv_1x1_statistics_are_the_channel_last_linear_ones():
    """R > 1: a 1×1 conv records the rows of a Linear on channel-last pixels; its A is R times."""
    from curvlab_plugins.kbfgs.capture import PreactivationCapture

    torch.manual_seed(0)
    lin, conv = nn.Linear(3, 2).to(F64), nn.Conv2d(3, 2, 1).to(F64)
    with torch.no_grad():
        conv.weight.copy_(lin.weight[:, :, None, None])
        conv.bias.copy_(lin.bias)
    x = torch.randn(4, 3, 5, 6, dtype=F64)
    y = torch.randn(4, 2, 5, 6, dtype=F64)
    mse = nn.MSELoss(reduction="sum")
    recs = []
    for layer, xi, yi in ((lin, x.permute(0, 2, 3, 1), y.permute(0, 2, 3, 1)), (conv, x, y)):
        with PreactivationCapture({"0": layer}).recording(inputs=True) as rec:
            mse(layer(xi), yi).backward()
        recs.append(rec)
    assert recs[0].positions == recs[1].positions == {"0": 30}
    for key in ("x", "h_mean", "g_sum"):
        torch.testing.assert_close(recs[1].records["0"][key], recs[0].records["0"][key],
                                   rtol=1e-12, atol=1e-12)
    o_lin = curvlab.create("kbfgs", nn.Sequential(lin), mse)
    o_conv = curvlab.create("kbfgs", nn.Sequential(conv), mse)
    o_lin.step(curvlab.closure(o_lin.model, mse, x.permute(0, 2, 3, 1), y.permute(0, 2, 3, 1)))
    o_conv.step(curvlab.closure(o_conv.model, mse, x, y))
    torch.testing.assert_close(o_conv.curv_state["0"]["A"], 30 * o_lin.curv_state["0"]["A"],
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("model_name", ["linear-3d", "cnn"])
def test_secant_equation_holds_per_layer(model_name):
    """After each step, H_g ỹ = s̃ for the damped pair (μ₂ = √(λ/R) on Conv2d layers)."""
    model, x, y = _problem(model_name)
    mse = nn.MSELoss()
    opt = curvlab.create("kbfgs", model, mse, lr=0.3, damping=LAM)
    for _ in range(5):
        H_prev = {k: v["H_g"].clone() for k, v in opt.curv_state.items()}
        opt.step(curvlab.closure(model, mse, x, y))
        for k, st in opt.curv_state.items():
            m = _layers(model)[k]
            R = _positions(model, k, x) if isinstance(m, nn.Conv2d) else 1
            H0 = H_prev.get(k, torch.eye(st["H_g"].shape[0], dtype=F64))
            pair = double_damping(st["s"], st["y"], H0 @ st["y"], mu1=0.2, mu2=math.sqrt(LAM / R))
            assert bool(pair.valid)
            torch.testing.assert_close(st["H_g"] @ pair.y, pair.s, rtol=1e-8, atol=1e-11)


#: Case-table rows with Conv2d layers or Linear layers on N-D inputs (the 2-D Linear rows are
#: checked step by step in test_kbfgs.py).
_MODERN = {"digits-cnn", "resnet-bn", "linear-3d", "tiny-gpt", "tiny-gpt-tied", "shared-linear", "mha"}


@pytest.mark.parametrize("name", ["kbfgs", "kbfgsl"])
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in
                                  backend_cases(where=lambda c: c.model.name in _MODERN
                                                and c.loss.name == "mse" and c.reduction == "mean")])
def test_case_table_rows_train(case, name):
    """Case-table rows with Conv2d / N-D Linear layers (MSE, mean; every loss and reduction
    of them is checked at step 1 in test_kbfgs.py): 10 steps, finite, the loss decreases."""
    problem = case.instantiate()

    def build():
        return curvlab.create(name, problem.model, problem.loss_fn, lr=0.1)

    if refused(case, name, build):
        return
    opt = build()
    closure = curvlab.closure(problem.model, problem.loss_fn, problem.inputs, problem.targets)
    losses = [float(opt.step(closure).detach()) for _ in range(10)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    assert opt.stats["skipped_steps"] == 0


@pytest.mark.parametrize("name", ["kbfgs", "kbfgsl"])
def test_coverage_lists_every_layer_block_and_frozen_parameter(name):
    model = _cnn()
    model[4].bias.requires_grad_(False)
    opt = curvlab.create(name, model, nn.MSELoss())
    assert opt.coverage().kinds() == {
        "0.weight": "kronecker-expand", "0.bias": "kronecker-expand",
        "2.weight": "kronecker-expand", "4.weight": "kronecker-expand", "4.bias": "frozen"}
    assert [r.block for r in opt.coverage()][:3] == ["0", "0", "2"]

"""K-FAC expand/reduce for Linear layers on (B, T, D) inputs: dense-GGN exactness and curvlinops.

Eschenhagen et al. (NeurIPS 2023): expand is exact for a deep linear network
applied per position with a loss summed (or averaged) over positions;
reduce is exact when the positions are mean-pooled before the loss. The
other approximation is *not* exact there (checked too, so the test can fail).
Where curvlinops' ``KFACLinearOperator`` computes the same factors (models
whose positions do not interact; type-2 = our ``"exact"``, empirical), the
dense operators agree to rtol 1e-6.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvlab import reference as ref
from curvlab.curvature.hook_engine import HookEngine

curvlinops = pytest.importorskip("curvlinops")

DT = torch.float64


class MeanPool(nn.Module):
    """Mean over the position dimension 1."""

    def forward(self, x):
        return x.mean(dim=1)


class ClassFirst(nn.Module):
    """(B, T, C) → (B, C, T), the layout CrossEntropyLoss expects."""

    def forward(self, x):
        return x.transpose(1, 2)


def capture(model, loss_fn, x, y, *, fisher_type="exact", kfac_approx="expand", bias_layout="separate"):
    engine = HookEngine(model, loss_fn, bias_layout=bias_layout, seed=0)
    with engine.capture(fisher_type=fisher_type, kfac_approx=kfac_approx) as cap:
        model.zero_grad()
        loss_fn(model(x), y).backward()
    return cap.factors


def deep_linear(pool: bool, bias: bool = True):
    torch.manual_seed(0)
    layers = [nn.Linear(3, 4, bias=bias), nn.Linear(4, 2, bias=bias)]
    if pool:
        layers.insert(1, MeanPool())
    return nn.Sequential(*layers).to(DT)


EXACT = [
    pytest.param(pool, approx, red, layout, id=f"{'pooled' if pool else 'per-position'}-{approx}-{red}-{layout}")
    for pool, approx in ((False, "expand"), (True, "reduce"))
    for red in ("sum", "mean")
    for layout in ("separate", "homogeneous")
]


@pytest.mark.parametrize("pool, approx, reduction, layout", EXACT)
def test_exact_regime_equals_dense_ggn(pool, approx, reduction, layout):
    model = deep_linear(pool)
    torch.manual_seed(1)
    x = torch.randn(5, 6, 3, dtype=DT)
    y = torch.randn(5, 2, dtype=DT) if pool else torch.randn(5, 6, 2, dtype=DT)
    loss_fn = nn.MSELoss(reduction=reduction)
    factors = capture(model, loss_fn, x, y, kfac_approx=approx, bias_layout=layout)
    ggn = ref.ggn(model, loss_fn, x, y)
    bias = "folded" if layout == "homogeneous" else "separate"
    for name in ("0", "2" if pool else "1"):
        block = ref.layer_block(ggn, model, name, bias=bias)
        ours = factors[name].dense()
        if layout == "separate":  # K-FAC drops the weight-bias cross terms in this layout
            w = model.get_submodule(name).weight.numel()
            block = torch.block_diag(block[:w, :w], block[w:, w:])
        torch.testing.assert_close(ours, block, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("pool, approx", [(False, "reduce"), (True, "expand")], ids=["per-position-reduce", "pooled-expand"])
def test_other_approximation_is_not_exact_there(pool, approx):
    model = deep_linear(pool, bias=False)
    torch.manual_seed(1)
    x = torch.randn(5, 6, 3, dtype=DT)
    y = torch.randn(5, 2, dtype=DT) if pool else torch.randn(5, 6, 2, dtype=DT)
    loss_fn = nn.MSELoss(reduction="sum")
    factors = capture(model, loss_fn, x, y, kfac_approx=approx)
    block = ref.layer_block(ref.ggn(model, loss_fn, x, y), model, "0")
    err = (factors["0"].dense() - block).norm() / block.norm()
    assert err > 1e-2


# ---------------------------------------------------------------- curvlinops
def tanh_mlp(loss: str):
    torch.manual_seed(0)
    layers = [nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)]
    if loss == "ce":
        layers.append(ClassFirst())
    return nn.Sequential(*layers).to(DT)


def small_cnn(loss: str):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 2, stride=2), nn.Flatten(),
        nn.Linear(8, 3),
    ).to(DT)


LOSSES = {"mse": nn.MSELoss, "ce": nn.CrossEntropyLoss, "bce": nn.BCEWithLogitsLoss}


def targets(loss: str, shape: tuple[int, ...]):
    torch.manual_seed(2)
    if loss == "ce":
        return torch.randint(0, 3, shape[:1] + shape[1:-1])
    if loss == "bce":  # curvlinops' type-2 takes 0/1 targets only (the curvature ignores them)
        return torch.rand(shape, dtype=DT).round()
    return torch.randn(shape, dtype=DT)


CURVLINOPS = [
    pytest.param(model, loss, red, approx, ft, id=f"{model}-{loss}-{red}-{approx}-{ft}")
    for model in ("seq-mlp", "cnn")
    for loss in ("mse", "ce", "bce")
    for red in ("mean", "sum")
    for approx in ("expand", "reduce")
    for ft in ("exact", "empirical")
    # curvlinops' type-2 batches a Hessian-root column over all positions, so with reduce on
    # sequence outputs its G has cross-position terms that E[MC] lacks; ours is E[MC]
    # (test_factor_engines.py::test_mc_expectation_is_exact); not the same factor there
    if not (model == "seq-mlp" and approx == "reduce" and ft == "exact")
]


@pytest.mark.parametrize("model_name, loss, reduction, approx, fisher_type", CURVLINOPS)
def test_matches_curvlinops(model_name, loss, reduction, approx, fisher_type):
    from curvlinops import KFACLinearOperator

    if model_name == "seq-mlp":
        model = tanh_mlp(loss)
        torch.manual_seed(1)
        x = torch.randn(4, 5, 3, dtype=DT)
        y = targets(loss, (4, 5, 3))
    else:
        model = small_cnn(loss)
        torch.manual_seed(1)
        x = torch.randn(4, 2, 4, 4, dtype=DT)
        y = targets(loss, (4, 3))
    loss_fn = LOSSES[loss](reduction=reduction)
    factors = capture(model, loss_fn, x, y, fisher_type=fisher_type, kfac_approx=approx)
    params = [p for p in model.parameters() if p.requires_grad]
    op = KFACLinearOperator(
        model, loss_fn, params, [(x, y)], fisher_type={"exact": "type-2", "empirical": "empirical"}[fisher_type],
        kfac_approx=approx, separate_weight_and_bias=True, check_deterministic=False,
    )
    theirs = op @ torch.eye(sum(p.numel() for p in params), dtype=DT)
    ours = torch.block_diag(*(f.dense() for f in factors.values()))
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-10 * theirs.abs().max())

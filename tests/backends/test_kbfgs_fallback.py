"""K-BFGS / K-BFGS(L) with the declared fallback (curvlab.curvature.fallback) for parameters
without a block: exactly torch's Adam/SGD on them, refusal with fallback="error", coverage().
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import curvlab
from curvlab.curvature.fallback import FallbackWarning
from curvlab.testing.cases import ResNetBlockBN, TinyGPT

F64 = torch.float64


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, 2)).to(F64)


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 3, generator=g, dtype=F64), torch.randn(16, 2, generator=g, dtype=F64)


def _build(name, model, loss_fn, **hp):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        return curvlab.create(name, model, loss_fn, **hp)


def _replay(cls, start, grads, **kw):
    p = nn.Parameter(start.clone())
    opt = cls([p], **kw)
    for g in grads:
        p.grad = g
        opt.step()
    return p.detach()


@pytest.mark.parametrize("name", ["kbfgs", "kbfgsl"])
@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_fallback_parameters_follow_torch_optimizer_exactly(name, kind):
    """The LayerNorm's weight gets torch.optim.Adam's (or SGD's) trajectory on the gradients at θ."""
    model, mse = _net(), nn.MSELoss()
    hp = dict(lr=0.1, weight_decay=0.0, line_search=False, fallback=kind, fallback_lr=0.05)
    opt = _build(name, model, mse, **hp)
    x, y = _batch()
    start, grads = model[1].weight.detach().clone(), []
    for _ in range(5):
        opt.step(curvlab.closure(model, mse, x, y))
        grads.append(model[1].weight.grad.detach().clone())
    if kind == "adam":
        want = _replay(torch.optim.Adam, start, grads, lr=0.05)
    else:
        want = _replay(torch.optim.SGD, start, grads, lr=0.05, momentum=0.9)
    torch.testing.assert_close(model[1].weight.detach(), want, rtol=1e-12, atol=1e-14)
    kinds = opt.coverage().kinds()
    assert kinds["1.weight"] == kinds["1.bias"] == f"fallback-{kind}"
    assert kinds["0.weight"] == kinds["3.bias"] == "kronecker-expand"


@pytest.mark.parametrize("name", ["kbfgs", "kbfgsl"])
def test_fallback_error_refuses_naming_the_layer_and_one_warning_otherwise(name):
    with pytest.raises(ValueError, match=r"1\.weight .*LayerNorm \(model\.1\)"):
        curvlab.create(name, _net(), nn.MSELoss(), fallback="error")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = curvlab.create(name, _net(), nn.MSELoss())
        x, y = _batch()
        for _ in range(3):
            opt.step(curvlab.closure(opt.model, opt.loss_fn, x, y))
    assert [type(w.message) for w in caught] == [FallbackWarning]


def test_frozen_weight_with_trainable_bias_routes_the_bias_to_the_fallback():
    model = _net()
    model[0].weight.requires_grad_(False)
    opt = _build("kbfgs", model, nn.MSELoss())
    kinds = opt.coverage().kinds()
    assert kinds["0.weight"] == "frozen" and kinds["0.bias"] == "fallback-adam"
    w0 = model[0].weight.detach().clone()
    x, y = _batch()
    opt.step(curvlab.closure(model, opt.loss_fn, x, y))
    assert torch.equal(model[0].weight, w0)


@pytest.mark.parametrize(("build", "shape", "vocab"), [
    pytest.param(TinyGPT, (4,), 11, id="tiny-gpt"),
    pytest.param(ResNetBlockBN, (1, 6, 6), None, id="resnet-bn"),
])
@pytest.mark.parametrize("name", ["kbfgs", "kbfgsl"])
def test_modern_models_train_with_the_fallback(name, build, shape, vocab):
    torch.manual_seed(0)
    model = build().to(F64)
    g = torch.Generator().manual_seed(2)
    if vocab:
        x = torch.randint(0, vocab, (6, *shape), generator=g)
        y = torch.randint(0, vocab, (6 * shape[0],), generator=g)
    else:
        x = torch.randn(6, *shape, generator=g, dtype=F64)
        y = torch.randint(0, 3, (6,), generator=g)
    ce = nn.CrossEntropyLoss()
    opt = _build(name, model, ce, lr=0.1)
    losses = [float(opt.step(curvlab.closure(model, ce, x, y)).detach()) for _ in range(15)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    kinds = opt.coverage().kinds()
    norms = [k for k in kinds if k.startswith(("block.ln", "ln_f", "bn"))]
    assert norms and all(kinds[k] == "fallback-adam" for k in norms)

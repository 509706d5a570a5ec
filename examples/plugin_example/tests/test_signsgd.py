"""Closed-form checks of the update rule, against the formulas in the module docstring."""

import pytest
import torch

import curvlab

CASES = [
    # (id, hparams, steps)
    ("signsgd", {"lr": 0.1, "momentum": 0.0}, 3),
    ("signum", {"lr": 0.05, "momentum": 0.9}, 4),
    ("weight-decay", {"lr": 0.1, "momentum": 0.5, "weight_decay": 0.2}, 3),
]


def _reference(theta, grads, lr, momentum=0.9, weight_decay=0.0):
    m = torch.zeros_like(theta)
    for g in grads:
        m = momentum * m + (1 - momentum) * g
        theta = (1 - lr * weight_decay) * theta - lr * torch.sign(m)
    return theta


@pytest.mark.parametrize("hparams,steps", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_matches_formula(hparams, steps):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    loss_fn = torch.nn.MSELoss()
    opt = curvlab.create("signsgd", model, loss_fn, **hparams)
    theta0 = torch.cat([p.detach().flatten() for p in model.parameters()]).double()
    grads = []
    for _ in range(steps):
        x, y = torch.randn(5, 3), torch.randn(5, 2)
        opt.step(curvlab.closure(model, loss_fn, x, y))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]).double())
    theta = torch.cat([p.detach().flatten() for p in model.parameters()]).double()
    expected = _reference(theta0, grads, **hparams)
    torch.testing.assert_close(theta, expected, rtol=0, atol=1e-6)


def test_registered_by_entry_point():
    info = curvlab.info("SignSGD")
    assert info.cls.__module__ == "curvlab_signsgd"
    assert info.schema["lr"].default == 1e-3


def test_docstring_examples():
    import doctest

    import curvlab_signsgd

    assert doctest.testmod(curvlab_signsgd).failed == 0

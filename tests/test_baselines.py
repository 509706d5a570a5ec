"""The SGD and Adam baselines follow torch.optim step for step (the gold standard)."""

import pytest
import torch

import curvlab

CASES = [
    ("sgd", torch.optim.SGD, {"lr": 0.1}),
    ("sgd", torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
    ("sgd", torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "dampening": 0.5, "weight_decay": 1e-2}),
    ("sgd", torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ("adam", torch.optim.Adam, {"lr": 1e-2}),
    ("adam", torch.optim.Adam, {"lr": 1e-2, "betas": (0.8, 0.99), "weight_decay": 1e-2}),
    ("adam", torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 1e-1, "decoupled": True}),
]


def _ids(case):
    name, _, hp = case
    return name + "-" + "-".join(f"{k}{v}" for k, v in hp.items())


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_matches_torch_optim(case):
    name, torch_cls, hp = case
    torch_hp = {k: v for k, v in hp.items() if k != "decoupled"}
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    b = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    b.load_state_dict(a.state_dict())
    loss_fn = torch.nn.CrossEntropyLoss()
    ours = curvlab.create(name, a, loss_fn, **hp)
    ref = torch_cls(b.parameters(), **torch_hp)
    gen = torch.Generator().manual_seed(1)
    for _ in range(25):
        x = torch.randn(16, 5, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 3, (16,), generator=gen)
        ours.step(curvlab.closure(a, loss_fn, x, y))

        def ref_closure(x=x, y=y):
            ref.zero_grad()
            loss = loss_fn(b(x), y)
            loss.backward()
            return loss

        ref.step(ref_closure)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_nesterov_needs_momentum():
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        curvlab.create("sgd", torch.nn.Linear(2, 2), nesterov=True)


def test_works_without_closure_like_torch():
    model = torch.nn.Linear(2, 1)
    opt = curvlab.create("sgd", model, lr=0.1)
    model(torch.ones(1, 2)).sum().backward()
    before = model.weight.detach().clone()
    assert opt.step() is None
    torch.testing.assert_close(model.weight, before - 0.1 * torch.ones(1, 2))

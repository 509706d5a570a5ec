"""The SGD, Adam and RMSprop baselines follow torch.optim step for step (the gold standard)."""

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
    ("rmsprop", torch.optim.RMSprop, {"lr": 1e-2}),
    ("rmsprop", torch.optim.RMSprop, {"lr": 1e-3, "alpha": 0.9, "eps": 1e-4, "weight_decay": 1e-2}),
    ("rmsprop", torch.optim.RMSprop, {"lr": 1e-3, "momentum": 0.9}),
    ("rmsprop", torch.optim.RMSprop, {"lr": 1e-3, "momentum": 0.5, "centered": True}),
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


SPARSE = [
    ("plain", {"lr": 0.1}),
    ("momentum", {"lr": 0.1, "momentum": 0.9}),
    ("dampening", {"lr": 0.1, "momentum": 0.9, "dampening": 0.5}),
    ("nesterov", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
]


@pytest.mark.parametrize("hp", [c[1] for c in SPARSE], ids=[c[0] for c in SPARSE])
def test_sgd_with_sparse_embedding_gradients_matches_torch(hp):
    """nn.Embedding(sparse=True): the same numbers as torch.optim.SGD, step for step."""
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Embedding(12, 3, sparse=True), torch.nn.Flatten(),
                            torch.nn.Linear(6, 2)).double()
    b = torch.nn.Sequential(torch.nn.Embedding(12, 3, sparse=True), torch.nn.Flatten(),
                            torch.nn.Linear(6, 2)).double()
    b.load_state_dict(a.state_dict())
    loss_fn = torch.nn.CrossEntropyLoss()
    ours = curvlab.create("sgd", a, loss_fn, **hp)
    ref = torch.optim.SGD(b.parameters(), **hp)
    gen = torch.Generator().manual_seed(2)
    for _ in range(5):
        x, y = torch.randint(0, 12, (4, 2), generator=gen), torch.randint(0, 2, (4,), generator=gen)
        ours.step(curvlab.closure(a, loss_fn, x, y))
        assert a[0].weight.grad.is_sparse
        ref.zero_grad()
        loss_fn(b(x), y).backward()
        ref.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_sparse_gradients_refused_clearly():
    model = torch.nn.Sequential(torch.nn.Embedding(5, 2, sparse=True), torch.nn.Flatten(),
                                torch.nn.Linear(2, 1))
    with pytest.raises(ValueError, match=r"adam does not support sparse gradients; Embedding at model.0"):
        curvlab.create("adam", model)
    with pytest.raises(ValueError, match=r"weight_decay must be 0 for Embedding at model.0"):
        curvlab.create("sgd", model, weight_decay=0.1)
    # without the model the module is unknown: the step names the parameter
    emb = torch.nn.Embedding(5, 2, sparse=True)
    opt = curvlab.create("adam", list(emb.parameters()))
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match=r"adam does not support sparse gradients; parameter 0"):
        opt.step()


@pytest.mark.parametrize("name", ["sgd", "adam", "rmsprop"])
def test_overflowing_lr_skips_the_step_instead_of_writing_inf(name):
    from curvlab import NonFiniteStepWarning

    model = torch.nn.Linear(3, 2)
    opt = curvlab.create(name, model, lr=1e38)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        closure = curvlab.closure(model, torch.nn.MSELoss(), torch.full((4, 3), 1e3),
                                  torch.zeros(4, 2))
        with pytest.warns(NonFiniteStepWarning, match="overflow"):
            opt.step(closure)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert opt.stats["skipped_steps"] == 3 and opt.stats["steps"] == 0

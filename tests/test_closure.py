"""The training-loop contract: closure options and how optimizers ask for them."""

import pytest
import torch

import curvlab
from curvlab.closure import call_closure


def test_loss_closure_options():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x, y = torch.randn(4, 3), torch.randn(4, 1)
    x2, y2 = torch.randn(4, 3), torch.randn(4, 1)
    c = curvlab.closure(model, torch.nn.MSELoss(), x, y, batches=iter([(x2, y2)]))
    loss = c(backward=False)
    assert model.weight.grad is None and loss.requires_grad
    (g,) = torch.autograd.grad(c(backward=False, fresh=True), model.weight)
    expected = torch.autograd.grad(torch.nn.functional.mse_loss(model(x2), y2), model.weight)[0]
    torch.testing.assert_close(g, expected)
    c(create_graph=True)
    assert model.weight.grad.requires_grad  # graph kept for Hessian-vector products
    assert c.evaluations == 3


def test_plain_closure_works_when_nothing_special_is_needed():
    assert call_closure(lambda: 1.5, backward=True, create_graph=False, fresh=False) == 1.5


def test_needed_option_on_plain_closure_is_a_clear_error():
    with pytest.raises(ValueError, match=r"needs a closure accepting fresh=\.\.\. \(fresh=True: it evaluates the loss on a separate mini-batch.*Build one with curvlab.closure\(model, loss_fn, inputs, targets, batches=\.\.\.\)"):
        call_closure(lambda: 1.0, who="demo", fresh=True)


def test_kwargs_closure_receives_options():
    seen = {}

    def custom(**opts):
        seen.update(opts)
        return 0.0

    call_closure(custom, backward=False, fresh=True)
    assert seen == {"backward": False, "fresh": True}


def test_requires_closure_is_enforced():
    from curvlab_plugins.baselines import SGD

    class NeedsClosure(SGD):
        meta = SGD.meta.__class__(summary="x", requires_closure=True)

    opt = NeedsClosure(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"needs step\(closure\)"):
        opt.step()


def test_state_dict_without_curvlab_entry_is_rejected():
    model = torch.nn.Linear(2, 2)
    opt = curvlab.create("sgd", model)
    torch_sd = torch.optim.SGD(model.parameters(), lr=0.1).state_dict()
    with pytest.raises(ValueError, match="no 'curvlab' entry"):
        opt.load_state_dict(torch_sd)


@pytest.mark.parametrize("name,torch_cls,hp", [
    ("sgd", torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    ("adam", torch.optim.Adam, {"lr": 0.01}),
], ids=["sgd", "adam"])
def test_parameter_outside_the_model_follows_torch_optim(name, torch_cls, hp):
    """A learnable shift used only by the loss: curvlab.closure clears its gradient too."""
    torch.manual_seed(0)
    a = torch.nn.Linear(3, 2).double()
    b = torch.nn.Linear(3, 2).double()
    b.load_state_dict(a.state_dict())
    shift_a = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    shift_b = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    ce = torch.nn.CrossEntropyLoss()
    ours = curvlab.create(name, a, params=[*a.parameters(), shift_a], **hp)
    ref = torch_cls([*b.parameters(), shift_b], **hp)
    gen = torch.Generator().manual_seed(1)
    for _ in range(6):
        x = torch.randn(8, 3, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 2, (8,), generator=gen)
        ours.step(curvlab.closure(a, lambda out, t: ce(out + shift_a, t), x, y))
        ref.zero_grad()
        ce(b(x) + shift_b, y).backward()
        ref.step()
    torch.testing.assert_close(shift_a, shift_b, rtol=1e-12, atol=1e-12)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_graph_leaves_finds_every_tensor_the_backward_writes():
    from curvlab.closure import graph_leaves

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh(), torch.nn.Linear(2, 1))
    free = torch.ones(1, requires_grad=True)
    loss = (model(torch.ones(3, 2)) * free).sum() + model[0].weight.sum()  # a shared leaf
    leaves = graph_leaves(loss)
    assert {id(t) for t in leaves} == {id(p) for p in model.parameters()} | {id(free)}
    assert len(leaves) == 5

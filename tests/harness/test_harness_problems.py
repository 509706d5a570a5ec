"""Problems: determinism (data, init, batch order), identical stream for every optimizer."""

import numpy as np
import pytest
import torch

import curvlab
from curvlab.harness.config import RunConfig
from curvlab.harness.problems import BatchStream, available_problems, load_problem
from curvlab.harness.problems.idx import write_idx
from curvlab.harness.runner import FRESH_SEED_OFFSET, execute
from curvlab_plugins.baselines import SGD, Adam

BUILTIN = ["digitsmlp", "digitscnn", "digitsautoencoder", "curvesautoencoder",
           "teacherstudent", "quadratic", "mnistmlp", "mnistautoencoder"]
ALLOWED = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ReLU, torch.nn.Sigmoid, torch.nn.Tanh,
           torch.nn.Flatten, torch.nn.MaxPool2d)
LOSSES = (torch.nn.MSELoss, torch.nn.CrossEntropyLoss, torch.nn.BCEWithLogitsLoss)


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mnist")
    rng = np.random.RandomState(0)
    for prefix, n in (("train", 40), ("t10k", 12)):
        write_idx(d / f"{prefix}-images-idx3-ubyte.gz", rng.randint(0, 256, (n, 28, 28)).astype(np.uint8))
        write_idx(d / f"{prefix}-labels-idx1-ubyte", rng.randint(0, 10, n).astype(np.uint8))
    return str(d)


def _problem(name, mnist_dir):
    return load_problem(name, small=True, data_dir=mnist_dir if name.startswith("mnist") else None)


def test_every_builtin_registered():
    assert set(BUILTIN) <= set(available_problems())


@pytest.mark.parametrize("name", BUILTIN)
def test_data_init_and_order_are_seeded(name, mnist_dir):
    p = _problem(name, mnist_dir)
    d1, d2 = p.load_data(), p.load_data()
    for a, b in zip((d1.x_train, d1.y_train, d1.x_test), (d2.x_train, d2.y_train, d2.x_test)):
        assert torch.equal(a, b)
    m1, m2, m3 = p.init_model(5), p.init_model(5), p.init_model(6)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, c) for a, c in zip(m1.parameters(), m3.parameters()))
    s1, s2 = (BatchStream(d1.x_train, d1.y_train, p.batch_size, seed=3) for _ in range(2))
    for _ in range(3):
        (xa, ya), (xb, yb) = next(s1), next(s2)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("name", BUILTIN)
def test_model_uses_only_backpack_friendly_modules(name, mnist_dir):
    p = _problem(name, mnist_dir)
    model = p.init_model(0)
    assert isinstance(model, torch.nn.Sequential)
    for m in model:
        assert isinstance(m, ALLOWED), f"{name}: {type(m).__name__}"
        assert not getattr(m, "inplace", False)
    loss = p.loss_fn()
    assert isinstance(loss, LOSSES) and loss.reduction == "mean"
    d = p.load_data()
    out = model(d.x_train[:4])
    value = float(loss(out, d.y_train[:4]).detach())
    assert np.isfinite(value)


def test_batch_stream_is_an_epoch_permutation():
    x = torch.arange(10.0)
    s = BatchStream(x, x, 3, seed=0)
    epoch = torch.cat([next(s)[0] for _ in range(3)])  # 3 full batches, last 1 dropped
    assert len(set(epoch.tolist())) == 9


def test_quadratic_optimum_is_least_squares():
    p = load_problem("quadratic")
    d = p.load_data().to("cpu", torch.float64)
    a = torch.cat([d.x_train, torch.ones(d.n_train, 1, dtype=torch.float64)], 1)
    sol = torch.linalg.lstsq(a, d.y_train).solution
    grad = a.T @ (a @ sol - d.y_train)
    assert grad.abs().max() < 1e-6
    assert abs(p.optimum - float(((a @ sol - d.y_train) ** 2).mean())) < 1e-6


def _spy(base):
    class Spy(base):
        """Records fingerprints of the initial weights and of every batch it is given."""

        name = "spy" + base.name

        def _setup(self):
            super()._setup()
            w = torch.cat([p.detach().flatten() for p in self.model.parameters()])
            self.stats["init"] = float((w * torch.arange(1, len(w) + 1)).sum())
            self.stats["data"] = 0.0
            self.stats["fresh"] = 0.0

        def _update(self, closure, loss):
            x = closure.inputs
            self.stats["data"] += float((x.flatten() * torch.arange(1, x.numel() + 1)).sum()) * (
                self.stats["steps"] + 1)
            xf, _ = closure.batches() if callable(closure.batches) else next(closure.batches)
            self.stats["fresh"] += float(xf.sum()) * (self.stats["steps"] + 1)
            super()._update(closure, loss)

    return Spy


@pytest.mark.parametrize("seed", [0, 1])
def test_every_optimizer_sees_the_same_init_and_stream(seed):
    spies = [_spy(SGD), _spy(Adam)]
    for cls in spies:
        curvlab.register(cls.name, cls, replace=True)
    try:
        stats = []
        for cls, hp in zip(spies, ({"lr": 0.1}, {"lr": 0.01})):
            cfg = RunConfig("digitsmlp", cls.name, hp, seed=seed, steps=6, eval_every=3)
            r = execute(cfg)
            assert r.status == "done", r.error
            stats.append(r.stats)
    finally:
        for cls in spies:
            curvlab.unregister(cls.name)
    assert stats[0]["init"] == stats[1]["init"]
    assert stats[0]["data"] == stats[1]["data"]
    assert stats[0]["fresh"] == stats[1]["fresh"]
    # and they equal what the problem itself produces for this seed
    p = load_problem("digitsmlp")
    d = p.load_data()
    w = torch.cat([q.detach().flatten() for q in p.init_model(seed).parameters()])
    assert stats[0]["init"] == float((w * torch.arange(1, len(w) + 1)).sum())
    s = BatchStream(d.x_train, d.y_train, p.batch_size, seed)
    f = BatchStream(d.x_train, d.y_train, p.batch_size, seed + FRESH_SEED_OFFSET)
    data = fresh = 0.0
    for k in range(6):
        x = next(s)[0]
        data += float((x.flatten() * torch.arange(1, x.numel() + 1)).sum()) * (k + 1)
        fresh += float(next(f)[0].sum()) * (k + 1)
    assert stats[0]["data"] == data and stats[0]["fresh"] == fresh

"""The pytorch-optimizer bridge: same trajectory as the library, state, RNG, Muon split, absence."""

import copy
import importlib
import importlib.metadata as md
import inspect
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import curvlab
from curvlab.curvature.rng import derive_seed
from curvlab.optimizer import NonFiniteStepWarning
from curvlab.testing.conformance import assert_state_equal

po = pytest.importorskip("pytorch_optimizer")

from curvlab_plugins.peers import SOAP, AdaHessian, Kron, Muon, Shampoo, SophiaH  # noqa: E402
from curvlab_plugins.peers.muon_split import muon_mask  # noqa: E402

PEERS = [SOAP, Shampoo, Kron, AdaHessian, SophiaH, Muon]
NAMES = ["soap", "shampoo", "kron", "adahessian", "sophiah", "muon"]

# name -> non-default hparams exercising the main knobs (same for bridge and library)
CASES = {
    "soap": {"lr": 1e-2, "precondition_frequency": 3},
    # matrix_eps 1e-3: at 1e-6 the library's own SVD meets NaN on some BLAS kernels
    "shampoo": {"lr": 1e-2, "momentum": 0.5, "preconditioning_compute_steps": 2, "matrix_eps": 1e-3},
    "kron": {"lr": 1e-2, "balance_prob": 0.5, "pre_conditioner_update_probability": 0.5},
    "adahessian": {"lr": 0.1, "update_period": 2},
    "sophiah": {"lr": 0.05, "update_period": 3, "p": 0.5},
    "muon": {"lr": 0.02, "adamw_lr": 1e-3},
}


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))


def _batches(n=20):
    gen = torch.Generator().manual_seed(5)
    return [(torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen))
            for _ in range(n)]


def _library(name, model, hp):
    """The same optimizer built directly from pytorch_optimizer (ground truth)."""
    if name != "muon":
        return getattr(po, curvlab.info(name).cls.inner_class)(model.parameters(), **hp)
    m = model
    hidden = [m[0].weight, m[2].weight]                     # output layer m[4] -> AdamW
    rest = [m[0].bias, m[2].bias, m[4].weight, m[4].bias]
    return po.Muon([{"params": hidden, "use_muon": True},
                    {"params": rest, "use_muon": False}],
                   lr=hp["lr"], adamw_lr=hp["adamw_lr"])


@pytest.mark.parametrize("name", NAMES)
def test_same_trajectory_as_pytorch_optimizer(name):
    """20 steps with an LR schedule: bridged weights equal the library's bit for bit."""
    hp = CASES[name]
    needs_graph = "create_graph" in curvlab.info(name).meta.closure_options
    loss_fn, batches = nn.CrossEntropyLoss(), _batches()
    runs = []
    for bridged in (False, True):  # the reference first: it may fail on this machine
        model = _mlp()
        torch.manual_seed(11)
        if bridged:
            opt = curvlab.create(name, model, loss_fn, **hp)
        else:
            np.random.seed(torch.initial_seed() % 2**32)  # the bridge's NumPy stream (Kron)
            if curvlab.info(name).cls.uses_torch_rng:  # the bridge's private torch stream
                torch.manual_seed(derive_seed())
            opt = _library(name, model, hp)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)
        for x, y in batches:
            if bridged:
                opt.step(curvlab.closure(model, loss_fn, x, y))
            else:
                opt.zero_grad(set_to_none=True)
                loss_fn(model(x), y).backward(create_graph=needs_graph)
                try:
                    opt.step()
                except torch.linalg.LinAlgError as err:
                    pytest.skip(f"pytorch_optimizer's own {name} fails on this machine: {err}")
            sched.step()
        if not bridged and not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            pytest.skip(f"pytorch_optimizer's own {name} produces NaN/Inf on this machine "
                        "(its SVD is kernel-dependent); nothing to compare against")
        runs.append([p.detach().clone() for p in model.parameters()])
    runs.reverse()  # [bridged, reference]
    moved = any(not torch.equal(a, b) for a, b in zip(runs[0], _mlp().parameters()))
    assert moved, "the optimizer did not move the weights"
    for i, (a, b) in enumerate(zip(*runs)):
        assert torch.equal(a, b), f"{name}: parameter {i} differs from pytorch_optimizer's"


@pytest.mark.parametrize("cls", PEERS, ids=NAMES)
def test_defaults_are_the_librarys(cls):
    """Every declared default equals the installed library's signature default."""
    sig = inspect.signature(getattr(po, cls.inner_class).__init__).parameters
    for p in cls.schema:
        if p.name == "muon_scope":  # bridge-only knob
            continue
        assert p.name in sig, f"{cls.name}: {p.name} is not a {cls.inner_class} keyword"
        default = sig[p.name].default
        assert p.default == (tuple(default) if isinstance(default, list) else default), p.name


@pytest.mark.parametrize("name", NAMES)
def test_resume_restores_complete_inner_state(name):
    """state_dict carries every inner tensor and counter; a reload resumes bitwise."""
    loss_fn, batches = nn.CrossEntropyLoss(), _batches(12)
    model = _mlp()
    torch.manual_seed(2)
    opt = curvlab.create(name, model, loss_fn, **CASES[name])
    for x, y in batches[:5]:
        opt.step(curvlab.closure(model, loss_fn, x, y))
    saved, saved_model = copy.deepcopy(opt.state_dict()), copy.deepcopy(model.state_dict())
    inner = saved["curvlab"]["curv_state"]["inner"]
    n_params = len(list(model.parameters()))
    assert sorted(inner["state"]) == list(range(n_params))
    assert all("step" in g for g in inner["groups"])

    def finish(model, opt):
        torch.manual_seed(9)
        for x, y in batches[5:]:
            opt.step(curvlab.closure(model, loss_fn, x, y))
        return [p.detach().clone() for p in model.parameters()]

    expected = finish(model, opt)
    model2 = _mlp(seed=4)
    opt2 = curvlab.create(name, model2, loss_fn, **CASES[name])
    model2.load_state_dict(saved_model)
    opt2.load_state_dict(saved)
    assert_state_equal(opt2.state_dict()["curvlab"], saved["curvlab"], "curvlab")
    for a, b in zip(expected, finish(model2, opt2)):
        assert torch.equal(a, b)


def test_kron_numpy_stream_is_private_and_saved():
    """Kron's balancing coin draws from its own saved stream; the global NumPy state is untouched."""
    model, loss_fn = _mlp(), nn.CrossEntropyLoss()
    opt = curvlab.create("kron", model, loss_fn, balance_prob=0.5)
    start = opt.curv_state["numpy_rng"]["keys"].clone(), opt.curv_state["numpy_rng"]["pos"]
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    for x, y in _batches(3):
        opt.step(curvlab.closure(model, loss_fn, x, y))
    assert (np.random.get_state()[1] == before).all() and np.random.get_state()[2] == 624
    now = opt.curv_state["numpy_rng"]
    assert (now["pos"], now["keys"].tolist()) != (start[1], start[0].tolist())


# ----------------------------------------------------------------- NaN guard
@pytest.mark.parametrize("name", NAMES)
def test_non_finite_inner_update_is_rolled_back(name, monkeypatch):
    """A NaN written by the inner step (finite gradients) is undone: weights and state unchanged."""
    model, loss_fn = _mlp(), nn.CrossEntropyLoss()
    opt = curvlab.create(name, model, loss_fn, **CASES[name])
    batches = _batches(4)
    for x, y in batches[:2]:
        opt.step(curvlab.closure(model, loss_fn, x, y))
    before_params = [p.detach().clone() for p in model.parameters()]
    before = copy.deepcopy(opt.state_dict())
    real_step = opt.inner.step

    def poisoned():
        real_step()
        first = next(iter(opt.inner.state.values()))
        next(t for t in first.values() if isinstance(t, torch.Tensor)).fill_(float("nan"))

    monkeypatch.setattr(opt.inner, "step", poisoned)
    with pytest.warns(NonFiniteStepWarning, match="non-finite update"):
        opt.step(curvlab.closure(model, loss_fn, *batches[2]))
    for a, b in zip(before_params, model.parameters()):
        assert torch.equal(a, b)
    after = opt.state_dict()
    assert_state_equal(after["curvlab"]["curv_state"], before["curvlab"]["curv_state"], "curv")
    assert after["curvlab"]["stats"]["skipped_steps"] == 1
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteStepWarning)
        opt.step(curvlab.closure(model, loss_fn, *batches[3]))


def test_singular_shampoo_factor_is_skipped_not_propagated():
    """Shampoo with matrix_eps = 0 and a dead input gets an infinite inverse root: step skipped."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    x[:, 0] = 0.0
    opt = curvlab.create("shampoo", model, lr=0.1, matrix_eps=0.0)
    before = model.weight.detach().clone()
    with pytest.warns(NonFiniteStepWarning):
        opt.step(curvlab.closure(model, nn.CrossEntropyLoss(), x, y))
    assert torch.equal(model.weight, before) and len(opt.inner.state) == 0


# ------------------------------------------------------- closure contract
@pytest.mark.parametrize("name", ["adahessian", "sophiah"])
def test_hessian_peers_need_a_graph(name):
    model, loss_fn = _mlp(), nn.CrossEntropyLoss()
    x, y = _batches(1)[0]
    opt = curvlab.create(name, model, loss_fn)
    assert curvlab.info(name).meta.closure_options == ("create_graph",)

    def plain():
        model.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    with pytest.raises(ValueError, match="create_graph"):
        opt.step(plain)

    def ignores_option(create_graph=False):
        return plain()

    with pytest.raises(ValueError, match="gradients with a graph"):
        opt.step(ignores_option)


# --------------------------------------------------------------- param groups
def test_per_optimizer_hparam_cannot_differ_per_group():
    model = _mlp()
    groups = [{"params": model[0].parameters()},
              {"params": model[2].parameters(), "update_period": 3}]
    with pytest.raises(ValueError, match="update_period is optimizer-wide"):
        curvlab.create("sophiah", model, params=groups)


def test_added_param_group_reaches_inner_optimizer():
    model, loss_fn = _mlp(), nn.CrossEntropyLoss()
    opt = curvlab.create("soap", model, loss_fn, params=list(model[0].parameters()))
    opt.add_param_group({"params": list(model[2].parameters()) + list(model[4].parameters()),
                         "lr": 0.5})
    assert len(opt.inner.param_groups) == 2
    for x, y in _batches(2):
        opt.step(curvlab.closure(model, loss_fn, x, y))
    assert opt.inner.param_groups[1]["lr"] == 0.5 and model[4].weight in opt.inner.state


# ------------------------------------------------------------------- Muon split
SPLITS = [
    ("mlp-hidden", "hidden", lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4),
                                                   nn.Linear(4, 2)),
     [True, False, True, False, False, False]),
    ("mlp-matrices", "matrices", lambda: nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)),
     [True, False, True, False]),
    ("embedding-and-named-head", "hidden",
     lambda: nn.ModuleDict({"emb": nn.Embedding(5, 4), "body": nn.Linear(4, 4),
                            "head": nn.Linear(4, 3), "norm": nn.LayerNorm(3)}),
     [False, True, False, False, False, False, False]),
    ("embedding-matrices", "matrices",
     lambda: nn.ModuleDict({"emb": nn.Embedding(5, 4), "head": nn.Linear(4, 3)}),
     [False, True, False]),
    ("conv", "hidden", lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3), nn.Flatten(),
                                             nn.Linear(8, 2)),
     [True, False, True, False, False, False]),
]


@pytest.mark.parametrize(("scope", "build", "expected"), [s[1:] for s in SPLITS],
                         ids=[s[0] for s in SPLITS])
def test_muon_mask(scope, build, expected):
    model = build()
    assert muon_mask(model, model.parameters(), scope) == expected


def test_muon_mask_without_model_uses_ndim_and_rejects_bad_scope():
    params = [torch.zeros(2, 2), torch.zeros(2), torch.zeros(2, 2, 3)]
    assert muon_mask(None, params, "hidden") == [True, False, True]
    with pytest.raises(ValueError, match="muon_scope"):
        muon_mask(None, params, "all")


def test_muon_adamw_fallback_follows_the_schedule():
    """Muon matrices get a momentum buffer, the rest AdamW moments; lr schedules reach both."""
    model, loss_fn = _mlp(), nn.CrossEntropyLoss()
    opt = curvlab.create("muon", model, loss_fn, lr=0.02, adamw_lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.25)
    opt.step(curvlab.closure(model, loss_fn, *_batches(1)[0]))
    muon_g, adamw_g = opt.inner.param_groups
    assert muon_g["use_muon"] and not adamw_g["use_muon"]
    assert set(opt.inner.state[model[0].weight]) == {"momentum_buffer"}
    assert set(opt.inner.state[model[4].weight]) == {"exp_avg", "exp_avg_sq"}
    assert muon_g["lr"] == 0.005 and adamw_g["lr"] == pytest.approx(2.5e-4, rel=1e-12)
    del sched


# -------------------------------------------------------------- absence of the extra
@pytest.fixture
def refreshed():
    """Entry points are cached: re-read them after faking the environment, and after undoing it."""
    curvlab.refresh()
    yield
    curvlab.refresh()


def test_missing_extra_makes_names_unavailable(monkeypatch, refreshed):
    real = md.distribution

    def fake(name):
        if name.lower().replace("_", "-") == "pytorch-optimizer":
            raise md.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(md, "distribution", fake)
    curvlab.refresh()
    names = curvlab.available()
    assert not set(NAMES) & set(names) and "sgd" in names
    assert all(curvlab.unavailable()[n] == ("pytorch-optimizer",) for n in NAMES)
    with pytest.raises(ValueError, match=r"curvlab\[peers\]"):
        curvlab.create("soap", _mlp())


def test_package_imports_without_pytorch_optimizer(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_optimizer", None)  # import now raises ImportError
    for mod in [m for m in sys.modules if m.startswith("curvlab_plugins.peers")]:
        monkeypatch.delitem(sys.modules, mod)
    peers = importlib.import_module("curvlab_plugins.peers")
    assert peers.SOAP.schema["lr"].default == 3e-3
    with pytest.raises(ImportError, match=r"pip install 'curvlab\[peers\]'"):
        peers.SOAP(_mlp())


def test_linalg_failure_in_inner_step_is_a_skipped_step(monkeypatch):
    """A factorisation failure inside the library (Shampoo's SVD) skips the step, state intact."""
    from curvlab.testing import assert_state_equal

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = curvlab.create("shampoo", model, loss_fn)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    opt.step(curvlab.closure(model, loss_fn, x, y))
    before = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())

    def fail(*args, **kwargs):
        for p in model.parameters():  # a partial in-place update before the failure
            p.data.add_(1.0)
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(opt.inner, "step", fail)
    with pytest.warns(NonFiniteStepWarning, match="failed: linalg.svd"):
        opt.step(curvlab.closure(model, loss_fn, x, y))
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)
    assert opt.stats["skipped_steps"] == 1
    assert_state_equal(opt.state_dict()["curvlab"]["curv_state"], state["curvlab"]["curv_state"])


def test_soap_merge_dims_is_refused_where_the_library_breaks_and_works_elsewhere():
    """pytorch-optimizer merges all dims of a small tensor into the shape [1]: refused by name."""
    model, loss_fn = _mlp(), nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match=r"merge_dims=True fails .* affected: model.0.weight"):
        curvlab.create("soap", model, loss_fn, merge_dims=True)
    # with every tensor larger than max_precondition_dim the merge keeps a dimension: it runs
    opt = curvlab.create("soap", model, loss_fn, merge_dims=True, max_precondition_dim=2)
    before = [p.detach().clone() for p in model.parameters()]
    for x, y in _batches(3):
        opt.step(curvlab.closure(model, loss_fn, x, y))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(torch.isfinite(p).all() for p in model.parameters())

"""natgrad: one step against the dense float64 Fisher of curvlab.reference, closed forms, MC, refusals."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import curvlab
from curvlab import reference as ref
from curvlab.optimizer import NonFiniteStepWarning
from curvlab.testing.cases import backend_cases
from curvlab.testing.conformance import assert_state_equal
from curvlab_plugins.natgrad.columns import DenseColumns, KroneckerColumns
from curvlab_plugins.natgrad.jacobians import fisher_columns
from curvlab_plugins.natgrad.observation import ObservedCall
from curvlab_plugins.natgrad.output_roots import exact_roots, mc_roots, sample_targets
from curvlab_plugins.natgrad.woodbury import damped_solve

F64 = torch.float64


# ----------------------------------------------------------------- the dense twin
def trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def flat(model: nn.Module, names: list[str]) -> torch.Tensor:
    params = dict(model.named_parameters())
    return torch.cat([params[n].detach().reshape(-1) for n in names])


def layer_mask(model: nn.Module, names: list[str]) -> torch.Tensor:
    """True where row and column belong to the same module (the layer-block-diagonal pattern)."""
    owner = [n.rsplit(".", 1)[0] if "." in n else "" for n in names]
    sizes = [dict(model.named_parameters())[n].numel() for n in names]
    tags = torch.cat([torch.full((s,), i) for i, s in enumerate(sizes)])
    layer_of = torch.tensor([owner.index(owner[i]) for i in range(len(names))])[tags]
    return layer_of[:, None] == layer_of[None, :]


def dense_fisher(model, loss_fn, x, y, names, *, kind="true", sampled=None):
    """The true Fisher, or the mean empirical Fisher at the given sampled targets (float64)."""
    if sampled is None:
        return ref.fisher(model, loss_fn, x, y, kind=kind, params=names)
    mats = [ref.fisher(model, loss_fn, x, t, kind="empirical", params=names) for t in sampled]
    return sum(mats) / len(mats)


def dense_step(F, g, damping, mask=None):
    """(F + D)⁻¹ g with D = diag(damping) (scalar or per entry), F block-masked if given."""
    if mask is not None:
        F = torch.where(mask, F, torch.zeros_like(F))
    D = torch.as_tensor(damping, dtype=F64)
    D = torch.diag(D.expand(F.shape[0]).clone())
    return torch.linalg.solve(F + D, g)


def one_step(model, loss_fn, x, y, closure=None, **hp):
    """Take one natgrad step (lr 1, no momentum) and return the optimizer and -Δθ."""
    names = trainable_names(model)
    before = flat(model, names)
    opt = curvlab.create("natgrad", model, loss_fn, lr=1.0, momentum=0.0, **hp)
    seed = opt.curv_state.get("seed")
    opt.step(closure or curvlab.closure(model, loss_fn, x, y))
    return opt, seed, before - flat(model, names)


def sampled_targets(model, loss_fn, x, y, seed, samples):
    """The targets natgrad's first MC step draws: its seeded generator on the model's outputs."""
    with torch.no_grad():
        f = model(x)
    return sample_targets(loss_fn, f, torch.Generator().manual_seed(seed), samples, y)


# ----------------------------------------------------------------- problems as data
@dataclass(frozen=True)
class Loss:
    name: str
    build: object
    targets: object


LOSSES = [
    Loss("ce", lambda r: nn.CrossEntropyLoss(reduction=r),
         lambda g, n, c: torch.randint(0, c, (n,), generator=g)),
    Loss("mse", lambda r: nn.MSELoss(reduction=r),
         lambda g, n, c: torch.randn(n, c, generator=g, dtype=F64)),
    Loss("bce", lambda r: nn.BCEWithLogitsLoss(reduction=r),   # soft targets
         lambda g, n, c: torch.rand(n, c, generator=g, dtype=F64)),
]


def tiny_mlp(seed=0, n=5):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(F64)
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    return model, x


def batch(loss: Loss, reduction: str, seed=0, n=5):
    model, x = tiny_mlp(seed, n)
    y = loss.targets(torch.Generator().manual_seed(seed + 2), n, 3)
    return model, loss.build(reduction), x, y


MODES = [(ft, bd) for ft in ("true", "mc") for bd in (False, True)]
GRID = [
    pytest.param(ft, bd, loss, red, id=f"{ft}-{'block' if bd else 'full'}-{loss.name}-{red}")
    for ft, bd in MODES for loss in LOSSES for red in ("mean", "sum")
]


@pytest.mark.parametrize("fisher_type,block_diagonal,loss,reduction", GRID)
def test_step_equals_dense_damped_fisher_solve(fisher_type, block_diagonal, loss, reduction):
    model, loss_fn, x, y = batch(loss, reduction)
    names = trainable_names(model)
    twin = copy.deepcopy(model)
    hp = {"fisher_type": fisher_type, "block_diagonal": block_diagonal, "damping": 0.05}
    if fisher_type == "mc":
        hp["mc_samples"] = 3
    opt, seed, step = one_step(model, loss_fn, x, y, **hp)
    sampled = None
    if fisher_type == "mc":
        sampled = sampled_targets(twin, loss_fn, x, y, seed, 3)
    F = dense_fisher(twin, loss_fn, x, y, names, sampled=sampled)
    g = ref.gradient(twin, loss_fn, x, y, params=names)
    mask = layer_mask(twin, names) if block_diagonal else None
    torch.testing.assert_close(step, dense_step(F, g, 0.05, mask), rtol=1e-9, atol=1e-12)
    assert opt.stats["steps"] == 1 and opt.stats["fisher_columns"] == 15   # N·K, K = 3 either way


SMALL_ROWS = [c for c in backend_cases()
              if sum(p.numel() for p in c.instantiate(batch=1).model.parameters()) <= 2000
              and c.refusal("natgrad") is None]
REFUSED_ROWS = [pytest.param(c, id=c.id) for c in backend_cases() if c.refusal("natgrad")]
# every small row of the shared table with the full Fisher; the block variant (covered by the
# grid above) on the rows whose layer structure differs: frozen and absent biases
TABLE = [pytest.param(c, False, id=f"{c.id}-full") for c in SMALL_ROWS] + [
    pytest.param(c, True, id=f"{c.id}-block") for c in SMALL_ROWS
    if c.model.name in ("frozen-bias", "no-bias")
]


@pytest.mark.parametrize("case,block_diagonal", TABLE)
def test_case_table_rows_match_dense_fisher(case, block_diagonal):
    """Every small row of the shared case table (models × losses × reductions), true Fisher."""
    p = case.instantiate(batch=4)
    names = trainable_names(p.model)
    twin = copy.deepcopy(p.model)
    _, _, step = one_step(p.model, p.loss_fn, p.inputs, p.targets, damping=0.1,
                          block_diagonal=block_diagonal)
    F = dense_fisher(twin, p.loss_fn, p.inputs, p.targets, names)
    g = ref.gradient(twin, p.loss_fn, p.inputs, p.targets, params=names)
    mask = layer_mask(twin, names) if block_diagonal else None
    torch.testing.assert_close(step, dense_step(F, g, 0.1, mask), rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("case", REFUSED_ROWS)
def test_case_table_refusals(case):
    """Rows natgrad cannot split by example (per-token logits, BatchNorm in training mode):
    refused with the row's text, at construction or at the first step."""
    p = case.instantiate(batch=4)
    with pytest.raises(ValueError, match=case.refusal("natgrad")):
        opt = curvlab.create("natgrad", p.model, p.loss_fn)
        opt.step(curvlab.closure(p.model, p.loss_fn, p.inputs, p.targets))


ARCHITECTURES = [
    ("conv", lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3)),
     lambda g: torch.randn(4, 1, 4, 4, generator=g, dtype=F64)),
    ("layernorm", lambda: nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, 3)),
     lambda g: torch.randn(4, 3, generator=g, dtype=F64)),
    ("batchnorm-eval", lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(),
                                             nn.Linear(4, 3)).eval(),
     lambda g: torch.randn(4, 3, generator=g, dtype=F64)),
    ("embedding", lambda: nn.Sequential(nn.Embedding(6, 3), nn.Flatten(), nn.Linear(6, 3)),
     lambda g: torch.randint(0, 6, (4, 2), generator=g)),
    ("inplace-relu", lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 3)),
     lambda g: torch.randn(4, 3, generator=g, dtype=F64)),
    # Linear on (N, T, d) inputs and a Linear called twice: the generic recomputation, not (a, g)
    ("sequence-linear", lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Flatten(), nn.Linear(8, 3)),
     lambda g: torch.randn(4, 2, 3, generator=g, dtype=F64)),
    ("shared-linear", lambda: Twice(), lambda g: torch.randn(4, 3, generator=g, dtype=F64)),
    ("reused-weight", lambda: Reused(), lambda g: torch.randn(4, 3, generator=g, dtype=F64)),
]


class Reused(nn.Module):
    """A Linear whose weight is also used functionally outside the layer."""

    def __init__(self):
        super().__init__()
        self.lin, self.head = nn.Linear(3, 3), nn.Linear(3, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.lin(x))) + nn.functional.linear(x, self.lin.weight)


class Twice(nn.Module):
    """One Linear applied twice (tied weights), then a head."""

    def __init__(self):
        super().__init__()
        self.lin, self.head = nn.Linear(3, 3), nn.Linear(3, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.lin(torch.tanh(self.lin(x)))))


@pytest.mark.parametrize("build,inputs", [a[1:] for a in ARCHITECTURES], ids=[a[0] for a in ARCHITECTURES])
def test_other_layers_match_dense_fisher(build, inputs):
    torch.manual_seed(0)
    model = build().to(F64)
    gen = torch.Generator().manual_seed(3)
    x, y = inputs(gen), torch.randint(0, 3, (4,), generator=gen)
    loss_fn = nn.CrossEntropyLoss()
    names = trainable_names(model)
    twin = copy.deepcopy(model)
    _, _, step = one_step(model, loss_fn, x, y, damping=0.1)
    F = dense_fisher(twin, loss_fn, x, y, names)
    g = ref.gradient(twin, loss_fn, x, y, params=names)
    torch.testing.assert_close(step, dense_step(F, g, 0.1), rtol=1e-9, atol=1e-12)


def test_per_group_damping_is_exact():
    """Two param groups with their own λ: (F + diag(λ_i))⁻¹ g, in full and block mode."""
    for block_diagonal in (False, True):
        model, loss_fn, x, y = batch(LOSSES[0], "mean")
        names = trainable_names(model)
        twin = copy.deepcopy(model)
        groups = [{"params": list(model[0].parameters()), "damping": 0.3},
                  {"params": list(model[2].parameters())}]
        opt = curvlab.create("natgrad", model, loss_fn, params=groups, lr=1.0, damping=0.02,
                             block_diagonal=block_diagonal)
        before = flat(model, names)
        opt.step(curvlab.closure(model, loss_fn, x, y))
        lam = torch.tensor([0.3] * 16 + [0.02] * 15, dtype=F64)
        F = dense_fisher(twin, loss_fn, x, y, names)
        g = ref.gradient(twin, loss_fn, x, y, params=names)
        mask = layer_mask(twin, names) if block_diagonal else None
        torch.testing.assert_close(before - flat(model, names), dense_step(F, g, lam, mask),
                                   rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("block_diagonal", [False, True], ids=["full", "block"])
def test_relative_damping_is_the_block_mean_eigenvalue(block_diagonal):
    model, loss_fn, x, y = batch(LOSSES[1], "sum")
    names = trainable_names(model)
    twin = copy.deepcopy(model)
    _, _, step = one_step(model, loss_fn, x, y, damping=0.2, relative_damping=True,
                          block_diagonal=block_diagonal)
    F = dense_fisher(twin, loss_fn, x, y, names)
    g = ref.gradient(twin, loss_fn, x, y, params=names)
    if block_diagonal:
        mask = layer_mask(twin, names)
        lam = torch.empty(len(g), dtype=F64)
        for ids in (torch.arange(16), torch.arange(16, 31)):
            lam[ids] = 0.2 * F[ids][:, ids].trace() / len(ids)
        expected = dense_step(F, g, lam, mask)
    else:
        expected = dense_step(F, g, 0.2 * F.trace() / len(g))
    torch.testing.assert_close(step, expected, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------- closed forms
def logistic_data(n=40, d=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen, dtype=F64)
    y = (torch.rand(n, 1, generator=gen, dtype=F64) < torch.sigmoid(X @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=F64))).to(F64)
    return X, y


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("block_diagonal", [False, True], ids=["full", "block"])
def test_logistic_regression_takes_the_newton_step(block_diagonal, reduction):
    """λ → 0 on one Linear layer (F = H full rank): the Newton step of logistic regression.

    Closed form: with X̃ = [X, 1], p = σ(X̃θ), c = 1/N (mean) or 1 (sum):
    H = c X̃ᵀ diag(p(1-p)) X̃, g = c X̃ᵀ (p - y), θ⁺ = θ - H⁻¹ g.
    """
    X, y = logistic_data()
    model = nn.Linear(3, 1).to(F64)
    loss_fn = nn.BCEWithLogitsLoss(reduction=reduction)
    Xt = torch.cat([X, torch.ones(len(X), 1, dtype=F64)], 1)
    theta = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()])
    p = torch.sigmoid(Xt @ theta)
    c = 1.0 / len(X) if reduction == "mean" else 1.0
    H = c * Xt.T @ ((p * (1 - p))[:, None] * Xt)
    g = c * Xt.T @ (p - y[:, 0])
    newton = theta - torch.linalg.solve(H, g)
    _, _, _ = one_step(model, loss_fn, X, y, damping=1e-10, block_diagonal=block_diagonal)
    got = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()])
    torch.testing.assert_close(got, newton, rtol=1e-7, atol=1e-9)


def test_least_squares_is_solved_in_one_step():
    """MSE on a Linear model: F = GGN = Hessian, so one step with λ → 0 lands on the lstsq solution."""
    X, _ = logistic_data()
    Y = torch.randn(len(X), 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    model = nn.Linear(3, 2).to(F64)
    one_step(model, nn.MSELoss(), X, Y, damping=1e-12)
    Xt = torch.cat([X, torch.ones(len(X), 1, dtype=F64)], 1)
    solution = torch.linalg.lstsq(Xt, Y).solution   # (4, 2): [Wᵀ; b]
    torch.testing.assert_close(model.weight.detach(), solution[:3].T, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(model.bias.detach(), solution[3], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("fisher_type", ["true", "mc"])
@pytest.mark.parametrize("n", [4, 40], ids=["woodbury", "primal"])   # NK < P and NK >= P
def test_block_diagonal_equals_full_on_one_layer(fisher_type, n):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 5, generator=gen, dtype=F64), torch.randint(0, 3, (n,), generator=gen)
    steps = []
    for block_diagonal in (False, True):
        torch.manual_seed(0)
        model = nn.Linear(5, 3).to(F64)
        torch.manual_seed(7)
        _, _, step = one_step(model, nn.CrossEntropyLoss(), x, y, fisher_type=fisher_type,
                              block_diagonal=block_diagonal, damping=1e-3)
        steps.append(step)
    torch.testing.assert_close(steps[0], steps[1], rtol=1e-10, atol=1e-13)


def test_kronecker_columns_equal_their_dense_rows():
    gen = torch.Generator().manual_seed(2)
    G, A = torch.randn(6, 3, generator=gen, dtype=F64), torch.randn(4, 5, generator=gen, dtype=F64)
    k = KroneckerColumns(G, A, torch.tensor([0, 0, 1, 2, 3, 3]))
    d = DenseColumns(k.dense().view(6, 3, 5))
    for u in (G[0][:, None] * A[0][None, :], G[2][:, None] * A[1][None, :]):   # columns 0 and 2
        assert any(torch.allclose(row.view(3, 5), u) for row in d.rows)
    g, z = torch.randn(3, 5, generator=gen, dtype=F64), torch.randn(6, generator=gen, dtype=F64)
    torch.testing.assert_close(k.gram(), d.gram())
    torch.testing.assert_close(k.project(g), d.project(g))
    torch.testing.assert_close(k.expand(z), d.expand(z))
    assert k.sq_norm() == pytest.approx(d.sq_norm(), rel=1e-12)
    other = DenseColumns(torch.randn(6, 4, generator=gen, dtype=F64))
    torch.testing.assert_close(k.cross(k), d.cross(d))
    torch.testing.assert_close(k.cross(other), d.cross(other))
    torch.testing.assert_close(other.cross(k), other.cross(d))


@pytest.mark.parametrize("columns", [2, 12], ids=["woodbury", "primal"])
def test_damped_solve_both_paths_match_dense(columns):
    gen = torch.Generator().manual_seed(1)
    U = {"a": torch.randn(columns, 2, 3, generator=gen, dtype=F64),
         "b": torch.randn(columns, 4, generator=gen, dtype=F64)}
    g = {"a": torch.randn(2, 3, generator=gen, dtype=F64), "b": torch.randn(4, generator=gen, dtype=F64)}
    lam = {"a": 0.5, "b": 0.01}
    x = damped_solve({k: DenseColumns(u) for k, u in U.items()}, g, lam)
    Uf = torch.cat([U["a"].reshape(columns, -1), U["b"]], 1).T
    D = torch.diag(torch.tensor([0.5] * 6 + [0.01] * 4, dtype=F64))
    dense = torch.linalg.solve(D + Uf @ Uf.T, torch.cat([g["a"].reshape(-1), g["b"]]))
    torch.testing.assert_close(torch.cat([x["a"].reshape(-1), x["b"]]), dense)
    U["b"][0, 0] = float("nan")
    assert damped_solve({k: DenseColumns(u) for k, u in U.items()}, g, lam) is None


# ----------------------------------------------------------------- Monte Carlo
@pytest.mark.parametrize("loss", LOSSES, ids=[loss.name for loss in LOSSES])
def test_mc_fisher_expectation_is_the_true_fisher(loss):
    """Entrywise z-test: |mean of M sampled Fishers − true Fisher| ≤ 5 standard errors (fixed seed)."""
    model, loss_fn, x, y = batch(loss, "mean", n=3)
    names = trainable_names(model)
    with torch.no_grad():
        f = model(x)
    call = ObservedCall((x,), {}, f, y)
    params = dict(model.named_parameters())
    samples = 4000
    roots = mc_roots(loss_fn, f, torch.Generator().manual_seed(11), samples, y) * samples ** 0.5
    _, cols = fisher_columns(model, params, call, roots)
    U = torch.cat([cols[n].reshape(3, samples, -1) for n in names], -1)   # (N, M, P)
    per_sample = torch.einsum("nmp,nmq->mpq", U, U)                     # F_m, E[F_m] = F
    mean, se = per_sample.mean(0), per_sample.std(0) / samples ** 0.5
    true = ref.fisher(model, loss_fn, x, y, kind="true", params=names)
    assert bool(((mean - true).abs() <= 5 * se + 1e-12).all())
    assert float((mean - true).norm() / true.norm()) < 0.1   # and close as a matrix


def test_sampled_targets_follow_the_predictive_distribution():
    """CE class frequencies ≈ softmax; BCE ≈ σ; MSE mean f, variance 1/2 (fixed seed, 5 s.e.)."""
    f = torch.tensor([[2.0, 0.0, -1.0]], dtype=F64)
    gen, m = torch.Generator().manual_seed(0), 20000
    ce = sample_targets(nn.CrossEntropyLoss(), f, gen, m)[:, 0]
    freq = torch.stack([(ce == k).double().mean() for k in range(3)])
    p = f.softmax(1)[0]
    assert bool(((freq - p).abs() <= 5 * (p * (1 - p) / m).sqrt()).all())
    bce = sample_targets(nn.BCEWithLogitsLoss(), f, gen, m)[:, 0]
    s = torch.sigmoid(f[0])
    assert bool(((bce.mean(0) - s).abs() <= 5 * (s * (1 - s) / m).sqrt()).all())
    mse = sample_targets(nn.MSELoss(), f, gen, m)[:, 0]
    assert bool(((mse.mean(0) - f[0]).abs() <= 5 * (0.5 / m) ** 0.5).all())
    assert bool(((mse.var(0) - 0.5).abs() < 0.03).all())


def test_exact_roots_square_to_the_output_hessian():
    f = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    y = torch.randint(0, 3, (4,))
    for loss_fn, t in [(nn.CrossEntropyLoss(), y), (nn.MSELoss(reduction="sum"), f),
                       (nn.BCEWithLogitsLoss(), torch.rand(4, 3, dtype=F64))]:
        v = exact_roots(loss_fn, f, t)
        H = torch.func.hessian(lambda o, fn=loss_fn, tt=t: fn(o, tt))(f)      # (4, 3, 4, 3)
        for n in range(4):
            torch.testing.assert_close(v[n].T @ v[n], H[n, :, n, :])


def test_mc_state_dict_resume_is_bitwise():
    """MC Fisher with momentum: resumed from a checkpoint under another global RNG state."""
    def build():
        model, loss_fn, x, y = batch(LOSSES[0], "mean", n=6)
        opt = curvlab.create("natgrad", model, loss_fn, fisher_type="mc", mc_samples=2,
                             momentum=0.9, lr=0.3)
        return model, loss_fn, x, y, opt

    model, loss_fn, x, y, opt = build()
    for _ in range(2):
        opt.step(curvlab.closure(model, loss_fn, x, y))
    saved, weights = copy.deepcopy(opt.state_dict()), copy.deepcopy(model.state_dict())
    for _ in range(3):
        opt.step(curvlab.closure(model, loss_fn, x, y))
    model2, loss_fn2, _, _, opt2 = build()
    model2.load_state_dict(weights)
    opt2.load_state_dict(saved)
    torch.manual_seed(123)
    for _ in range(3):
        opt2.step(curvlab.closure(model2, loss_fn2, x, y))
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert_state_equal(opt.state_dict()["curvlab"], opt2.state_dict()["curvlab"])


def test_mc_stream_is_private():
    """The MC targets never draw from (or advance) torch's global generator."""
    model, loss_fn, x, y = batch(LOSSES[0], "mean")
    opt = curvlab.create("natgrad", model, loss_fn, fisher_type="mc")
    state = torch.get_rng_state()
    opt.step(curvlab.closure(model, loss_fn, x, y))
    assert torch.equal(state, torch.get_rng_state())
    assert opt.curv_state["rng"] is not None


# ----------------------------------------------------------------- what the closure computes
def test_closure_scale_is_measured():
    """A closure returning 3·loss_fn: Fisher and gradient both scale by 3 (the step changes)."""
    model, loss_fn, x, y = batch(LOSSES[0], "sum")
    names = trainable_names(model)
    twin = copy.deepcopy(model)

    def closure():
        model.zero_grad()
        loss = 3.0 * loss_fn(model(x), y)
        loss.backward()
        return loss

    opt, _, step = one_step(model, loss_fn, x, y, closure=closure, damping=0.1)
    F = 3.0 * dense_fisher(twin, loss_fn, x, y, names)
    g = 3.0 * ref.gradient(twin, loss_fn, x, y, params=names)
    torch.testing.assert_close(step, dense_step(F, g, 0.1), rtol=1e-9, atol=1e-12)
    assert opt.stats["loss_scale"] == pytest.approx(3.0)


def test_micro_batches_and_a_parameter_penalty():
    """Mean of two half-batch losses + an L2 penalty: the whole batch's mean Fisher, g with the penalty."""
    model, loss_fn, x, y = batch(LOSSES[2], "mean", n=6)
    names = trainable_names(model)
    twin = copy.deepcopy(model)

    def closure():
        model.zero_grad()
        halves = [loss_fn(model(x[i:i + 3]), y[i:i + 3]) for i in (0, 3)]
        penalty = 0.05 * sum((p ** 2).sum() for p in model.parameters())
        loss = (halves[0] + halves[1]) / 2 + penalty
        loss.backward()
        return loss

    _, _, step = one_step(model, loss_fn, x, y, closure=closure, damping=0.1)
    F = dense_fisher(twin, loss_fn, x, y, names)
    g = ref.gradient(twin, loss_fn, x, y, params=names) + 0.1 * flat(twin, names)
    torch.testing.assert_close(step, dense_step(F, g, 0.1), rtol=1e-9, atol=1e-12)


def test_ignored_targets_drop_their_examples():
    """CE ignore_index: the same step as on the batch without those examples (mean over the rest)."""
    model, loss_fn, x, y = batch(LOSSES[0], "mean", n=6)
    y = y.clone()
    y[[1, 4]] = -100
    twin = copy.deepcopy(model)
    keep = torch.tensor([0, 2, 3, 5])
    _, _, step = one_step(model, loss_fn, x, y, damping=0.1)
    _, _, expected = one_step(twin, loss_fn, x[keep], y[keep], damping=0.1)
    torch.testing.assert_close(step, expected, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------- refusals and guards
def _mlp_with(*mods):
    return nn.Sequential(nn.Linear(3, 4), *mods, nn.Linear(4, 3))


REFUSED = [
    ("batchnorm-train", lambda: (_mlp_with(nn.BatchNorm1d(4)), nn.CrossEntropyLoss()),
     {}, "BatchNorm1d at model.1"),
    ("dropout-train", lambda: (_mlp_with(nn.Dropout(0.5)), nn.CrossEntropyLoss()),
     {}, "Dropout at model.1"),
    ("nll-loss", lambda: (_mlp_with(), nn.NLLLoss()), {}, "NLLLoss"),
    ("plain-function-loss", lambda: (_mlp_with(), lambda o, t: (o ** 2).mean()), {}, "loss"),
    ("label-smoothing", lambda: (_mlp_with(), nn.CrossEntropyLoss(label_smoothing=0.1)), {},
     "label_smoothing"),
    ("mc-samples-with-true", lambda: (_mlp_with(), nn.CrossEntropyLoss()),
     {"mc_samples": 4}, "mc_samples"),
]


@pytest.mark.parametrize("build,hp,message", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_refused_at_construction(build, hp, message):
    model, loss_fn = build()
    with pytest.raises(ValueError, match=message):
        curvlab.create("natgrad", model, loss_fn, **hp)


def test_parameter_outside_the_model_is_refused():
    model = _mlp_with()
    extra = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="not in the model"):
        curvlab.create("natgrad", model, nn.CrossEntropyLoss(), params=[*model.parameters(), extra])


def test_dropout_off_and_eval_mode_are_accepted():
    curvlab.create("natgrad", _mlp_with(nn.Dropout(0.0)), nn.CrossEntropyLoss())
    curvlab.create("natgrad", _mlp_with(nn.BatchNorm1d(4), nn.Dropout(0.3)).eval(), nn.CrossEntropyLoss())


class Noisy(nn.Module):
    def forward(self, x):
        return x + 0.1 * torch.randn_like(x)


STEP_REFUSED = [
    ("transposed-output", lambda m, lf, x, y: (lambda: _backward(lf(m(x).T.T.contiguous() * 1.0, y))),
     "model's output tensor itself"),
    ("negated-loss", lambda m, lf, x, y: (lambda: _backward(-lf(m(x), y))), "non-negative multiple"),
    ("loss-not-called", lambda m, lf, x, y: (lambda: _backward(m(x).pow(2).mean())), "did not call"),
    ("shared-input", lambda m, lf, x, y: (lambda: _backward(lf(m(x, scale=torch.ones(2)), y))),
     "keyword 'scale' has shape"),
]


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x, scale=None):
        return self.lin(x) if scale is None else self.lin(x) * scale.sum()


def _backward(loss):
    loss.backward()
    return loss


@pytest.mark.parametrize("make,message", [r[1:] for r in STEP_REFUSED], ids=[r[0] for r in STEP_REFUSED])
def test_closures_it_cannot_read_are_refused_at_the_step(make, message):
    model = Scaled().to(F64)
    x, y = torch.randn(4, 3, dtype=F64), torch.randint(0, 3, (4,))
    loss_fn = nn.CrossEntropyLoss()
    opt = curvlab.create("natgrad", model, loss_fn)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=message):
        opt.step(make(model, loss_fn, x, y))
    assert all(torch.equal(a, b) for a, b in zip(before.values(), model.state_dict().values()))


def test_hidden_randomness_and_late_train_mode_are_refused():
    """Randomness the per-example recomputation cannot reproduce (here before a LayerNorm)."""
    x, y, loss_fn = torch.randn(4, 3), torch.randint(0, 3, (4,)), nn.CrossEntropyLoss()
    model = _mlp_with(Noisy(), nn.LayerNorm(4))
    opt = curvlab.create("natgrad", model, loss_fn)
    with pytest.raises(ValueError, match="torch.func|differs"):
        opt.step(curvlab.closure(model, loss_fn, x, y))
    model = _mlp_with(nn.Dropout(0.2)).eval()
    opt = curvlab.create("natgrad", model, loss_fn)
    model.train()
    with pytest.raises(ValueError, match="Dropout at model.1"):
        opt.step(curvlab.closure(model, loss_fn, x, y))


def test_max_columns_is_honoured():
    model, loss_fn, x, y = batch(LOSSES[0], "mean", n=6)   # true Fisher: 6 · 3 = 18 columns
    opt = curvlab.create("natgrad", model, loss_fn, max_columns=17)
    with pytest.raises(ValueError, match="max_columns=17"):
        opt.step(curvlab.closure(model, loss_fn, x, y))
    curvlab.create("natgrad", model, loss_fn, max_columns=18).step(curvlab.closure(model, loss_fn, x, y))


def _skips(opt, closure, model):
    before_params = copy.deepcopy(model.state_dict())
    before_state = copy.deepcopy(opt.state_dict())
    with pytest.warns(NonFiniteStepWarning, match="skipped"):
        opt.step(closure)
    for a, b in zip(before_params.values(), model.state_dict().values()):
        assert torch.equal(a, b)
    assert_state_equal(opt.state_dict()["state"], before_state["state"])
    assert_state_equal(opt.state_dict()["curvlab"]["curv_state"], before_state["curvlab"]["curv_state"])
    assert opt.stats["skipped_steps"] == 1


def test_failed_solve_is_a_skipped_step_with_state_unchanged():
    """λ so small that U Uᵀ/λ overflows: the Gram solve fails; the step is skipped, nothing changes."""
    model, loss_fn, x, y = batch(LOSSES[1], "sum")
    opt = curvlab.create("natgrad", model, loss_fn, damping=1e-3, fisher_type="mc", momentum=0.9)
    opt.step(curvlab.closure(model, loss_fn, x, y))
    opt.param_groups[0]["damping"] = 1e-320
    _skips(opt, curvlab.closure(model, loss_fn, x, y), model)
    opt.param_groups[0]["damping"] = 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteStepWarning)
        opt.step(curvlab.closure(model, loss_fn, x, y))


def test_relative_damping_of_a_zero_fisher_is_a_skipped_step():
    model, loss_fn, x, y = batch(LOSSES[0], "mean")
    opt = curvlab.create("natgrad", model, loss_fn, relative_damping=True)

    def zero_weight():
        model.zero_grad()
        loss = 0.0 * loss_fn(model(x), y) + 1e-3 * sum((p ** 2).sum() for p in model.parameters())
        loss.backward()
        return loss

    _skips(opt, zero_weight, model)

"""The conformance suite: properties every curvlab optimizer must have.

A plugin author runs it on their own backend with three lines::

    from curvlab.testing import ConformanceSuite

    class TestMyOptimizer(ConformanceSuite):
        optimizers = ["myopt"]          # None: every name in curvlab.available()

The ``pytest11`` plugin shipped with curvlab parametrises every test over
the names (test ids read ``test_decreases_loss[myopt]``). Each test builds a
small multinomial logistic-regression problem (convex), creates the
optimizer with the hyper-parameters in its ``meta.conformance`` (override
per class with ``hparams = {"myopt": {...}}``) and checks one property:

* the loss decreases on the convex problem;
* every out-of-range / wrong-type value of every declared hyper-parameter
  raises a :class:`ValueError` naming that parameter, and so does an
  unknown keyword;
* ``state_dict`` → ``load_state_dict`` into a fresh optimizer continues
  bitwise identically;
* an LR scheduler drives the step size (a factor of 0 freezes the weights);
* two runs with the same seed are bitwise identical;
* a NaN in the loss skips the step with a
  :class:`~curvlab.optimizer.NonFiniteStepWarning`, leaving parameters and
  optimizer state unchanged, and training continues afterwards.

and the robustness properties every optimizer must keep (each either holds
or the optimizer refuses the situation at construction with a
:class:`ValueError` that names it; never different numbers):

* ``lr = 0`` never moves a parameter, with the defaults and with every
  boolean switch flipped (and a weight decay where one is declared);
* a huge ``lr`` (``1e38``) never writes NaN/Inf into the weights;
* every per-group hyper-parameter is read per group: a param group setting
  it gives the same trajectory as the constructor setting it;
* a per-optimizer hyper-parameter set in a param group, or edited in
  ``param_groups`` after construction, raises a ``ValueError`` naming it;
* frozen parameters (``requires_grad=False`` from the start, or a layer
  frozen mid-training) are never moved and never refused;
* an in-place activation (``ReLU(inplace=True)``) gives the out-of-place
  model's trajectory bit for bit;
* a parameter outside the model, given to the optimizer, gets the fresh
  gradient of every step (not an accumulated one);
* sparse gradients (``nn.EmbeddingBag(sparse=True)``) work or are refused
  at construction naming the module;
* ``load_state_dict`` refuses another optimizer's state, other parameter
  shapes and other per-optimizer hyper-parameters (naming what differs),
  and a resumed run does not depend on the global random generator;
* a ``model`` argument that is not a module or parameters raises a
  ``ValueError``.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

import curvlab
from curvlab.hparams import GROUP, OPTIMIZER, HParam
from curvlab.optimizer import CurvatureOptimizer, NonFiniteStepWarning

__all__ = [
    "ConformanceSuite",
    "alternative_value",
    "assert_state_equal",
    "invalid_values",
    "logistic_problem",
    "mlp_problem",
]


def logistic_problem(
    seed: int = 0, *, n: int = 128, dim: int = 8, classes: int = 4, dtype=torch.float32
) -> tuple[nn.Module, nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A seeded multinomial logistic regression: model, loss and 4 mini-batches.

    Example:
        >>> model, loss_fn, batches = logistic_problem()
        >>> len(batches), tuple(batches[0][0].shape)
        (4, (32, 8))
    """
    gen = torch.Generator().manual_seed(1234)
    w_true = torch.randn(dim, classes, generator=gen, dtype=dtype) * 2
    x = torch.randn(n, dim, generator=gen, dtype=dtype)
    y = (x @ w_true + 0.5 * torch.randn(n, classes, generator=gen, dtype=dtype)).argmax(1)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(dim, classes)).to(dtype)
    batches = [(x[i : i + n // 4], y[i : i + n // 4]) for i in range(0, n, n // 4)]
    return model, nn.CrossEntropyLoss(), batches


def mlp_problem(
    seed: int = 0, *, inplace: bool = False, n: int = 64, dim: int = 8, hidden: int = 6,
    classes: int = 4,
) -> tuple[nn.Module, nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A seeded two-layer ReLU classifier (``inplace``: ``ReLU(inplace=True)``) and 4 batches.

    Example:
        >>> model, loss_fn, batches = mlp_problem(inplace=True)
        >>> model[1].inplace, len(batches)
        (True, 4)
    """
    gen = torch.Generator().manual_seed(4321)
    x = torch.randn(n, dim, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=inplace),
                          nn.Linear(hidden, classes))
    batches = [(x[i : i + n // 4], y[i : i + n // 4]) for i in range(0, n, n // 4)]
    return model, nn.CrossEntropyLoss(), batches


_MISSING = object()


def alternative_value(p: HParam, current: Any = _MISSING) -> Any:
    """A valid value of ``p`` other than ``current`` (default: its default); ``None`` if none.

    Example:
        >>> alternative_value(HParam("lr", float, 0.1, "step", low=0.0, grid=(0.3, 0.1)))
        0.3
        >>> alternative_value(HParam("lr", float, 0.1, "step", low=0.0, grid=(0.3, 0.1)), 0.3)
        0.1
        >>> alternative_value(HParam("flag", bool, False, "switch"))
        True
    """
    current = p.default if current is _MISSING else current
    candidates: list[Any] = [g for g in p.grid if g != current]
    if p.type is bool:
        candidates.append(not current)
    elif p.choices is not None:
        candidates += [c for c in p.choices if c != current]
    elif p.type is tuple and current is not None:
        candidates.append(tuple(v * 0.9 if v else 0.5 for v in current))
    elif p.type in (int, float):
        base = current if current is not None else (p.low if p.low is not None else 1.0)
        for v in (base * 0.5, base * 2, base + 1, base * 0.9, 0.5, 1):
            candidates.append(int(v) if p.type is int else float(v))
    for value in candidates:
        if value == current:
            continue
        try:
            return p.check(value)
        except ValueError:
            continue
    return None


def invalid_values(p: HParam) -> list[Any]:
    """Values that :meth:`HParam.check` must reject (for the invalid-hparam test).

    Example:
        >>> invalid_values(HParam("lr", float, 0.1, "step", low=0.0, low_open=True))
        ['not-a-number', 0.0, -1.0, nan, inf]
    """
    if p.type is bool:
        return ["yes", 1.5]
    if p.type is str:
        return [12345, "definitely-not-a-choice"] if p.choices else [12345]
    bad: list[Any] = ["not-a-number"]
    if p.low is not None:
        bad += [p.low] if p.low_open else []
        bad += [p.low - 1.0]
    if p.high is not None:
        bad += [p.high] if p.high_open else []
        bad += [p.high + 1.0]
    if p.type is float:
        bad += [math.nan]
        if p.finite and p.high is None:
            bad += [math.inf]
        if p.finite and p.low is None:
            bad += [-math.inf]
    if p.type is int:
        bad += [1.5]
    if p.type is tuple:
        bad = [[bad[1]] * (p.length or 1)] if len(bad) > 1 else ["not-a-tuple"]
        if p.finite and p.high is None:
            bad.append([math.inf] * (p.length or 1))
    return bad


def assert_state_equal(a: Any, b: Any, path: str = "state") -> None:
    """Assert two (nested) optimizer states are bitwise equal.

    Raises:
        AssertionError: naming the first differing entry.

    Example:
        >>> assert_state_equal({"x": torch.ones(2)}, {"x": torch.ones(2)})
    """
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), f"{path}: tensor vs {type(b).__name__}"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: dtype/shape differ"
        assert torch.equal(a, b) or (
            a.is_floating_point() and torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))
        ), f"{path}: values differ"
    elif isinstance(a, Mapping):
        assert isinstance(b, Mapping) and set(a) == set(b), f"{path}: keys differ"
        for k in a:
            assert_state_equal(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_state_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), f"{path}: {a!r} != {b!r}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def _full_loss(model, loss_fn, batches) -> float:
    with torch.no_grad():
        return float(sum(loss_fn(model(x), y) for x, y in batches) / len(batches))


class ConformanceSuite:
    """Base class of a conformance test class; see the module docstring.

    Attributes:
        optimizers: Names to test (``None``: all available).
        hparams: Per-name hyper-parameters overriding ``meta.conformance``.
        steps: Steps of the loss-decrease test.
    """

    __curvlab_conformance__ = True
    optimizers: ClassVar[list[str] | None] = None
    hparams: ClassVar[dict[str, dict[str, Any]]] = {}
    steps: ClassVar[int] = 30

    # ---------------------------------------------------------------- helpers
    def hparams_for(self, name: str, **overrides: Any) -> dict[str, Any]:
        """``meta.conformance`` + this class's :attr:`hparams` for ``name`` + ``overrides``."""
        cls = curvlab.info(name).cls
        return {**dict(cls.meta.conformance), **self.hparams.get(name, {}), **overrides}

    def make(self, name: str, seed: int = 0, *, problem=logistic_problem, params=None,
             **overrides: Any):
        """Model, loss, batches and optimizer for ``name`` (seeded)."""
        model, loss_fn, batches = problem(seed)
        hp = self.hparams_for(name, **overrides)
        torch.manual_seed(seed)
        extra = {} if params is None else {"params": params(model)}
        opt = curvlab.create(name, model, loss_fn, **extra, **hp)
        return model, loss_fn, batches, opt

    @staticmethod
    def closure_for(model, loss_fn, batches, step: int):
        """The contract closure for the batch used at ``step`` (fresh batches cycle on)."""
        x, y = batches[step % len(batches)]
        fresh = iter(batches[(step + 1) % len(batches) :] + batches)
        return curvlab.closure(model, loss_fn, x, y, batches=fresh)

    def run(self, model, loss_fn, batches, opt, steps: int, start: int = 0) -> list[float]:
        """Take ``steps`` steps and return the losses the steps reported."""
        losses = []
        for t in range(start, start + steps):
            loss = opt.step(self.closure_for(model, loss_fn, batches, t))
            losses.append(float(loss.detach()))
        return losses

    # ------------------------------------------------------------------ tests
    def test_is_curvature_optimizer(self, optimizer_name: str) -> None:
        """The registered object is a CurvatureOptimizer with a schema and a summary."""
        info = curvlab.info(optimizer_name)
        assert issubclass(info.cls, CurvatureOptimizer)
        assert info.meta.summary, "meta.summary must describe the optimizer"
        assert "lr" in info.schema, "every optimizer declares an 'lr' hyper-parameter"

    def test_decreases_loss(self, optimizer_name: str) -> None:
        """On a convex problem the full-batch loss falls by at least 10 %."""
        model, loss_fn, batches, opt = self.make(optimizer_name)
        before = _full_loss(model, loss_fn, batches)
        self.run(model, loss_fn, batches, opt, self.steps)
        after = _full_loss(model, loss_fn, batches)
        assert math.isfinite(after) and after < 0.9 * before, (before, after)

    def test_invalid_hparams_raise(self, optimizer_name: str) -> None:
        """Every invalid value raises ValueError naming its parameter."""
        schema = curvlab.info(optimizer_name).schema
        model, loss_fn, _ = logistic_problem()
        for p in schema:
            for value in invalid_values(p):
                with pytest.raises(ValueError, match=p.name):
                    curvlab.create(optimizer_name, model, loss_fn, **{p.name: value})
        with pytest.raises(ValueError, match="unknown hyper-parameter"):
            curvlab.create(optimizer_name, model, loss_fn, not_a_hparam=1.0)

    def test_state_dict_round_trip_is_bitwise(self, optimizer_name: str) -> None:
        """A fresh optimizer loaded from ``state_dict`` continues identically.

        The global RNG is left in a different state for the resumed run: every
        random stream an optimizer uses must live in its state dict.
        """
        model, loss_fn, batches, opt = self.make(optimizer_name)
        self.run(model, loss_fn, batches, opt, 5)
        saved_opt = copy.deepcopy(opt.state_dict())
        saved_model = copy.deepcopy(model.state_dict())
        torch.manual_seed(99)
        self.run(model, loss_fn, batches, opt, 5, start=5)
        expected = _params(model)

        model2, loss_fn2, batches2, opt2 = self.make(optimizer_name, seed=1)
        model2.load_state_dict(saved_model)
        opt2.load_state_dict(saved_opt)
        assert_state_equal(opt2.state_dict()["curvlab"], saved_opt["curvlab"], "curvlab")
        torch.manual_seed(12345)  # not the uninterrupted run's global state
        self.run(model2, loss_fn2, batches2, opt2, 5, start=5)
        for a, b in zip(expected, _params(model2)):
            assert torch.equal(a, b), (
                "resumed trajectory differs from the uninterrupted one (a random stream outside "
                "the state dict?)"
            )

    def test_lr_scheduler_drives_step(self, optimizer_name: str) -> None:
        """LambdaLR changes the groups' lr; a factor 0 freezes the parameters."""
        model, loss_fn, batches, opt = self.make(optimizer_name)
        base = opt.param_groups[0]["lr"]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 if epoch < 3 else 0.0)
        for t in range(3):
            opt.step(self.closure_for(model, loss_fn, batches, t))
            sched.step()
        assert opt.param_groups[0]["lr"] == 0.0 and base > 0
        frozen = _params(model)
        self.run(model, loss_fn, batches, opt, 3, start=3)
        for a, b in zip(frozen, _params(model)):
            assert torch.equal(a, b), "lr = 0 from the scheduler must not move the weights"

    def test_deterministic_under_seed(self, optimizer_name: str) -> None:
        """Two runs from the same seed give bitwise identical weights."""
        runs = []
        for _ in range(2):
            model, loss_fn, batches, opt = self.make(optimizer_name, seed=3)
            self.run(model, loss_fn, batches, opt, 6)
            runs.append(_params(model))
        for a, b in zip(*runs):
            assert torch.equal(a, b)

    def test_nan_step_is_skipped(self, optimizer_name: str) -> None:
        """NaN loss → warning, weights and state unchanged, training continues."""
        model, loss_fn, batches, opt = self.make(optimizer_name)
        self.run(model, loss_fn, batches, opt, 3)
        before_params = _params(model)
        before_state = copy.deepcopy(opt.state_dict())
        x, y = batches[0]
        bad = curvlab.closure(model, loss_fn, x * float("nan"), y, batches=iter([(x * math.nan, y)] * 8))
        with pytest.warns(NonFiniteStepWarning):
            opt.step(bad)
        for a, b in zip(before_params, _params(model)):
            assert torch.equal(a, b), "parameters changed during a skipped step"
        after_state = opt.state_dict()
        assert_state_equal(after_state["state"], before_state["state"], "state")
        assert_state_equal(
            after_state["curvlab"]["curv_state"], before_state["curvlab"]["curv_state"], "curv"
        )
        assert after_state["curvlab"]["stats"]["skipped_steps"] >= 1
        with warnings.catch_warnings():
            warnings.simplefilter("error", NonFiniteStepWarning)
            losses = self.run(model, loss_fn, batches, opt, 2, start=3)
        assert all(math.isfinite(v) for v in losses)
        assert all(torch.isfinite(p).all() for p in model.parameters())

    # -------------------------------------------------------- robustness (#13)
    def test_lr_zero_never_moves(self, optimizer_name: str) -> None:
        """``lr = 0`` freezes the weights: defaults, every bool flipped, with weight decay."""
        schema = curvlab.info(optimizer_name).schema
        decay = {p.name: 0.1 for p in schema if "decay" in p.name and p.type is float
                 and p.check(0.1) == 0.1}
        variants: list[dict[str, Any]] = [{}, decay]
        variants += [{**decay, p.name: not p.default} for p in schema if p.type is bool]
        for variant in variants:
            try:
                model, loss_fn, batches, opt = self.make(optimizer_name, **{**variant, "lr": 0.0})
            except ValueError:
                continue  # a combination the optimizer refuses (e.g. nesterov without momentum)
            before = _params(model)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NonFiniteStepWarning)
                self.run(model, loss_fn, batches, opt, 3)
            assert _same(before, _params(model)), f"lr=0 moved the weights with {variant}"

    def test_huge_lr_never_writes_non_finite_weights(self, optimizer_name: str) -> None:
        """An overflowing step is skipped (with a warning), never written into the weights."""
        try:
            model, loss_fn, batches, opt = self.make(optimizer_name, lr=1e38)
        except ValueError as err:
            assert "lr" in str(err)
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NonFiniteStepWarning)
            self.run(model, loss_fn, batches, opt, 4)
        assert all(torch.isfinite(p).all() for p in model.parameters())

    def test_group_hparams_are_read_per_group(self, optimizer_name: str) -> None:
        """Setting a per-group hyper-parameter in the param group = setting it at construction.

        Runs with a weight decay (where declared), so that decay switches act.
        """
        schema = curvlab.info(optimizer_name).schema
        decay = {p.name: 0.01 for p in schema if "decay" in p.name and p.type is float
                 and p.scope == GROUP and p.check(0.01) == 0.01}
        base = self.hparams_for(optimizer_name, **decay)
        for p in schema:
            if p.scope != GROUP:
                continue
            value = alternative_value(p, base.get(p.name, p.default))
            if value is None:
                continue
            runs = []
            for where in ("constructor", "group"):
                overrides = {**decay, p.name: value} if where == "constructor" else decay
                params = None if where == "constructor" else (
                    lambda m, k=p.name, v=value: [{"params": list(m.parameters()), k: v}])
                try:
                    model, loss_fn, batches, opt = self.make(optimizer_name, params=params,
                                                             **overrides)
                except ValueError as err:
                    runs.append(("refused", str(err)))
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", NonFiniteStepWarning)
                    self.run(model, loss_fn, batches, opt, 4)
                runs.append(("ran", _params(model)))
            (kind_a, a), (kind_b, b) = runs
            assert kind_a == kind_b, f"{p.name}={value!r}: {kind_a} at construction, {kind_b} per group"
            if kind_a == "ran":
                assert _same(a, b), (
                    f"{p.name}={value!r} in the param group gives another trajectory than at "
                    "construction: the per-group value is not read per group"
                )

    def test_optimizer_hparams_refused_per_group(self, optimizer_name: str) -> None:
        """A per-optimizer hyper-parameter may not be overridden per group or edited later."""
        schema = curvlab.info(optimizer_name).schema
        for p in schema:
            if p.scope != OPTIMIZER:
                continue
            value = alternative_value(p)
            if value is None:
                continue
            with pytest.raises(ValueError, match=rf"{p.name}.*optimizer-wide"):
                self.make(optimizer_name,
                          params=lambda m, k=p.name, v=value: [{"params": list(m.parameters()), k: v}])
            model, loss_fn, batches, opt = self.make(optimizer_name)
            opt.param_groups[0][p.name] = value
            with pytest.raises(ValueError, match=rf"{p.name} is optimizer-wide"):
                opt.step(self.closure_for(model, loss_fn, batches, 0))

    def test_frozen_parameters_are_never_moved(self, optimizer_name: str) -> None:
        """A bias frozen from the start and a layer frozen mid-training stay exactly as they are."""
        model, loss_fn, batches, _ = self.make(optimizer_name, problem=mlp_problem)
        model[0].bias.requires_grad_(False)
        torch.manual_seed(0)
        opt = curvlab.create(optimizer_name, model, loss_fn, **self.hparams_for(optimizer_name))
        bias = model[0].bias.detach().clone()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NonFiniteStepWarning)
            self.run(model, loss_fn, batches, opt, 2)
            for p in model[2].parameters():
                p.requires_grad_(False)
            layer = _params(model[2])
            weight = model[0].weight.detach().clone()
            self.run(model, loss_fn, batches, opt, 3, start=2)
        assert torch.equal(model[0].bias, bias), "a frozen bias moved"
        assert _same(layer, _params(model[2])), "a layer frozen mid-training moved"
        assert not torch.equal(model[0].weight, weight), "the trainable layer stopped training"

    def test_inplace_activation_gives_the_same_trajectory(self, optimizer_name: str) -> None:
        """``ReLU(inplace=True)``: the out-of-place twin's weights, or a refusal naming the module."""
        runs = []
        for inplace in (False, True):
            try:
                model, loss_fn, batches, opt = self.make(
                    optimizer_name, problem=lambda seed, i=inplace: mlp_problem(seed, inplace=i))
            except ValueError as err:
                assert inplace and "model.1" in str(err), str(err)
                return
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NonFiniteStepWarning)
                self.run(model, loss_fn, batches, opt, 4)
            runs.append(_params(model))
        assert _same(*runs), "ReLU(inplace=True) changed the trajectory"

    def test_parameter_outside_the_model_gets_fresh_gradients(self, optimizer_name: str) -> None:
        """A tensor in the loss but not in the model: ``.grad`` is this step's gradient, not a sum."""
        model, _, batches = logistic_problem(0)
        shift = nn.Parameter(torch.zeros(4))
        ce = nn.CrossEntropyLoss()

        def loss_fn(out, y):
            return ce(out + shift, y)

        hp = self.hparams_for(optimizer_name, lr=0.0)
        try:
            opt = curvlab.create(optimizer_name, model, loss_fn, params=[*model.parameters(), shift],
                                 **hp)
        except ValueError as err:
            assert "not in the model" in str(err) or "loss" in str(err), str(err)
            return
        x, y = batches[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NonFiniteStepWarning)
            for _ in range(3):  # lr = 0: the same point, so the same gradient every step
                opt.step(curvlab.closure(model, loss_fn, x, y, batches=iter([(x, y)] * 8)))
        (expected,) = torch.autograd.grad(loss_fn(model(x), y), shift)
        assert shift.grad is not None
        torch.testing.assert_close(shift.grad.detach(), expected, rtol=1e-6, atol=1e-7)

    def test_sparse_gradients_work_or_are_refused(self, optimizer_name: str) -> None:
        """``EmbeddingBag(sparse=True)``: trained with finite weights, or refused naming it."""
        torch.manual_seed(0)
        model = nn.Sequential(nn.EmbeddingBag(10, 4, mode="mean", sparse=True), nn.Linear(4, 3))
        loss_fn = nn.CrossEntropyLoss()
        try:
            opt = curvlab.create(optimizer_name, model, loss_fn, **self.hparams_for(optimizer_name))
        except ValueError as err:
            assert "model.0" in str(err), str(err)
            return
        x, y = torch.randint(0, 10, (8, 3)), torch.randint(0, 3, (8,))
        before = _params(model)
        for _ in range(3):
            opt.step(curvlab.closure(model, loss_fn, x, y, batches=iter([(x, y)] * 8)))
        assert not _same(before, _params(model))
        assert all(torch.isfinite(p).all() for p in model.parameters())

    def test_load_state_dict_refuses_mismatches(self, optimizer_name: str) -> None:
        """Another optimizer's state, other shapes or per-optimizer values: a ValueError naming it."""
        model, loss_fn, batches, opt = self.make(optimizer_name)
        self.run(model, loss_fn, batches, opt, 2)
        saved = copy.deepcopy(opt.state_dict())
        other = "sgd" if optimizer_name != "sgd" else "adam"
        _, _, _, foreign = self.make(other)
        with pytest.raises(ValueError, match=rf"saved by {optimizer_name!r}"):
            foreign.load_state_dict(saved)
        wide = torch.nn.Sequential(torch.nn.Linear(8, 5))
        try:
            hp = self.hparams_for(optimizer_name)
            resized = curvlab.create(optimizer_name, wide, torch.nn.CrossEntropyLoss(), **hp)
        except ValueError:
            resized = None
        if resized is not None:
            with pytest.raises(ValueError, match=r"shape"):
                resized.load_state_dict(saved)
        schema = curvlab.info(optimizer_name).schema
        for p in schema:
            value = alternative_value(p)
            if p.scope != OPTIMIZER or value is None:
                continue
            try:
                _, _, _, changed = self.make(optimizer_name, **{p.name: value})
            except ValueError:
                continue
            with pytest.raises(ValueError, match=p.name):
                changed.load_state_dict(saved)
        _, _, _, fresh = self.make(optimizer_name, lr=0.123)
        fresh.load_state_dict(saved)  # per-group values come from the checkpoint, as in torch
        assert fresh.param_groups[0]["lr"] == saved["param_groups"][0]["lr"]

    def test_bad_model_argument_raises(self, optimizer_name: str) -> None:
        """``create(name, None)`` (or a number, or a bare tensor): a ValueError, not a traceback."""
        for bad in (None, 3, torch.ones(2)):
            with pytest.raises(ValueError):
                curvlab.create(optimizer_name, bad, nn.CrossEntropyLoss())

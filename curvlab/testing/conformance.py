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
from curvlab.hparams import HParam
from curvlab.optimizer import CurvatureOptimizer, NonFiniteStepWarning

__all__ = ["ConformanceSuite", "assert_state_equal", "invalid_values", "logistic_problem"]


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


def invalid_values(p: HParam) -> list[Any]:
    """Values that :meth:`HParam.check` must reject (for the invalid-hparam test).

    Example:
        >>> invalid_values(HParam("lr", float, 0.1, "step", low=0.0, low_open=True))
        ['not-a-number', 0.0, -1.0, nan]
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
    if p.type is int:
        bad += [1.5]
    if p.type is tuple:
        bad = [[bad[1]] * (p.length or 1)] if len(bad) > 1 else ["not-a-tuple"]
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
    def make(self, name: str, seed: int = 0, **overrides: Any):
        """Model, loss, batches and optimizer for ``name`` (seeded)."""
        model, loss_fn, batches = logistic_problem(seed)
        cls = curvlab.info(name).cls
        hp = {**dict(cls.meta.conformance), **self.hparams.get(name, {}), **overrides}
        torch.manual_seed(seed)
        opt = curvlab.create(name, model, loss_fn, **hp)
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
        """A fresh optimizer loaded from ``state_dict`` continues identically."""
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
        torch.manual_seed(99)
        self.run(model2, loss_fn2, batches2, opt2, 5, start=5)
        for a, b in zip(expected, _params(model2)):
            assert torch.equal(a, b), "resumed trajectory differs from the uninterrupted one"

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

"""A run that keeps skipping steps is reported once as diverged, with the backend's hint (issue 19)."""

import math
import warnings

import pytest
import torch

import curvlab
from curvlab import DivergedWarning, NonFiniteStepWarning
from curvlab.testing import ConformanceSuite

SUITE = ConformanceSuite()


def _kinds(caught):
    diverged = [w for w in caught if issubclass(w.category, DivergedWarning)]
    skipped = [w for w in caught if w.category is NonFiniteStepWarning]
    return diverged, skipped


def _nan_closure(model, loss_fn, batches):
    x, y = batches[0]
    return curvlab.closure(model, loss_fn, x * math.nan, y, batches=iter([(x * math.nan, y)] * 8))


@pytest.mark.parametrize("name", curvlab.available())
def test_consecutive_skips_warn_once_with_the_hint(name):
    model, loss_fn, batches, opt = SUITE.make(name)
    opt.diverged_after = 3  # the class default is 10; the rule is the same
    SUITE.run(model, loss_fn, batches, opt, 2)
    for round_ in range(2):  # a successful step in between starts the count afresh
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(7):
                opt.step(_nan_closure(model, loss_fn, batches))
        diverged, skipped = _kinds(caught)
        assert len(skipped) == 3 and len(diverged) == 1, (round_, [str(w.message) for w in caught])
        message = str(diverged[0].message)
        hint = opt.meta.divergence_hint or "lower lr"
        assert f"{opt.name}: the run has diverged: the last 3 steps were all skipped" in message
        assert message.endswith(hint), message
        with warnings.catch_warnings():
            warnings.simplefilter("error", NonFiniteStepWarning)
            SUITE.run(model, loss_fn, batches, opt, 1, start=2 + round_)
    assert opt.stats["skipped_steps"] == 14


def test_default_threshold_and_kbfgs_hint():
    model, loss_fn, batches, opt = SUITE.make("kbfgs")
    assert opt.diverged_after == 10 and "line_search" in opt.meta.divergence_hint
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(12):
            opt.step(_nan_closure(model, loss_fn, batches))
    diverged, skipped = _kinds(caught)
    assert len(skipped) == 10 and len(diverged) == 1
    assert "lower lr (e.g. lr=0.1)" in str(diverged[0].message)
    assert all(torch.isfinite(p).all() for p in model.parameters())

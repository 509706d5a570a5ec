"""Base-class guarantees: skipped steps, counters, curvature state kept verbatim."""

import copy

import pytest
import torch

import curvlab
from curvlab import NonFiniteStepWarning, Skip, Step
from curvlab_plugins.baselines import SGD


class SkipsInsideUpdate(SGD):
    """An SGD whose curvature part 'fails' on every odd step."""

    name = "skipper"

    def _update(self, closure, evaluation):
        calls = self.curv_state.setdefault("calls", 0)
        if calls % 2:
            self.curv_state["calls"] = calls + 2  # (the state change is the test's own concern)
            return Skip("synthetic non-finite curvature")
        self.curv_state["calls"] = calls + 1
        super()._update(closure, evaluation)
        return Step(counts={"synthetic": 1}, values={"last": float(calls)})


def test_skip_inside_update_is_counted_once():
    model = torch.nn.Linear(2, 1)
    opt = SkipsInsideUpdate(model, lr=0.1)
    c = curvlab.closure(model, torch.nn.MSELoss(), torch.ones(3, 2), torch.zeros(3, 1))
    opt.step(c)
    with pytest.warns(NonFiniteStepWarning, match="synthetic"):
        opt.step(c)
    assert opt.stats["steps"] == 1 and opt.stats["skipped_steps"] == 1
    assert opt.stats["synthetic"] == 1 and opt.stats["last"] == 0.0


def test_float64_curvature_state_survives_round_trip_uncast():
    model = torch.nn.Linear(2, 1)  # float32 model
    opt = curvlab.create("sgd", model)
    opt.curv_state["factor"] = torch.randn(3, 3, dtype=torch.float64)
    saved = copy.deepcopy(opt.state_dict())
    opt2 = curvlab.create("sgd", torch.nn.Linear(2, 1))
    opt2.load_state_dict(saved)
    assert opt2.curv_state["factor"].dtype == torch.float64
    assert torch.equal(opt2.curv_state["factor"], saved["curvlab"]["curv_state"]["factor"])
    opt2.curv_state["factor"].add_(1)  # loading copies: the saved dict is not aliased
    assert not torch.equal(opt2.curv_state["factor"], saved["curvlab"]["curv_state"]["factor"])


def test_two_optimizers_do_not_interfere():
    a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    oa, ob = curvlab.create("adam", a), curvlab.create("adam", b)
    oa.curv_state["x"] = 1
    assert "x" not in ob.curv_state and oa.stats is not ob.stats


def test_loss_fn_required_where_declared():
    class NeedsLoss(SGD):
        name = "needsloss"
        meta = SGD.meta.__class__(summary="x", needs_loss_fn=True)

    with pytest.raises(ValueError, match="needs loss_fn"):
        NeedsLoss(torch.nn.Linear(2, 1))

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


def test_update_result_contract():
    """None counts as an applied step; anything but Step/Skip/None is a TypeError, not a guess."""

    class Legacy(SGD):  # the pre-Evaluation shape of a plugin: bare loss, no return value
        name = "legacy"

        def _evaluate(self, closure):
            return closure()

        def _update(self, closure, evaluation):
            assert isinstance(evaluation, curvlab.Evaluation)
            super()._update(closure, evaluation)

    class Junk(SGD):
        name = "junk"

        def _update(self, closure, evaluation):
            return True

    model = torch.nn.Linear(2, 1)
    c = curvlab.closure(model, torch.nn.MSELoss(), torch.ones(3, 2), torch.zeros(3, 1))
    legacy = Legacy(model, lr=0.1)
    legacy.step(c)
    assert legacy.stats["steps"] == 1
    with pytest.raises(TypeError, match="must return Step, Skip or None"):
        Junk(model).step(c)


def test_load_state_dict_names_what_differs():
    model, ce = torch.nn.Sequential(torch.nn.Linear(3, 2)), torch.nn.CrossEntropyLoss()
    c = curvlab.closure(model, ce, torch.ones(4, 3), torch.zeros(4).long())
    kfac = curvlab.create("kfac", model, ce, factor_every=2)
    kfac.step(c)
    saved = copy.deepcopy(kfac.state_dict())
    assert saved["curvlab"]["optimizer"] == "kfac"
    assert saved["curvlab"]["optimizer_hparams"]["factor_every"] == 2
    other = curvlab.create("kfac", model, torch.nn.CrossEntropyLoss(), factor_every=5)
    with pytest.raises(ValueError, match=r"factor_every=2 \(this optimizer: 5\)"):
        other.load_state_dict(saved)
    with pytest.raises(ValueError, match=r"saved by 'kfac', not by 'adam'"):
        curvlab.create("adam", model).load_state_dict(saved)
    wide = torch.nn.Sequential(torch.nn.Linear(3, 4))
    with pytest.raises(ValueError, match=r"shape \(2, 3\) where this optimizer has model.0.weight of shape \(4, 3\)"):
        curvlab.create("kfac", wide, torch.nn.CrossEntropyLoss(), factor_every=2).load_state_dict(saved)
    old = copy.deepcopy(saved)  # a checkpoint of an older curvlab: no identity entries
    for key in ("optimizer", "optimizer_hparams", "shapes"):
        del old["curvlab"][key]
    same = curvlab.create("kfac", model, torch.nn.CrossEntropyLoss(), factor_every=2)
    same.load_state_dict(old)
    with pytest.raises(ValueError, match="factor_every"):
        other.load_state_dict(old)
    adam_sd = curvlab.create("adam", model).state_dict()
    del adam_sd["curvlab"]["optimizer"]
    with pytest.raises(ValueError, match=r"hyper-parameters betas, decoupled, eps that sgd does not declare"):
        curvlab.create("sgd", model).load_state_dict(adam_sd)


def test_optimizer_wide_values_are_read_only_and_edits_are_refused():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    opt = curvlab.create("kfac", model, torch.nn.CrossEntropyLoss(), inverse_every=7)
    assert opt.optimizer_hparams["inverse_every"] == 7
    with pytest.raises(TypeError):
        opt.optimizer_hparams["inverse_every"] = 3  # type: ignore[index]
    opt.param_groups[0]["damping"] = 0.5  # per group: honoured at the next step
    opt.param_groups[0]["inverse_every"] = 3
    c = curvlab.closure(model, torch.nn.CrossEntropyLoss(), torch.ones(4, 3), torch.zeros(4).long())
    with pytest.raises(ValueError, match=r"inverse_every is optimizer-wide and fixed at construction"):
        opt.step(c)

"""The compute floor's FLOP counts against hand counts on a tiny MLP (no timing)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvlab.harness.floor import ModelCost, layer_shapes, model_cost, step_floor

# Linear(3, 4) → ReLU → Linear(4, 2), batch n = 5: forward 2·5·(12 + 8) = 200; backward:
# weight gradients 2·5·12 + 2·5·8 = 200 plus the input gradient of the second layer 2·5·8 = 80.
FORWARD, BACKWARD, PARTIAL = 200, 280, 80
FB = FORWARD + BACKWARD


@pytest.fixture(scope="module")
def cost() -> ModelCost:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    return model_cost(net, nn.MSELoss(), torch.randn(5, 3), torch.randn(5, 2))


# (id, optimizer, hparams, horizon, expected (passes, statistics, inverse, precondition))
CASES = [
    ("sgd", "sgd", {}, (0, 1), (FB, 0, 0, 0)),
    ("adam", "adam", {}, (0, 1), (FB, 0, 0, 0)),
    # stats: partial pass 80 + A 2·5·(9 + 16) + G 2·5·(16 + 4); inverses (27 + 64 + 64) + (64 + 8 + 8);
    # product 2·16·3 + 2·4·9 + bias 2·16, 2·4·4 + 2·2·16 + bias 2·4
    ("kfac-every-step", "kfac", {"factor_every": 1, "inverse_every": 1}, (0, 1),
     (FB, 530, 235, 304)),
    ("kfac-schedule", "kfac", {"factor_every": 5, "inverse_every": 50}, (0, 1),
     (FB, 106, 4.7, 304)),
    ("kfac-mc4", "kfac", {"factor_every": 1, "inverse_every": 1, "mc_samples": 4}, (0, 1),
     (FB, 4 * 80 + 250 + 4 * 200, 235, 304)),
    # homogeneous d_h = 4, 5: stats 2·5·(16 + 25) · 2/10; inverse (64 + 125)/10; 2·4·16 + 2·2·25
    ("foof", "foof", {"inverse_every": 10, "stats_steps": 2}, (0, 1), (FB, 82, 18.9, 228)),
    ("foof-every-step", "foof", {"inverse_every": 1, "stats_steps": None}, (0, 1),
     (FB, 410, 189, 228)),
    # second forward and partial backward; A EMA 2·5·d_h² + H_a BFGS 12 d_h² + H_g BFGS 8 d_o²;
    # P = H_g M H_a: 2 d_o d_h² + 2 d_o² d_h
    ("kbfgs", "kbfgs", {}, (0, 1), (2 * FORWARD + BACKWARD + PARTIAL, 1062, 0, 396)),
    # k = mean of min(3, t) for t = 0..3 = 1.5: 8k d_o d_h + 4k²(d_h + d_o) replaces H_g
    ("kbfgsl", "kbfgsl", {"memory": 3}, (0, 4),
     (2 * FORWARD + BACKWARD + PARTIAL, 902, 0, 128 + 192 + 72 + 100 + 120 + 63)),
]


@pytest.mark.parametrize(("name", "hparams", "horizon", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_floor_matches_hand_count(cost, name, hparams, horizon, expected):
    f = step_floor(name, cost, hparams, horizon=horizon)
    assert (f.passes, f.statistics, f.inverse, f.precondition) == pytest.approx(expected)
    assert f.total == pytest.approx(sum(expected))


def test_model_cost_counts_passes_and_layers(cost):
    assert (cost.forward, cost.backward, cost.partial_backward) == (FORWARD, BACKWARD, PARTIAL)
    assert [(s.d_in, s.d_out, s.rows, s.d_h) for s in cost.layers] == [(3, 4, 5, 4), (4, 2, 5, 5)]
    assert cost.hvp > FB and cost.outputs == 2


def test_groupednewton_counts_its_periodic_passes():
    c = ModelCost(FORWARD, BACKWARD, 1000, (), ((4, 3), (4,), (2, 4), (2,)), 2)
    # every 10 steps: fresh forward + backward, 2S = 8 reverse passes of (hvp − fb), safeguard forward
    f = step_floor("groupednewton", c, {"period": 10, "order": 3, "partition": "tensor"})
    assert f.passes == pytest.approx(FB + (2 * FORWARD + BACKWARD + 8 * (1000 - FB)) / 10)
    f2 = step_floor("groupednewton", c, {"period": 10, "order": 2, "partition": "trivial"})
    assert f2.passes == pytest.approx(FB + (2 * FORWARD + BACKWARD + (1000 - FB)) / 10)


def test_layer_shapes_count_positions_of_a_sequence_model():
    net = nn.Linear(6, 3)
    (shape,) = layer_shapes(net, torch.zeros(2, 7, 6))
    assert (shape.rows, shape.d_in, shape.d_out) == (14, 6, 3)


def test_unknown_optimizer_is_refused(cost):
    with pytest.raises(KeyError, match="no compute floor for 'lion'.*kfac"):
        step_floor("lion", cost, {})


def test_model_cost_leaves_gradients_alone():
    net = nn.Linear(2, 1)
    net.weight.grad = torch.ones_like(net.weight)
    model_cost(net, nn.MSELoss(), torch.randn(3, 2), torch.randn(3, 1))
    assert torch.equal(net.weight.grad, torch.ones_like(net.weight)) and net.bias.grad is None

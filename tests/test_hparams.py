"""Hyper-parameter schema: validation messages name the parameter, value and range."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import curvlab
from curvlab.hparams import GROUP, OPTIMIZER, HParam, Schema

LR = HParam("lr", float, 0.1, "step size", low=0.0, low_open=True, grid=(1.0, 0.1))
MOM = HParam("momentum", float, 0.9, "momentum", low=0.0, high=1.0, high_open=True)
EVERY = HParam("every", int, 10, "period", low=1)
KIND = HParam("kind", str, "mc", "Fisher type", choices=("mc", "exact"))
FLAG = HParam("flag", bool, False, "switch")
CLIP = HParam("clip", float, None, "optional bound", low=0.0, low_open=True, optional=True)
BETAS = HParam("betas", tuple, (0.9, 0.99), "pair", low=0.0, high=1.0, high_open=True, length=2)
SCHEMA = Schema([LR, MOM, EVERY, KIND, FLAG, CLIP, BETAS])

INVALID = [
    ("lr", 0.0, r"lr must be in \(0.0, inf\), got 0.0"),
    ("lr", -1, r"lr must be in \(0.0, inf\), got -1"),
    ("lr", math.nan, "lr must be in"),
    ("lr", "big", "lr must be in"),
    ("lr", True, "lr must be in"),
    ("momentum", 1.0, r"momentum must be in \[0.0, 1.0\), got 1.0"),
    ("every", 0, r"every must be in \[1, inf\), got 0"),
    ("every", 2.5, "every must be in"),
    ("kind", "mcc", r"kind must be one of \{'mc', 'exact'\}, got 'mcc' \(did you mean 'mc'\?\)"),
    ("flag", 1, "flag must be in {True, False}"),
    ("clip", -1.0, r"clip must be in \(0.0, inf\) or None"),
    ("betas", (0.9,), "betas must have 2 entries"),
    ("betas", (0.9, 1.0), "every entry of betas must be in"),
]


@pytest.mark.parametrize("name, value, message", INVALID, ids=[f"{n}={v!r}" for n, v, _ in INVALID])
def test_invalid_values_are_named(name, value, message):
    with pytest.raises(ValueError, match=message):
        SCHEMA.validate({name: value})


def test_defaults_fill_and_ints_become_floats():
    out = SCHEMA.validate({"lr": 1, "every": 4.0})
    assert out["lr"] == 1.0 and isinstance(out["lr"], float)
    assert out["every"] == 4 and isinstance(out["every"], int)
    assert out["momentum"] == 0.9 and out["clip"] is None
    assert list(out) == list(SCHEMA.names)


def test_unknown_name_suggests():
    with pytest.raises(ValueError, match=r"unknown hyper-parameter 'momentm' \(did you mean 'momentum'\?\)"):
        SCHEMA.validate({"momentm": 0.5})


def test_bad_declarations_fail_early():
    with pytest.raises(ValueError, match="lr must be in"):
        HParam("lr", float, -1.0, "bad default", low=0.0)
    with pytest.raises(ValueError, match="duplicate"):
        Schema([LR, LR])
    with pytest.raises(ValueError, match="lr must be in"):
        HParam("lr", float, 0.1, "bad grid", low=0.0, grid=(-1.0,))


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_float_check_agrees_with_range(x):
    inside = (not math.isnan(x)) and 0.0 <= x < 1.0
    if inside:
        assert MOM.check(x) == x
    else:
        with pytest.raises(ValueError, match="momentum"):
            MOM.check(x)


def test_param_group_overrides_are_validated():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    groups = [{"params": model[0].parameters(), "lr": 0.5}, {"params": model[1].parameters()}]
    opt = curvlab.create("sgd", model, params=groups, lr=0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.1]
    with pytest.raises(ValueError, match="momentum must be in"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))], "momentum": 2.0})
    with pytest.raises(ValueError, match="unknown hyper-parameter 'lrr'"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))], "lrr": 2.0})


def test_table_rows_come_from_schema():
    rows = SCHEMA.table()
    assert [r["name"] for r in rows] == list(SCHEMA.names)
    assert rows[3]["range"] == "{'mc', 'exact'}"
    assert {r["scope"] for r in rows} == {"group"}


NON_FINITE = [
    ("inf-lr", LR, math.inf, r"lr must be in \(0.0, inf\), got inf"),
    ("minus-inf-unbounded", HParam("shift", float, 0.0, "any float"), -math.inf,
     r"shift must be in \(-inf, inf\), got -inf"),
    ("inf-in-a-tuple", HParam("pair", tuple, (1.0, 2.0), "pair", low=0.0, length=2),
     (1.0, math.inf), r"every entry of pair must be in \[0.0, inf\)"),
    ("overflowing-literal", LR, float("1e400"), r"lr must be in \(0.0, inf\), got inf"),
]


@pytest.mark.parametrize("p,value,message", [c[1:] for c in NON_FINITE], ids=[c[0] for c in NON_FINITE])
def test_non_finite_values_are_refused_and_the_range_says_so(p, value, message):
    with pytest.raises(ValueError, match=message):
        p.check(value)


def test_an_hparam_may_allow_infinity_and_its_range_shows_it():
    clip = HParam("clip", float, math.inf, "no clipping at inf", low=0.0, finite=False)
    assert clip.check(math.inf) == math.inf and clip.range_text == "[0.0, inf]"
    with pytest.raises(ValueError, match="clip"):
        clip.check(math.nan)


def test_every_registered_float_hparam_refuses_inf():
    """Registry-wide: no declared float accepts inf unless it says so in its range."""
    count = 0
    for name in curvlab.available():
        for p in curvlab.info(name).schema:
            if p.type is not float:
                continue
            count += 1
            assert p.finite == ("inf]" not in p.range_text), (name, p.name)
            if p.finite:
                with pytest.raises(ValueError, match=p.name):
                    p.check(math.inf)
    assert count > 50


def test_scope_is_declared_and_validated():
    every = HParam("every", int, 5, "period", low=1, scope=OPTIMIZER)
    schema = Schema([LR, every])
    assert schema.scoped(OPTIMIZER) == ("every",) and schema.scoped(GROUP) == ("lr",)
    assert schema.validate_group({"every": 5}, {"lr": 0.1, "every": 5}) == {"every": 5}
    with pytest.raises(ValueError, match=r"every is optimizer-wide .*the group sets every=2"):
        schema.validate_group({"every": 2, "lr": 0.3}, {"lr": 0.1, "every": 5})
    with pytest.raises(ValueError, match="scope must be one of"):
        HParam("x", float, 1.0, "bad scope", scope="layer")


def test_every_backend_declares_the_scopes_of_issue_20():
    """K-FAC/FOOF per-optimizer settings, and every bridge/GroupedNewton knob held per optimizer."""
    expected = {
        "kfac": {"factor_every", "ema_decay", "inverse_every", "kl_clip", "fisher_type",
                 "damping_heuristic", "mc_samples", "kfac_approx", "fallback", "diagnostics"},
        "foof": {"inverse_every", "stats_steps", "ema_decay", "relative_damping", "kfac_approx",
                 "fallback"},
        "groupednewton": {"lambda_int", "order", "period", "eta_ema", "clip_negative",
                          "direction", "momentum", "dampening", "beta2", "partition",
                          "full_third_order", "safeguard", "recompute_growth", "ema_before_clip",
                          "plateau_factor", "plateau_patience", "plateau_window"},
        "kbfgs": set(), "kbfgsl": set(), "sgd": set(), "adam": set(),
    }
    if "soap" in curvlab.available():
        expected.update({
            "adahessian": {"update_period", "num_samples", "hessian_distribution"},
            "sophiah": {"update_period", "num_samples", "hessian_distribution"},
            "shampoo": {"preconditioning_compute_steps"},
            "kron": {"balance_prob", "pre_conditioner_update_probability"},
            "soap": set(), "muon": set(),
        })
    for name, wide in expected.items():
        assert set(curvlab.info(name).schema.scoped(OPTIMIZER)) == wide, name

"""Schema.parse: command-line text → the typed, validated value; errors name the hparam and range."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

import curvlab
from curvlab.hparams import HParam, Schema

SCHEMA = Schema([
    HParam("lr", float, 0.1, "step size", low=0.0, low_open=True),
    HParam("every", int, 10, "period", low=1),
    HParam("kind", str, "mc", "Fisher type", choices=("mc", "exact")),
    HParam("flag", bool, False, "switch"),
    HParam("clip", float, None, "optional bound", low=0.0, low_open=True, optional=True),
    HParam("betas", tuple, (0.9, 0.99), "pair", low=0.0, high=1.0, high_open=True, length=2),
])

VALID = [  # (name, text, value)
    ("lr", "0.5", 0.5), ("lr", " 1e-3 ", 1e-3), ("lr", "2", 2.0),
    ("every", "20", 20), ("every", "2.0", 2), ("every", "1e3", 1000),
    ("kind", "exact", "exact"),
    ("flag", "true", True), ("flag", "FALSE", False), ("flag", "1", True), ("flag", "no", False),
    ("clip", "none", None), ("clip", "None", None), ("clip", "0.5", 0.5),
    ("betas", "0.8,0.9", (0.8, 0.9)), ("betas", "(0.8, 0.9)", (0.8, 0.9)),
    ("betas", "[0.5,0.5]", (0.5, 0.5)),
]


@pytest.mark.parametrize("name, text, value", VALID, ids=[f"{n}={t!r}" for n, t, _ in VALID])
def test_valid_text(name, text, value):
    out = SCHEMA.parse(name, text)
    assert out == value and type(out) is type(value)


INVALID = [  # (name, text, words the message must contain)
    ("every", "2.5", ["every", "integer", "[1, inf)", "'2.5'"]),
    ("every", "abc", ["every", "integer", "[1, inf)"]),
    ("every", "0", ["every", "[1, inf)"]),
    ("lr", "abc", ["lr", "number", "(0.0, inf)", "'abc'"]),
    ("lr", "-1", ["lr", "(0.0, inf)"]),
    ("lr", "nan", ["lr", "(0.0, inf)"]),
    ("lr", "none", ["lr", "number"]),  # not optional
    ("lr", "", ["lr", "number"]),
    ("kind", "mcc", ["kind", "{'mc', 'exact'}", "did you mean 'mc'"]),
    ("flag", "maybe", ["flag", "true or false"]),
    ("clip", "-1", ["clip", "(0.0, inf) or None"]),
    ("betas", "abc", ["betas", "2 comma-separated numbers", "[0.0, 1.0)"]),
    ("betas", "0.9", ["betas", "2 entries"]),
    ("betas", "0.9,1.0", ["betas", "[0.0, 1.0)"]),
    ("lrr", "0.1", ["unknown hyper-parameter 'lrr'", "did you mean 'lr'", "allowed: lr, every"]),
]


@pytest.mark.parametrize("name, text, words", INVALID, ids=[f"{n}={t!r}" for n, t, _ in INVALID])
def test_invalid_text_names_hparam_and_range(name, text, words):
    with pytest.raises(ValueError) as info:
        SCHEMA.parse(name, text)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@given(st.floats(min_value=1e-300, max_value=1e300))
def test_float_text_round_trip(x):
    assert SCHEMA.parse("lr", repr(x)) == SCHEMA.validate({"lr": x})["lr"]


@given(st.integers(min_value=1, max_value=10**12))
def test_int_text_round_trip(n):
    assert SCHEMA.parse("every", str(n)) == n


def _text(value):
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(repr(v) for v in value)
    return str(value) if isinstance(value, str) else repr(value)


CASES = [(name, p.name) for name in curvlab.available() for p in curvlab.info(name).schema]


@pytest.mark.parametrize("optimizer, hparam", CASES, ids=[f"{o}.{h}" for o, h in CASES])
def test_every_registered_default_parses_back(optimizer, hparam):
    """The text of every declared default parses to that default: parse covers every declared type."""
    schema = curvlab.info(optimizer).schema
    default = schema[hparam].default
    out = schema.parse(hparam, _text(default))
    assert out == default or (isinstance(default, float) and math.isnan(default) and math.isnan(out))

"""Search spaces on hyper-parameter declarations: maps of the unit cube, checked against the range."""

import math

import pytest

import curvlab
from curvlab.hparams import Choice, Entries, HParam, LogUniform, OneMinusLogUniform, Uniform

# (id, space, u, expected value)
VALUES = [
    ("log-low", LogUniform(1e-4, 1e-2), [0.0], 1e-4),
    ("log-mid", LogUniform(1e-4, 1e-2), [0.5], 1e-3),
    ("log-high", LogUniform(1e-4, 1e-2), [1.0], 1e-2),
    ("uniform-quarter", Uniform(-1.0, 3.0), [0.25], 0.0),
    ("one-minus-low", OneMinusLogUniform(0.01, 0.1), [0.0], 0.99),
    ("one-minus-high", OneMinusLogUniform(0.01, 0.1), [1.0], 0.9),
    ("choice-first", Choice(("a", "b", "c")), [0.0], "a"),
    ("choice-middle", Choice(("a", "b", "c")), [0.34], "b"),
    ("choice-last-at-1", Choice(("a", "b", "c")), [1.0], "c"),
    ("entries", Entries((LogUniform(0.1, 10.0), 0.5, Uniform(0.0, 1.0))), [0.5, 0.25],
     (1.0, 0.5, 0.25)),
]


@pytest.mark.parametrize("space, u, expected", [v[1:] for v in VALUES], ids=[v[0] for v in VALUES])
def test_space_maps_the_unit_cube(space, u, expected):
    got = space.value(u)
    if isinstance(expected, float):
        assert got == pytest.approx(expected, rel=1e-12)
    elif isinstance(expected, tuple):
        assert got == pytest.approx(expected, rel=1e-12)
    else:
        assert got == expected
    assert space.dims == len(u)


# (id, factory, message)
BAD_SPACES = [
    ("log-zero", lambda: LogUniform(0.0, 1.0), "LogUniform needs 0 < low"),
    ("log-reversed", lambda: LogUniform(1.0, 0.1), "needs low < high"),
    ("uniform-nan", lambda: Uniform(math.nan, 1.0), "finite number"),
    ("one-minus-above-1", lambda: OneMinusLogUniform(0.1, 2.0), "high <= 1"),
    ("choice-empty", lambda: Choice(()), "non-empty"),
    ("entries-nested", lambda: Entries((Entries((0.1,)),)), "scalar spaces or numbers"),
    ("space-outside-range", lambda: HParam("lr", float, 0.1, "step", low=0.0, high=1.0,
                                           space=LogUniform(1e-3, 10.0)),
     "search space log-uniform [0.001, 10] leaves the allowed range"),
    ("choice-outside-range", lambda: HParam("k", int, 2, "count", low=1,
                                            space=Choice((0, 2))), "leaves the allowed range"),
    ("range-space-for-str", lambda: HParam("kind", str, "a", "kind", choices=("a", "b"),
                                           space=Uniform(0.0, 1.0)), "takes a Choice"),
    ("scalar-space-for-tuple", lambda: HParam("betas", tuple, (0.9, 0.99), "pair", length=2,
                                              space=LogUniform(0.1, 0.9)), "Entries or Choice"),
    ("not-a-space", lambda: HParam("lr", float, 0.1, "step", space=(0.1, 0.01)),
     "space must be a curvlab.hparams.Space"),
]


@pytest.mark.parametrize("factory, message", [b[1:] for b in BAD_SPACES], ids=[b[0] for b in BAD_SPACES])
def test_bad_space_declarations_fail_early(factory, message):
    with pytest.raises((ValueError, TypeError), match=message.replace("[", r"\[").replace("(", r"\(")):
        factory()


def test_draw_types_and_checks_the_value():
    every = HParam("every", int, 10, "period", low=1, space=LogUniform(1, 1000))
    assert [every.draw([u]) for u in (0.0, 1 / 3, 2 / 3, 1.0)] == [1, 10, 100, 1000]
    assert all(isinstance(every.draw([u / 10]), int) for u in range(10))
    betas = HParam("betas", tuple, (0.9, 0.999), "pair", low=0.0, high=1.0, high_open=True,
                   length=2, space=Entries((OneMinusLogUniform(0.02, 0.5), 0.999)))
    assert betas.draw([0.0]) == pytest.approx((0.98, 0.999))
    with pytest.raises(ValueError, match="takes 1 coordinate"):
        betas.draw([0.1, 0.2])
    with pytest.raises(ValueError, match="declares no search space"):
        HParam("eps", float, 1e-8, "guard", low=0.0).draw([0.5])


def test_legacy_grid_is_a_choice_space():
    p = HParam("lr", float, 0.1, "step", low=0.0, grid=(0.3, 0.1))
    assert p.search_space == Choice((0.3, 0.1)) and p.draw([0.9]) == 0.1


@pytest.mark.parametrize("name", curvlab.available())
def test_every_optimizer_declares_a_learning_rate_space_inside_its_range(name):
    schema = curvlab.info(name).schema
    assert schema["lr"].search_space is not None, name
    for p in schema:
        space = p.search_space
        if space is None:
            continue
        for u in (0.0, 0.3, 0.999, 1.0):
            coords = [u] * space.dims
            assert p.check(p.draw(coords)) == p.draw(coords)
    assert schema.table()[0]["space"]  # shown by `curvlab info` and the docs

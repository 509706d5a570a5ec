"""RunSettings: one declaration → checks, CLI options, docs, scopes; compare/ablate take it."""

import dataclasses
import math
import re

import pytest

from curvlab.harness import ablate, compare
from curvlab.harness.config import RunConfig
from curvlab.harness.settings import SCOPES, RunOptions, RunSettings, declared_settings

BAD = [  # (field values, words of the ValueError)
    ({"steps": 0}, "steps must be a positive integer"),
    ({"steps": True}, "steps must be a positive integer"),
    ({"steps": "10"}, "steps must be a positive integer"),
    ({"steps": 2.0}, "steps must be a positive integer"),
    ({"steps": None, "seconds": None}, "needs a budget"),
    ({"seconds": -1.0}, "seconds must be > 0"),
    ({"seconds": math.inf}, "seconds must be > 0"),
    ({"eval_every": 0}, "eval_every must be a positive integer"),
    ({"device": "gpu"}, "device must be 'cpu' or 'cuda[:N]'"),
    ({"dtype": "half"}, "dtype must be one of"),
    ({"dtype": "float46"}, "did you mean 'float64'"),
    ({"threads": 0}, "threads must be a positive integer"),
    ({"seeds": 1.5}, "seeds must be a positive integer"),
    ({"target": math.nan}, "target must be a finite number"),
    ({"target": "0.1"}, "target must be a finite number"),
    ({"small": "yes"}, "small must be True or False"),
    ({"data_dir": 3}, "data_dir must be a folder path"),
    ({"store": 3}, "store must be a file path"),
    ({"executor": "dask"}, "executor must be one of"),
    ({"jobs": 0}, "jobs must be a positive integer"),
    ({"progress": 1}, "progress must be True or False"),
    ({"name": ""}, "name must be a non-empty string"),
]


@pytest.mark.parametrize("values, words", BAD, ids=[",".join(v) for v, _ in BAD])
def test_bad_settings_are_named(values, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        RunSettings(**values)


def test_every_field_is_declared_documented_and_scoped():
    declared = declared_settings()
    assert [n for n, _, _ in declared] == [f.name for f in dataclasses.fields(RunSettings)]
    for name, _, decl in declared:
        assert decl.scope in SCOPES and decl.doc and f"        {name}: " in RunSettings.__doc__
    run = [n for n, _, d in declared if d.scope == "run"]
    assert run == [f.name for f in dataclasses.fields(RunOptions)]
    assert set(RunSettings().run_options()) == set(run)
    cfg_fields = {f.name for f in dataclasses.fields(RunConfig)}
    assert set(run) <= cfg_fields  # a run's key covers every run-scope setting


def test_frozen_and_build():
    s = RunSettings(steps=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.steps = 5
    assert RunSettings.build(s, seeds=3) == RunSettings(steps=10, seeds=3)
    assert RunSettings.build(None) == RunSettings()
    with pytest.raises(TypeError, match="unknown setting 'stpes'.*did you mean 'steps'"):
        RunSettings.build(s, stpes=3)
    with pytest.raises(ValueError, match="steps must be"):
        RunSettings.build(s, steps=-1)


def test_compare_takes_settings_and_keywords_override_them():
    s = RunSettings(steps=6, eval_every=3, seeds=2, store=":memory:", executor="serial")
    a = compare("quadratic", ["sgd"], settings=s)
    b = compare("quadratic", ["sgd"], settings=s, seeds=1)
    c = compare("quadratic", ["sgd"], steps=6, eval_every=3, seeds=2, store=":memory:",
                executor="serial")
    assert a.spec["seeds"] == 2 and b.spec["seeds"] == 1
    assert a.id == c.id  # the same settings, spelled either way, are the same comparison
    with pytest.raises(TypeError, match="unknown setting"):
        compare("quadratic", ["sgd"], settings=s, stpes=3)


def test_ablate_takes_settings():
    s = RunSettings(steps=4, eval_every=2, store=":memory:", executor="serial")
    a = ablate("quadratic", "sgd", "momentum", [0.0, "0.5"], hparams={"lr": "0.05"}, settings=s)
    c = a.comparisons["quadratic"]
    assert [r["label"] for r in c.summary()] == ["sgd momentum=0", "sgd momentum=0.5"]
    assert c.spec["hparams"] == {"sgd": {"lr": 0.05}}
    with pytest.raises(ValueError, match="sgd.momentum is varied; do not also fix it"):
        ablate("quadratic", "sgd", "momentum", [0.0], hparams={"momentum": 0.5}, settings=s)


def test_hparams_are_parsed_from_text_or_checked_once():
    s = RunSettings(steps=2, eval_every=2, store=":memory:", executor="serial")
    c = compare("quadratic", ["adam"], hparams={"adam": {"betas": "0.8,0.9", "lr": 0.01}},
                settings=s)
    (rec,) = c.records(("final",))
    assert rec["config"].hparams["betas"] == [0.8, 0.9] and rec["config"].hparams["lr"] == 0.01
    with pytest.raises(ValueError, match="betas must be 2 comma-separated numbers"):
        compare("quadratic", ["adam"], hparams={"adam": {"betas": "abc"}}, settings=s)

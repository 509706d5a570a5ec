"""Plugin discovery through entry points: third-party, broken, duplicate, missing extras."""

import textwrap
import warnings

import pytest
import torch

import curvlab
from curvlab.registry import PluginWarning, Registry, normalize

PLUGIN_MODULE = textwrap.dedent(
    '''
    """A third-party curvlab plugin living outside the curvlab distribution."""
    import torch
    from curvlab import CurvatureOptimizer, HParam, OptimizerMeta, Schema

    class SignSGD(CurvatureOptimizer):
        name = "signsgd"
        schema = Schema([HParam("lr", float, 0.01, "step size", low=0.0)])
        meta = OptimizerMeta(summary="sign of the gradient", conformance={"lr": 0.01})

        @torch.no_grad()
        def _update(self, closure, loss):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.add_(p.grad.sign(), alpha=-group["lr"])

    NOT_AN_OPTIMIZER = 42
    '''
)


def make_distribution(root, dist, entry_points, requires=()):
    """Write a minimal installed distribution (dist-info) under ``root``."""
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    meta = ["Metadata-Version: 2.1", f"Name: {dist}", "Version: 0.1"]
    meta += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(meta) + "\n")
    lines = ["[curvlab.optimizers]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    (tmp_path / "thirdparty_signsgd.py").write_text(PLUGIN_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(
    "spelling, expected",
    [("K-BFGS(L)", "kbfgsl"), ("kbfgs_l", "kbfgsl"), ("KBFGSL", "kbfgsl"), ("Grouped Newton", "groupednewton")],
)
def test_normalize(spelling, expected):
    assert normalize(spelling) == expected


def test_builtin_baselines_listed_and_created_by_any_spelling():
    assert {"sgd", "adam"} <= set(curvlab.available())
    model = torch.nn.Linear(3, 2)
    opt = curvlab.create("ADAM", model, torch.nn.MSELoss(), lr=1e-3)
    assert type(opt).__name__ == "Adam" and opt.param_groups[0]["lr"] == 1e-3


def test_unknown_name_lists_available_and_suggests():
    with pytest.raises(ValueError, match=r"did you mean 'adam'\?.*available: .*sgd"):
        curvlab.create("adma", torch.nn.Linear(2, 2))


def test_third_party_plugin_is_discovered(site):
    make_distribution(site, "curvlab_signsgd", {"Sign-SGD": "thirdparty_signsgd:SignSGD"})
    assert "signsgd" in curvlab.available()
    model = torch.nn.Linear(2, 1)
    opt = curvlab.create("sign_sgd", model, lr=0.5)
    before = model.weight.detach().clone()
    opt.step(curvlab.closure(model, torch.nn.MSELoss(), torch.ones(4, 2), torch.zeros(4, 1)))
    assert torch.allclose((before - model.weight).abs(), torch.full_like(before, 0.5))
    assert "sign of the gradient" in curvlab.info("signsgd").summary


def test_broken_plugin_only_warns(site):
    make_distribution(
        site,
        "curvlab_broken",
        {"broken": "thirdparty_missing_module:Opt", "notanopt": "thirdparty_signsgd:NOT_AN_OPTIMIZER"},
    )
    with pytest.warns(PluginWarning, match="broken"):
        names = curvlab.available(verify=True)
    assert "broken" not in names and "notanopt" not in names and "sgd" in names
    with pytest.raises(ValueError, match=r"plugin 'broken'.*thirdparty_missing_module"):
        curvlab.create("broken", torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="must be a CurvatureOptimizer subclass"):
        curvlab.create("notanopt", torch.nn.Linear(2, 2))
    curvlab.create("sgd", torch.nn.Linear(2, 2))  # the others keep working


def test_two_plugins_on_one_name_name_both(site):
    make_distribution(site, "curvlab_one", {"signsgd": "thirdparty_signsgd:SignSGD"})
    make_distribution(site, "curvlab_two", {"SIGN-SGD": "thirdparty_signsgd:SignSGD2"})
    with pytest.raises(ValueError, match=r"claimed by two plugins.*curvlab_one.*curvlab_two|claimed by two plugins.*curvlab_two.*curvlab_one"):
        curvlab.create("signsgd", torch.nn.Linear(2, 2))


def test_missing_extra_makes_name_unavailable_not_broken(site):
    make_distribution(
        site,
        "curvlab_extra",
        {"fancy": "thirdparty_signsgd:SignSGD [fancy]"},
        requires=['definitely-not-installed-pkg>=1; extra == "fancy"'],
    )
    assert "fancy" not in curvlab.available()
    assert curvlab.unavailable()["fancy"] == ("definitely-not-installed-pkg",)
    with pytest.raises(ValueError, match="needs definitely-not-installed-pkg"):
        curvlab.create("fancy", torch.nn.Linear(2, 2))


def test_register_uses_same_validation():
    from curvlab_plugins.baselines import SGD

    class Local(SGD):
        name = "localsgd"

    curvlab.register("Local-SGD", Local)
    try:
        assert "localsgd" in curvlab.available()
        assert isinstance(curvlab.create("local_sgd", torch.nn.Linear(2, 2)), Local)
        with pytest.raises(ValueError, match="already registered"):
            curvlab.register("localsgd", Local)
        with pytest.raises(ValueError, match="already provided by"):
            curvlab.register("SGD", Local)
        with pytest.raises(ValueError, match="CurvatureOptimizer subclass"):
            curvlab.register("thing", object)
    finally:
        curvlab.unregister("localsgd")
    assert "localsgd" not in curvlab.available()


def test_registries_do_not_share_state():
    a, b = Registry("curvlab.none-a"), Registry("curvlab.none-a")
    a.register("x", dict)
    assert a.names() == ["x"] and b.names() == []


def test_listing_does_not_import_backends():
    import subprocess
    import sys

    code = (
        "import sys, curvlab; curvlab.available(); "
        "print(any(m.startswith('curvlab_plugins.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_info_describes_schema():
    info = curvlab.info("sgd")
    text = info.describe()
    assert "momentum" in text and "[0.0, 1.0)" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert info.hparams[0]["name"] == "lr"


MALFORMED = textwrap.dedent(
    '''
    from curvlab import CurvatureOptimizer, HParam, OptimizerMeta, Schema

    class NoMeta(CurvatureOptimizer):
        name = "nometa"
        schema = Schema([HParam("lr", float, 0.01, "step", low=0.0)])
        meta = None

    class NoLr(CurvatureOptimizer):
        name = "nolr"
        schema = Schema([HParam("eta", float, 0.01, "step", low=0.0)])
        meta = OptimizerMeta(summary="x")

    class BadConformance(CurvatureOptimizer):
        name = "badconf"
        schema = Schema([HParam("lr", float, 0.01, "step", low=0.0)])
        meta = OptimizerMeta(summary="x", conformance={"lr": -1.0})
    '''
)


def test_entry_point_with_an_unusable_name_is_a_broken_plugin(site):
    """An entry point named '---': a PluginWarning naming it; every registered optimizer still works."""
    make_distribution(site, "curvlab_dashes", {"---": "thirdparty_signsgd:SignSGD"})
    with pytest.warns(PluginWarning, match=r"'---'.*curvlab_dashes.*empty after normalisation"):
        names = curvlab.available()
    assert "sgd" in names and "" not in names
    with pytest.warns(PluginWarning, match="'---'"):
        assert "sgd" in curvlab.available(verify=True)
    model = torch.nn.Linear(2, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        for name in names:  # registry-wide: nothing else is affected
            assert curvlab.info(name).name == name
        curvlab.create("sgd", model)


def test_malformed_plugin_classes_are_reported_by_name(site):
    (site / "thirdparty_malformed.py").write_text(MALFORMED)
    make_distribution(site, "curvlab_malformed", {
        "nometa": "thirdparty_malformed:NoMeta", "nolr": "thirdparty_malformed:NoLr",
        "badconf": "thirdparty_malformed:BadConformance"})
    for name, match in [("nometa", "meta must be an OptimizerMeta, got None"),
                        ("nolr", "its schema must declare 'lr'"),
                        ("badconf", r"meta.conformance: lr must be in")]:
        with pytest.raises(ValueError, match=rf"plugin {name!r} is malformed: {match}.*thirdparty_malformed"):
            curvlab.info(name)
    with pytest.warns(PluginWarning) as caught:
        names = curvlab.available(verify=True)
    assert {"nometa", "nolr", "badconf"}.isdisjoint(names) and "sgd" in names
    assert {"nometa", "nolr", "badconf"} <= {n for w in caught for n in ("nometa", "nolr", "badconf")
                                             if n in str(w.message)}


def test_cli_list_and_info_survive_broken_plugins(site, capsys):
    """Through the CLI's own entry function (cli.py is not changed for this)."""
    from curvlab.cli import main

    (site / "thirdparty_malformed.py").write_text(MALFORMED)
    make_distribution(site, "curvlab_mixed", {"---": "thirdparty_signsgd:SignSGD",
                                              "nometa": "thirdparty_malformed:NoMeta"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        assert main(["list"]) == 0
        assert main(["list", "--verify"]) == 1
    out = capsys.readouterr().out
    assert "sgd" in out and "BROKEN" in out and "nometa" in out and "---" in out


def test_entry_points_are_cached_until_the_environment_changes(site, monkeypatch):
    import importlib.metadata as md

    calls = []
    real = md.entry_points
    monkeypatch.setattr(md, "entry_points", lambda **kw: calls.append(kw) or real(**kw))
    curvlab.refresh()
    for _ in range(5):
        curvlab.info("sgd")
        curvlab.available()
    assert len(calls) == 1, "curvlab.info/available rescanned the entry points"
    make_distribution(site, "curvlab_late", {"latesgd": "thirdparty_signsgd:SignSGD"})  # "installed"
    assert "latesgd" in curvlab.available() and len(calls) == 2
    curvlab.refresh()
    curvlab.available()
    assert len(calls) == 3

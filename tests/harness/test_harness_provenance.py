"""Provenance: what produced every run; the plugin code hash and the data fingerprint in the key."""

import importlib
import sys
import textwrap

import numpy as np
import pytest

import curvlab
from curvlab.harness import compare
from curvlab.harness.config import RunConfig
from curvlab.harness.problems.idx import write_idx
from curvlab.harness.provenance import (
    environment_differences,
    plugin_code_hash,
    plugin_files,
    plugin_versions,
)
from curvlab.harness.report import protocol_lines
from curvlab.harness.store import Store

QUICK = dict(steps=4, eval_every=2, executor="serial")


def _mnist(folder, seed=0):
    rng = np.random.RandomState(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", 60), ("t10k", 20)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz",
                  rng.randint(0, 256, (n, 28, 28)).astype(np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", rng.randint(0, 10, n).astype(np.uint8))
    return folder


def test_every_run_stores_versions_hardware_plugin_and_data_checksums(tmp_path):
    data = _mnist(tmp_path / "mnist")
    c = compare("mnist-mlp", ["sgd"], small=True, data_dir=str(data), store=":memory:", **QUICK)
    (rec,) = c.records(("final",))
    prov = rec["result"].provenance
    env = prov["environment"]
    for key in ("curvlab", "torch", "numpy", "scipy", "python", "cpu", "threads", "device",
                "host", "git"):
        assert key in env, key
    assert env["threads"] == 1 and env["device"] == "cpu" and env["curvlab"] == curvlab.__version__
    assert prov["plugin"]["name"] == "sgd" and prov["plugin"]["code"] == plugin_code_hash("sgd")
    assert prov["plugin"]["distribution"] == "curvlab"
    files = {f["path"].rsplit("/", 1)[-1]: f["sha256"] for f in prov["data"]["files"]}
    assert len(files) == 4 and all(len(h) == 64 for h in files.values())
    assert rec["config"].data_fingerprint == prov["data"]["fingerprint"]
    assert prov["data"]["sizes"]["val"] >= 1


def test_changed_data_files_give_new_keys(tmp_path):
    data = _mnist(tmp_path / "mnist")
    store = Store(":memory:")
    a = compare("mnist-mlp", ["sgd"], small=True, data_dir=str(data), store=store, **QUICK)
    _mnist(data, seed=1)  # other bytes, same names
    b = compare("mnist-mlp", ["sgd"], small=True, data_dir=str(data), store=store, **QUICK)
    ka = {r["key"] for r in a.records(("final",))}
    kb = {r["key"] for r in b.records(("final",))}
    assert a.id != b.id and not ka & kb


@pytest.fixture()
def probe_plugin(tmp_path, monkeypatch):
    """A plugin package of its own on disk (an SGD subclass), registered as 'probeopt'."""
    pkg = tmp_path / "probe_plugin_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        from curvlab_plugins.baselines import SGD


        class Probe(SGD):
            name = "probeopt"
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("probe_plugin_pkg")
    curvlab.register("probeopt", module.Probe, replace=True)
    yield pkg
    curvlab.unregister("probeopt")
    sys.modules.pop("probe_plugin_pkg", None)


def test_plugin_code_hash_covers_the_package_files(probe_plugin):
    before = plugin_code_hash("probeopt")
    assert [p.name for p in plugin_files("probeopt")] == ["__init__.py"]
    (probe_plugin / "helpers.py").write_text("X = 1\n")
    added = plugin_code_hash("probeopt")
    (probe_plugin / "helpers.py").write_text("X = 2\n")
    edited = plugin_code_hash("probeopt")
    assert len({before, added, edited}) == 3
    assert plugin_code_hash("sgd") == plugin_code_hash("adam")  # one package: baselines
    assert plugin_code_hash("sgd") != plugin_code_hash("kfac")


def test_a_changed_plugin_reruns_its_own_runs_only(probe_plugin):
    store = Store(":memory:")
    first = compare("quadratic", ["sgd", "probeopt"], seeds=2, store=store, **QUICK)
    keys = {lb: {r["key"] for r in first.records(("final",)) if r["label"] == lb}
            for lb in ("sgd", "probeopt")}
    assert len(store.keys()) == 4
    (probe_plugin / "__init__.py").write_text((probe_plugin / "__init__.py").read_text()
                                              + "\n# a changed backend\n")
    second = compare("quadratic", ["sgd", "probeopt"], seeds=2, store=store, **QUICK)
    again = {lb: {r["key"] for r in second.records(("final",)) if r["label"] == lb}
             for lb in ("sgd", "probeopt")}
    assert again["sgd"] == keys["sgd"]  # cached: reused, not re-run
    assert not again["probeopt"] & keys["probeopt"]  # new code: new keys, re-run
    assert len(store.keys()) == 6


def test_a_run_refuses_to_train_with_other_plugin_code_than_planned():
    from curvlab.harness.runner import execute

    cfg = RunConfig("quadratic", "sgd", {"lr": 0.1}, seed=0, steps=2, plugin_code="0" * 16)
    r = execute(cfg)
    assert r.status == "error" and "differs from the code the run was planned with" in r.error


def test_plugin_versions_name_the_libraries_of_a_bridged_optimizer():
    pytest.importorskip("pytorch_optimizer")
    v = plugin_versions("soap")
    assert v["distribution"] == "curvlab" and "pytorch-optimizer" in v


def test_reports_flag_comparisons_that_mix_environments(tmp_path):
    c = compare("quadratic", ["sgd", "adam"], store=str(tmp_path / "s.sqlite"), **QUICK)
    assert c.environments() == {}
    assert not any("WARNING" in line for line in protocol_lines(c))
    key = c.records(("final",))[0]["key"]
    rec = c.store.record(key)
    import json

    prov = json.loads(rec["run"]["provenance"])
    prov["environment"]["torch"] = "0.0.1"
    rec["run"]["provenance"] = json.dumps(prov)
    c.store.put_record(rec)
    assert c.environments()["torch"][0] == "0.0.1"
    assert any("different environments" in line and "torch" in line for line in protocol_lines(c))


def test_environment_differences_ignore_runs_without_provenance():
    a = {"environment": {"torch": "2.3", "cpu": "x", "threads": 1}}
    b = {"environment": {"torch": "2.3", "cpu": "y", "threads": 1}}
    assert environment_differences([a, b, None, {}]) == {"cpu": ["x", "y"]}

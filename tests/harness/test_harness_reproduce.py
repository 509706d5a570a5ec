"""``curvlab reproduce``: claims and verdicts, presets through the harness, resumability, docs data."""

import datetime as dt
import json
import math

import pytest
import torch

from curvlab.cli import main
from curvlab.harness import Store
from curvlab.harness.data import DataNotFoundError, locate
from curvlab.harness.presets import get_preset, preset_names
from curvlab.harness.reproduce import (
    NOT_APPLICABLE,
    NOT_REPRODUCED,
    REPRODUCED,
    Arm,
    Budget,
    Claim,
    Part,
    Preset,
    combine_verdicts,
    format_result,
    machine,
    reproduce,
    write_docs,
)

VERDICTS = (REPRODUCED, NOT_REPRODUCED, NOT_APPLICABLE)


def _fashion():
    try:
        locate("fashion-mnist")
    except DataNotFoundError as err:
        pytest.skip(f"Fashion-MNIST is not installed ({err})")


# ------------------------------------------------------------------- claims
M = {"a": {"final_loss": 1.02, "step_cost": 3.0}, "b": {"final_loss": 1.0, "step_cost": 2.0},
     "dead": {"final_loss": math.inf}, "x": {"value": 1e-12}}
CLAIMS = [  # (id, claim, passed, gap contains)
    ("le-within-tol", Claim("a <= b", "final_loss", "a", "b", "<=", tol=0.05), True, ""),
    ("le-over-tol", Claim("a <= b", "final_loss", "a", "b", "<=", tol=0.01), False,
     "a is 2.0 % above b (allowed 1 %)"),
    ("le-reversed", Claim("b <= a", "final_loss", "b", "a", "<="), True, ""),
    ("approx-holds", Claim("a ~ b", "final_loss", "a", "b", "~", tol=0.05), True, ""),
    ("approx-fails", Claim("a ~ b", "final_loss", "b", "a", "~", tol=0.01), False,
     "b differs from a by -2.0 % (allowed ±1 %)"),
    ("ratio-holds", Claim("a 1.5x b", "step_cost", "a", "b", "ratio", tol=1.5, expected=1.5),
     True, ""),
    ("ratio-fails", Claim("a 3x b", "step_cost", "a", "b", "ratio", tol=1.2, expected=3.0),
     False, "a/b = 1.5 is outside [2.5, 3.6]"),
    ("failed-run", Claim("dead <= b", "final_loss", "dead", "b", "<=", tol=1.0), False,
     "not measured: dead ∞"),
    ("missing-metric", Claim("a cost", "val_loss", "a", "b", "<="), False, "not measured"),
    ("below-holds", Claim("x small", "value", "x", None, "below", expected=1e-10), True, ""),
    ("above-fails", Claim("x large", "value", "x", None, "above", expected=1e-2), False,
     "1e-12 is not ≥ 0.01"),
]


@pytest.mark.parametrize("claim,passed,gap", [c[1:] for c in CLAIMS], ids=[c[0] for c in CLAIMS])
def test_claim_evaluation(claim, passed, gap):
    check = claim.evaluate(M)
    assert check.passed is passed
    assert gap in check.gap and (check.gap == "") is passed


BAD_CLAIMS = [
    ("relation", dict(relation="<"), "relation must be one of"),
    ("metric", dict(metric="loss"), "metric must be one of"),
    ("ratio-needs-expected", dict(relation="ratio", tol=1.5), "needs expected"),
    ("ratio-factor", dict(relation="ratio", tol=0.5, expected=1.0), "factor tol >= 1"),
    ("below-no-right", dict(relation="below", expected=1.0), "right must be None"),
]


@pytest.mark.parametrize("change,message", [c[1:] for c in BAD_CLAIMS],
                         ids=[c[0] for c in BAD_CLAIMS])
def test_bad_claims_are_refused(change, message):
    args = {"text": "t", "metric": "final_loss", "left": "a", "right": "b", "relation": "<=",
            **change}
    with pytest.raises(ValueError, match=message):
        Claim(**args)


def test_part_refuses_a_claim_on_an_unknown_arm():
    with pytest.raises(ValueError, match=r"reads unknown arm\(s\) \['c'\]"):
        Part("quadratic", "t", (Arm("a", "sgd"), Arm("b", "adam")),
             (Claim("c <= a", "final_loss", "c", "a", "<="),))


def test_combined_verdicts():
    assert combine_verdicts([REPRODUCED, NOT_APPLICABLE]) == REPRODUCED
    assert combine_verdicts([REPRODUCED, NOT_REPRODUCED, NOT_APPLICABLE]) == NOT_REPRODUCED
    assert combine_verdicts([NOT_APPLICABLE, NOT_APPLICABLE]) == NOT_APPLICABLE


# -------------------------------------------------- verdicts on fake measurements
def _fake(values):
    return lambda budget: values


FAKE = [  # (id, measured values, expected verdict, gap text)
    ("reproduced", {"a": {"value": 1.0}, "b": {"value": 1.01}}, REPRODUCED, ""),
    ("not-reproduced", {"a": {"value": 1.3}, "b": {"value": 1.0}}, NOT_REPRODUCED,
     "a <= b: a is 30.0 % above b (allowed 5 %)"),
]


@pytest.mark.parametrize("values,verdict,gap", [c[1:] for c in FAKE], ids=[c[0] for c in FAKE])
def test_verdict_on_fake_measurements(values, verdict, gap):
    part = Part("fake", "fake part", (Arm("a", "sgd"), Arm("b", "adam")),
                (Claim("a <= b", "value", "a", "b", "<=", tol=0.05),), measure=_fake(values))
    result = reproduce(Preset("fake", "t", "paper", "src", (part,)), quick=True, store=":memory:")
    assert result.verdict == verdict
    assert result.parts[0].gaps == ([gap] if gap else [])
    text = format_result(result)
    assert f"verdict fake: {verdict}" in text and (gap in text)


def test_not_applicable_offline_parts(tmp_path):
    """A part without offline data, and a part whose data are missing (an empty --data-dir)."""
    claim = (Claim("a <= b", "final_loss", "a", "b", "<="),)
    arms = (Arm("a", "sgd"), Arm("b", "adam"))
    preset = Preset("fake", "t", "paper", "src", (
        Part("curves-autoencoder", "the paper's data", arms, claim, offline="a download"),
        Part("fashion-mlp", "missing files", arms, claim, quick=Budget(steps=2, small=True)),
    ))
    result = reproduce(preset, quick=True, store=str(tmp_path / "s.sqlite"), executor="serial",
                       data_dir=str(tmp_path))
    assert [p.verdict for p in result.parts] == [NOT_APPLICABLE, NOT_APPLICABLE]
    assert result.verdict == NOT_APPLICABLE
    assert result.parts[0].why == "a download"
    assert "apt-get install dataset-fashion-mnist" in result.parts[1].why


def test_reproduce_refuses_options_the_preset_sets_and_unknown_names():
    with pytest.raises(ValueError, match="steps is set by the preset"):
        reproduce("gn-invariance", quick=True, store=":memory:", steps=3)
    with pytest.raises(ValueError, match="did you mean 'foof-vs-kfac'"):
        reproduce("foof-vs-kfak")
    with pytest.raises(TypeError, match="unknown setting 'jbos'"):
        reproduce("gn-invariance", quick=True, store=":memory:", jbos=2)


def test_kfac_damping_refuses_naming_what_is_missing():
    preset = get_preset("kfac-damping")
    if not preset.missing:
        pytest.skip("K-FAC has the standard damping and the update cosine now")
    with pytest.raises(ValueError, match="cannot run yet: .*(update_cosine|standard)"):
        reproduce("kfac-damping", quick=True, store=":memory:")


# ----------------------------------------------- a real preset through the harness
def _tiny():
    arms = (Arm("sgd", "sgd", grid={"lr": [0.05, 0.1]}, paper="slower"),
            Arm("sgd-m", "sgd", hparams={"momentum": 0.9}, grid={"lr": [0.05, 0.1]},
                paper="faster"))
    claims = (Claim("momentum helps", "final_loss", "sgd-m", "sgd", "<=", tol=0.0),)
    return Preset("tiny", "momentum helps on a quadratic", "textbook", "src",
                  (Part("quadratic", "quadratic", arms, claims,
                        quick=Budget(steps=20, eval_every=10)),))


def test_a_preset_runs_through_the_store_and_resumes(tmp_path, monkeypatch):
    path = tmp_path / "runs.sqlite"
    first = reproduce(_tiny(), quick=True, store=str(path), executor="serial")
    part = first.parts[0]
    assert part.verdict in (REPRODUCED, NOT_REPRODUCED) and part.comparison
    store = Store(path, readonly=True)
    try:
        cid, spec = store.comparison(part.comparison)
        labels = {label for _, role, label in store.members(cid) if role == "final"}
        runs = store.count_runs()
    finally:
        store.close()
    assert spec["kind"] == "reproduce" and labels == {"sgd", "sgd-m"}
    assert spec["trial_counts"] == {"sgd": 2, "sgd-m": 2}
    assert [r["trials"] for r in part.rows] == [2, 2]

    import curvlab.harness.executor as executor

    def no_run(*args, **kwargs):
        raise AssertionError("a stored run was run again")

    monkeypatch.setattr(executor, "execute", no_run)
    second = reproduce(_tiny(), quick=True, store=str(path), executor="serial")
    assert second.parts[0].comparison == part.comparison
    assert second.parts[0].rows == part.rows
    store = Store(path, readonly=True)
    try:
        assert store.count_runs() == runs
    finally:
        store.close()


def test_write_docs_writes_the_manifest_and_a_compact_store(tmp_path):
    store = Store(tmp_path / "runs.sqlite")
    try:
        result = reproduce(_tiny(), quick=True, store=store, executor="serial")
        started = dt.datetime(2026, 12, 2, 1, 0, tzinfo=dt.timezone.utc)
        paths = write_docs([result], store, tmp_path, command="curvlab reproduce --all --quick "
                           "--write-docs", started=started, machine_before=machine(),
                           skipped=["kfac-damping"])
    finally:
        store.close()
    manifest = json.loads(paths[0].read_text())
    assert manifest["kind"] == "reproductions" and manifest["date"] == "2026-12-02 01:00 UTC"
    assert {"cpu", "cores", "load_average_1min_after"} <= set(manifest["machine"])
    assert {"curvlab", "torch", "python"} <= set(manifest["versions"])
    assert manifest["presets"][0]["verdict"] == result.verdict
    assert set(manifest["skipped"]) == ({"kfac-damping"} if get_preset("kfac-damping").missing
                                        else set())
    cid = manifest["comparisons"][0]["name"]
    exported = Store(paths[1], readonly=True)
    try:
        assert exported.comparison(cid)[0] == cid
        assert {label for _, _, label in exported.members(cid)} == {"sgd", "sgd-m"}
    finally:
        exported.close()
    with pytest.raises(ValueError, match="does not exist"):
        write_docs([result], Store(":memory:"), tmp_path / "nope", command="c", started=started,
                   machine_before={})


# ------------------------------------------------------------------- the CLI
def test_list(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for name in preset_names():
        assert name in out
    for name in ("kbfgs-autoencoders", "foof-vs-kfac", "kfac-vs-natgrad", "gn-invariance",
                 "gn-competitive", "kfac-damping"):
        assert name in preset_names()
    assert "Goldfarb, Ren & Bahamou" in out and "digits-autoencoder" in out


@pytest.mark.parametrize("argv,message", [
    (["reproduce"], "give one preset NAME or --all"),
    (["reproduce", "gn-invariance", "--all"], "give one preset NAME or --all"),
    (["reproduce", "gn-invariance", "--write-docs"], "use it with --all"),
    (["reproduce", "--list", "--all"], "--list takes no preset"),
    (["reproduce", "nope"], "unknown preset 'nope'"),
], ids=["nothing", "both", "write-docs-one", "list-all", "unknown"])
def test_cli_input_errors(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_gn_invariance_quick(capsys):
    assert main(["reproduce", "gn-invariance", "--quick", "--store", ":memory:"]) == 0
    out = capsys.readouterr().out
    assert "verdict gn-invariance: reproduced" in out
    assert "[ok  ] GroupedNewton is invariant" in out


# ---------------------------------------------- every preset's --quick (slow)
@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in preset_names() if not get_preset(n).missing])
def test_every_quick_preset_runs(name, tmp_path, capsys):
    torch.set_num_threads(1)
    if any(p.problem.startswith("fashion") for p in get_preset(name).parts):
        _fashion()
    assert main(["reproduce", name, "--quick", "--store", str(tmp_path / "s.sqlite")]) == 0
    out = capsys.readouterr().out
    verdict = out.strip().splitlines()[-1].split(None, 1)[1]
    assert verdict in VERDICTS, out


# ------------------------------------------------------ the Reproductions page
def test_reproductions_page_shows_verdicts_claims_figures_and_provenance(tmp_path):
    sphinx_application = pytest.importorskip("sphinx.application")
    import re
    import sys
    from io import StringIO
    from pathlib import Path

    from sphinx.util.docutils import docutils_namespace

    ext = Path(__file__).resolve().parents[2] / "docs" / "_ext"
    results = tmp_path / "results"
    results.mkdir()
    store = Store(tmp_path / "runs.sqlite")
    try:
        ran = reproduce(_tiny(), quick=True, store=store, executor="serial")
        fake = reproduce(Preset("fake", "a fake claim", "paper", "Source: *made up*.", (
            Part("fake", "fake part", (Arm("a", "sgd"), Arm("b", "adam")),
                 (Claim("a <= b", "value", "a", "b", "<="),),
                 measure=_fake({"a": {"value": 2.0}, "b": {"value": 1.0}})),
            Part("curves-autoencoder", "offline part", offline="a download"))), quick=True,
            store=store)
        write_docs([ran, fake], store, results, command="curvlab reproduce --all --quick "
                   "--write-docs", started=dt.datetime(2026, 12, 2, tzinfo=dt.timezone.utc),
                   machine_before={"cpu": "Test CPU 3000", "cores": 2, "os": "Linux-test"})
    finally:
        store.close()
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "conf.py").write_text(f"import sys\nsys.path.insert(0, {str(ext)!r})\n"
                                 "extensions = ['curvlab_reproductions']\n"
                                 f"curvlab_results_dir = {str(results)!r}\n")
    (src / "index.rst").write_text("Reproductions\n=============\n\n.. curvlab-reproductions::\n")
    warnings = StringIO()
    sys.path.insert(0, str(ext))
    try:
        with docutils_namespace():
            app = sphinx_application.Sphinx(str(src), str(src), str(out), str(tmp_path / "dt"),
                                             "html", status=None, warning=warnings,
                                             freshenv=True)
            app.build()
    finally:
        sys.path.remove(str(ext))
    assert warnings.getvalue() == ""
    page = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", (out / "index.html").read_text()))
    for fact in ("2026-12-02 00:00 UTC", "Test CPU 3000", "curvlab reproduce --all --quick",
                 "momentum helps on a quadratic", "a fake claim", "not reproduced",
                 "a is 100.0 % above b", "not applicable offline", "a download", "made up"):
        assert fact in page, fact
    assert "loss_vs_step.png" in (out / "index.html").read_text()  # the harness's own plots

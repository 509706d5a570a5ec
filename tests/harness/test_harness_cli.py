"""The ``curvlab`` CLI: smoke tests (subprocess), bad input, reports."""

import csv
import importlib.util
import subprocess
import sys
import textwrap

import pytest

from curvlab.cli import main
from curvlab.harness.report import REPORT_FILES


def _run(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "curvlab.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_help_shows_examples():
    r = _run("--help")
    assert r.returncode == 0 and "examples:" in r.stdout and "curvlab compare" in r.stdout


def test_compare_and_report_files(tmp_path):
    store, rep = tmp_path / "s.sqlite", tmp_path / "rep"
    r = _run("compare", "--problem", "quadratic", "--optimizers", "sgd,adam", "--steps", "20",
             "--eval-every", "10", "--store", str(store), "--report", str(rep), "--jobs", "2")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    for name in REPORT_FILES:
        assert (rep / name).stat().st_size > 0, name
    labels = {row["label"] for row in csv.DictReader(open(rep / "summary.csv"))}
    assert labels == {"sgd", "adam"}
    md = (rep / "summary.md").read_text()
    assert "| sgd |" in md and "| adam |" in md
    # re-render from the store alone
    rep2 = tmp_path / "rep2"
    assert main(["report", "--store", str(store), "--out", str(rep2)]) == 0
    assert (rep2 / "summary.md").read_text() == md


def test_ablate_in_process(tmp_path, capsys):
    code = main(["ablate", "--problem", "quadratic", "--optimizer", "sgd", "--hparam", "momentum",
                 "--values", "0,0.9", "--hp", "lr=0.05", "--steps", "10", "--eval-every", "5",
                 "--executor", "serial", "--store", str(tmp_path / "s.sqlite"),
                 "--report", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert code == 0
    assert "sgd momentum=0.0" in out and "sgd momentum=0.9" in out
    rows = list(csv.DictReader(open(tmp_path / "rep" / "runs.csv")))
    lrs = {dict(kv.split("=") for kv in r["hparams"].split(";"))["lr"] for r in rows}
    assert lrs == {"0.05", "0.01"}  # ablation runs + the sgd reference


def test_list_and_info(capsys):
    assert main(["list", "--all"]) == 0
    out = capsys.readouterr().out
    assert "sgd" in out and "digitsmlp" in out
    assert main(["info", "digits-mlp"]) == 0 and "64-128-64-10" in capsys.readouterr().out
    assert main(["info", "SGD"]) == 0 and "lr" in capsys.readouterr().out


BAD = [
    (["compare", "--problem", "no-such-problem", "--optimizers", "sgd"], "unknown problem"),
    (["compare", "--problem", "quadratic", "--optimizers", "sgdd"], "unknown optimizer"),
    (["compare", "--problem", "quadratic", "--optimizers", "sgd", "--steps", "0"], "steps must be"),
    (["compare", "--problem", "quadratic", "--optimizers", "sgd", "--steps", "-3"], "steps must be"),
    (["compare", "--problem", "quadratic", "--optimizers", "sgd", "--seconds", "0"], "seconds must be"),
    (["compare", "--problem", "quadratic", "--optimizers", "sgd", "--seeds", "0"], "seeds must be"),
    (["compare", "--problem", "quadratic", "--optimizers", "sgd", "--hp", "sgd.lr=-1"], "lr must be"),
    (["compare", "--problem", "quadratic", "--optimizers", "sgd", "--hp", "sgd.lrr=1"], "unknown hyper-parameter"),
    (["compare", "--problem", "mnist-mlp", "--optimizers", "sgd"], "--data-dir"),
    (["ablate", "--problem", "quadratic", "--optimizer", "sgd", "--hparam", "nope"], "unknown hyper-parameter"),
    (["info", "nothing-like-this"], "unknown optimizer"),
    (["compare", "--problem", "quadratic", "--optimizers", "sgd", "--executor", "ray"], "ray"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[
    "problem", "optimizer", "steps0", "steps-neg", "seconds0", "seeds0", "hp-range", "hp-name",
    "mnist-missing", "ablate-hparam", "info", "ray-missing"])
def test_bad_input_one_line_error(argv, message, capsys, tmp_path):
    if message == "ray" and importlib.util.find_spec("ray") is not None:
        pytest.skip("ray is installed")
    code = main([*argv, "--store", str(tmp_path / "s.sqlite")] if argv[0] != "info" else argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("curvlab: error:") and message in err
    assert len(err.strip().splitlines()) == 1


def test_unwritable_store_subprocess(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = _run("compare", "--problem", "quadratic", "--optimizers", "sgd", "--steps", "5",
             "--store", str(blocker / "s.sqlite"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "cannot open results store" in r.stderr


def test_broken_plugin_is_reported_and_skipped(tmp_path):
    dist = tmp_path / "brokenplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[curvlab.optimizers]\nbrokenopt = brokenplug_missing_module:Opt\n")
    import os

    env = {**os.environ, "PYTHONPATH": str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = _run("list", "--verify", env=env)
    assert r.returncode == 1 and "BROKEN" in r.stdout and "brokenopt" in r.stdout
    code = textwrap.dedent("""
        import warnings
        from curvlab.harness.compare import resolve_optimizers
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            names = resolve_optimizers("all")
        print("brokenopt" in names, "sgd" in names, any("brokenopt" in str(x.message) for x in w))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.stdout.split() == ["False", "True", "True"], r.stderr

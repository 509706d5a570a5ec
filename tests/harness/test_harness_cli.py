"""The ``curvlab`` CLI: smoke tests (subprocess), bad input, reports."""

import csv
import subprocess
import sys
import textwrap

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
    assert "sgd momentum=0 " in out and "sgd momentum=0.9 " in out
    assert "momentum:" in out and "val loss" in out  # the factor table
    assert (tmp_path / "rep" / "ablation.md").read_text().count("## momentum") == 1
    rows = list(csv.DictReader(open(tmp_path / "rep" / "cells.csv")))
    assert [r["label"] for r in rows] == ["sgd momentum=0", "sgd momentum=0.9"]


def test_list_and_info(capsys):
    assert main(["list", "--all"]) == 0
    out = capsys.readouterr().out
    assert "sgd" in out and "digitsmlp" in out
    assert main(["info", "digits-mlp"]) == 0 and "64-128-64-10" in capsys.readouterr().out
    assert main(["info", "SGD"]) == 0 and "lr" in capsys.readouterr().out


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


def test_closed_stdout_is_a_quiet_exit():
    """A reader that went away: exit 141 (128 + SIGPIPE), nothing on stderr (the Unix way)."""
    proc = subprocess.Popen([sys.executable, "-m", "curvlab.cli", "list", "--all"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command prints anything (it imports torch first)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


def test_pipe_into_head_prints_no_error():
    r = subprocess.run(f"'{sys.executable}' -m curvlab.cli list | head -1", shell=True,
                       capture_output=True, text=True, timeout=120)
    assert r.stdout == "optimizers:\n" and r.stderr == ""


def test_internal_error_shows_the_traceback(monkeypatch, capsys):
    import curvlab.harness.problems

    def broken():
        raise KeyError("an internal bug")

    monkeypatch.setattr(curvlab.harness.problems, "available_problems", broken)
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'an internal bug'" in err
    assert err.strip().splitlines()[-1].startswith("curvlab: internal error (KeyError)")


def test_debug_shows_the_traceback_of_an_input_error(capsys):
    for argv in (["--debug", "info", "nothing-like-this"], ["info", "nothing-like-this", "--debug"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and err.strip().splitlines()[-1].startswith(
            "curvlab: error: unknown optimizer")


def test_missing_data_stops_the_comparison_before_any_run(tmp_path, capsys):
    """A missing dataset is one line naming the fix, found before the store is even created."""
    store = tmp_path / "s.sqlite"
    assert main(["compare", "--problem", "fashion-mlp", "--optimizers", "sgd,adam", "--steps", "3",
                 "--data-dir", str(tmp_path), "--store", str(store), "--report", "none",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [err.strip()]
    assert "apt-get install dataset-fashion-mnist" in err and "curvlab data" in err
    assert not store.exists()


def test_data_error_in_a_worker_stops_a_process_pool_comparison(tmp_path):
    """Data that differ in the worker (another fingerprint) end the batch with DataError."""
    import pytest

    from curvlab.harness.config import RunConfig
    from curvlab.harness.executor import run_configs
    from curvlab.harness.runner import DataError
    from curvlab.harness.settings import RunSettings
    from curvlab.harness.store import Store

    cfgs = [RunConfig("quadratic", "sgd", {"lr": 0.1}, seed=s, steps=3, data_fingerprint="0" * 64)
            for s in range(3)]
    store = Store(tmp_path / "s.sqlite")
    with pytest.raises(DataError, match="fingerprint"):
        run_configs(cfgs, store, RunSettings(executor="process", jobs=2))
    assert store.count_runs().get("done", 0) == 0


def test_data_command_lists_every_dataset(capsys, tmp_path):
    assert main(["data", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("fashion-mnist", "mnist", "stdlib-text", "digits", "synthetic"):
        assert name in out
    assert "MISSING" in out and "apt-get install dataset-fashion-mnist" in out


def test_settings_from_the_command_line_reach_the_stored_comparison(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    assert main(["compare", "--problem", "quadratic", "--optimizers", "sgd", "--steps", "7",
                 "--seconds", "none", "--eval-every", "7", "--target", "1e9", "--seeds", "2",
                 "--dtype", "float64", "--small", "--executor", "serial", "--name", "mine",
                 "--store", str(store), "--report", "none", "--hp", "sgd.lr=0.05"]) == 0
    assert "comparison mine stored in" in capsys.readouterr().out
    from curvlab.harness.problems import load_problem
    from curvlab.harness.store import Store

    cid, spec = Store(store, readonly=True).comparison()
    assert cid == "mine"
    assert {k: spec[k] for k in ("steps", "seconds", "eval_every", "target", "seeds", "dtype",
                                 "problem_options", "hparams")} == {
        "steps": 7, "seconds": None, "eval_every": 7, "target": 1e9, "seeds": 2,
        "dtype": "float64", "problem_options": load_problem("quadratic", small=True).options(),
        "hparams": {"sgd": {"lr": 0.05}}}


def test_report_as_parquet(tmp_path):
    pq = __import__("pytest").importorskip("pyarrow.parquet")
    store = tmp_path / "s.sqlite"
    assert main(["compare", "--problem", "quadratic", "--optimizers", "sgd,adam", "--steps", "4",
                 "--eval-every", "2", "--seeds", "2", "--executor", "serial", "--store",
                 str(store), "--report", "none"]) == 0
    rep = tmp_path / "rep"
    assert main(["report", "--store", str(store), "--out", str(rep), "--format", "parquet"]) == 0
    assert not (rep / "summary.md").exists()
    summary = pq.read_table(rep / "summary.parquet").to_pylist()
    assert sorted(r["label"] for r in summary) == ["adam", "sgd"]
    assert all(r["runs"] == 2 and r["val_loss"] > 0 for r in summary)
    runs = pq.read_table(rep / "runs.parquet").to_pylist()
    assert len(runs) == 4 and {r["env_torch"] for r in runs} and all(r["plugin_code"] for r in runs)
    curves = pq.read_table(rep / "curves.parquet")
    assert {"val_loss", "test_loss", "train_loss"} <= set(curves.column_names)
    both = tmp_path / "both"
    assert main(["report", "--store", str(store), "--out", str(both), "--format",
                 "markdown,parquet"]) == 0
    assert (both / "summary.md").exists() and (both / "runs.parquet").exists()

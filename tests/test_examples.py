"""Every example runs (tiny budgets), and the example plugin installs and registers."""

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

import curvlab

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PLUGIN = EXAMPLES / "plugin_example"

# (script, extra arguments, text its output must contain)
SCRIPTS = [
    ("quickstart.py", ["--optimizer", "kfac"], "kfac: train loss"),
    ("select_by_name.py", ["--optimizers", "sgd", "K-BFGS", "foof"], "kbfgs"),
    ("compare_digits.py", ["--optimizers", "sgd", "kfac"], "kfac"),
    ("checkpoint_resume.py", ["--optimizer", "kfac"], "weights bitwise identical: True"),
    ("plain_loop.py", ["--optimizers", "kfac-empirical", "kfac-mc", "foof"], "kfac-mc"),
]
#: needs an optional extra: (script, module it imports)
OPTIONAL = [("lightning_kfac.py", "lightning")]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, CURVLAB_EXAMPLE_STEPS="4", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env.update(extra)
    return env


def test_every_example_script_is_listed():
    assert {p.name for p in EXAMPLES.glob("*.py")} == {s for s, _, _ in SCRIPTS} | {
        s for s, _ in OPTIONAL}


@pytest.mark.skipif(importlib.util.find_spec("lightning") is None,
                    reason="the lightning extra is not installed (pip install 'curvlab[lightning]')")
def test_lightning_example_trains_five_steps(tmp_path):
    """K-FAC and FOOF under Lightning's automatic optimization (its keyword-free closure): 5 steps each."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "lightning_kfac.py"), "--steps", "5"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("kfac", "foof"):
        line = next(t for t in proc.stdout.splitlines() if t.startswith(f"{name}:"))
        assert line.startswith(f"{name}: 5 steps") and line.endswith("skipped 0"), line
        first, last = (float(v) for v in line.split("batch loss ")[1].split(",")[0].split(" -> "))
        assert last < first, line


@pytest.mark.parametrize("script,args,expected", SCRIPTS, ids=[s[0][:-3] for s in SCRIPTS])
def test_example_runs(script, args, expected, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert expected in proc.stdout, proc.stdout


def test_example_plugin_installs_and_passes_conformance(tmp_path):
    """pip-install the plugin into a fresh venv that sees this interpreter's packages.

    The running environment (torch, curvlab, pip, setuptools) is layered under the new
    venv with ``site.addsitedir`` — also when it is itself a venv, whose packages
    ``system_site_packages`` would not show — so nothing is downloaded or rebuilt.
    """
    src = tmp_path / "plugin_example"
    shutil.copytree(PLUGIN, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=False, with_pip=False)
    py = env_dir / ("Scripts" if os.name == "nt" else "bin") / "python"
    inner = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    outer = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    # addsitedir (not a bare path) so the outer .pth files — editable installs — apply too
    Path(inner, "outer-env.pth").write_text(
        "".join(f"import site; site.addsitedir({d!r})\n" for d in sorted(outer)))

    def run(*cmd, cwd=tmp_path):
        proc = subprocess.run([str(py), *cmd], cwd=cwd, env=_env(), capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"{cmd}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    run("-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
        "--no-build-isolation", "--no-index", str(src))
    listed = run("-m", "curvlab.cli", "list").split()
    assert "signsgd" in listed
    info = run("-m", "curvlab.cli", "info", "signsgd")
    assert "Signum" in info
    out = run("-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=src)
    assert " passed" in out and "failed" not in out
    # The plugin went into the venv only: this interpreter does not see it.
    assert "signsgd" not in curvlab.available()

"""Pick (and create) the Python environment README's commands install into.

``which``: print the interpreter to use — the running one inside a virtual
environment (venv, virtualenv, conda), else the project's own venv
(``--venv``, default ``.venv``). ``ensure``: create that venv when it is
needed and missing, with current pip/setuptools/wheel. A system Python that
refuses ``pip install`` (PEP 668 "externally-managed-environment", e.g.
Debian/Ubuntu's /usr/bin/python3) therefore works the same as any other.
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def in_virtual_env() -> bool:
    """True inside a venv/virtualenv or an active conda environment."""
    return sys.prefix != sys.base_prefix or bool(os.environ.get("CONDA_PREFIX"))


def venv_python(venv: Path) -> Path:
    """The interpreter inside ``venv``."""
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def target(venv: Path) -> Path:
    """The interpreter README's commands use."""
    return Path(sys.executable) if in_virtual_env() else venv_python(venv).absolute()


def ensure(venv: Path) -> int:
    """Create ``venv`` when it is needed and missing; return an exit code."""
    if in_virtual_env():
        return 0
    py = venv_python(venv)
    if not py.exists():
        print(f"curvlab: not inside a virtual environment; creating {venv}/", file=sys.stderr)
        done = subprocess.run([sys.executable, "-m", "venv", str(venv)], check=False)
        if done.returncode != 0 or not py.exists():
            print(
                f"curvlab: could not create {venv}/ with {sys.executable} -m venv; install the "
                "venv module (Debian/Ubuntu: sudo apt-get install python3-venv) or run the "
                "command inside a virtual environment",
                file=sys.stderr,
            )
            return 1
        print(f"curvlab: activate it with: source {venv}/bin/activate", file=sys.stderr)
    # setuptools >= 70.1 builds wheels itself (the plugin example's test installs one offline)
    return subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--upgrade", "pip", "setuptools>=70.1", "wheel"],
        check=False,
    ).returncode


def main() -> int:
    """Command line: ``pyenv.py {which,ensure} [--venv DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("which", "ensure"))
    parser.add_argument("--venv", default=".venv", type=Path)
    args = parser.parse_args()
    if args.action == "which":
        print(target(args.venv))
        return 0
    return ensure(args.venv)


if __name__ == "__main__":
    sys.exit(main())

"""Re-run the comparisons the docs' Results page shows, and write its committed data.

Usage (from the repository root; ``make results`` runs the first line)::

    python docs/results/regenerate.py                 # every set below
    python docs/results/regenerate.py readme --jobs 2 # one set, 2 runs in parallel
    python docs/results/regenerate.py --resume        # continue an interrupted run
    python docs/results/regenerate.py step_time       # only the step-time benchmark

Each *result set* ``NAME`` is a list of ``curvlab compare`` commands. They
run, exactly as printed, into a scratch store
``curvlab-results/docs/NAME.sqlite``; the script then writes, beside itself,

- ``NAME.sqlite``: a compact copy of that store — every run of the set's
  comparisons (tuning runs included) with its evaluation points; the
  per-batch losses are dropped, nothing the reports draw needs them;
- ``NAME.json``: the manifest the docs are built from: the commands, the
  date, the machine (CPU model, cores, load), the versions (Python,
  curvlab, git commit, torch, numpy, BackPACK, pytorch-optimizer, ...) and,
  per comparison, its id and title.

and for each benchmark ``NAME`` (``benchmarks/step_time.py``), ``NAME.csv``
(the script's own ``--csv`` output) and its manifest ``NAME.json``.

The Sphinx build (``docs/_ext/curvlab_results.py``) draws the tables and
plots from these two files with the harness's own report and profile code.
A set whose files are missing is simply not shown, so other commands (e.g.
``curvlab reproduce``) can add their own ``NAME.json`` + ``NAME.sqlite``.

Budgets are in steps only (``--seconds none``), so the losses do not depend
on the machine's speed; timings (seconds to target, step-time ratios) do, and
on its load: the manifest records both. Losses are deterministic for a given
machine, library versions and seeds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SCRATCH = ROOT / "curvlab-results" / "docs"

#: The result sets: one entry per ``curvlab compare`` command (``name`` is its
#: comparison id in the store). ``profiles``: the cost measures of the
#: performance profiles drawn across the set's comparisons.
SETS: dict[str, dict] = {
    "readme": {
        "title": "Digits problems: defaults and a tuned auto-encoder",
        "order": 0,
        "summary": (
            "The README's comparisons on scikit-learn's digits (1,797 8x8 images): "
            "every registered optimizer, one seed, 500 steps."
        ),
        "comparisons": [
            {
                "name": "digits-mlp-defaults",
                "title": "Main job: digits MLP, every optimizer at its defaults",
                "about": (
                    "MLP 64-128-64-10, cross-entropy, batch 128, 500 steps, one seed; the "
                    "papers' (or the library's) default hyper-parameters, not tuned for "
                    "this problem. 'make install' runs the same comparison with a 15 s "
                    "safety cap per run, which only a slow or busy machine reaches."
                ),
                "args": ["--problem", "digits-mlp", "--optimizers", "all", "--seconds", "none"],
            },
            {
                "name": "digits-autoencoder-tuned",
                "title": "Digits auto-encoder, each optimizer's grid searched",
                "about": (
                    "The K-BFGS paper's setting on digits: 64-256-128-64-16 mirrored, ReLU, "
                    "sigmoid cross-entropy summed over pixels, batch 256, 500 steps, no "
                    "time cap; each optimizer's schema grid searched with seed 0, the "
                    "lowest final training loss kept."
                ),
                "args": ["--problem", "digits-autoencoder", "--optimizers", "all", "--tune",
                         "--steps", "500", "--seconds", "none"],
            },
            {
                "name": "digits-cnn-defaults",
                "title": "Digits CNN, every optimizer at its defaults",
                "about": (
                    "A small convolutional network on the same digits, defaults, 500 steps, "
                    "one seed. K-BFGS(L) handle Linear layers only: their runs are recorded "
                    "as errors and count as not solved in the profiles."
                ),
                "args": ["--problem", "digits-cnn", "--optimizers", "all", "--seconds", "none"],
            },
        ],
        "profiles": ["steps", "seconds"],
    },
}
#: Benchmarks whose table the docs read (the "Choosing an optimizer" page):
#: ``benchmarks/step_time.py`` with these arguments writes ``NAME.csv``.
BENCHMARKS: dict[str, dict] = {
    "step_time": {
        "title": "Step time relative to SGD (benchmarks/step_time.py)",
        "script": "benchmarks/step_time.py",
        "args": ["--problems", "digits-mlp", "digits-cnn", "digits-autoencoder",
                 "--optimizers", "all", "--block", "100", "--rounds", "3"],
    },
}
#: The folders whose content the results depend on (their git trees identify the code).
CODE = ("curvlab", "plugins", "benchmarks")
VERSIONED = ("torch", "numpy", "scipy", "backpack-for-pytorch", "pytorch-optimizer", "matplotlib")


def command(args: list[str], store: Path, name: str, jobs: int) -> list[str]:
    """The ``curvlab compare`` command line of one comparison."""
    out = ["curvlab", "compare", *args, "--store", str(store), "--name", name, "--report", "none"]
    return out + (["--jobs", str(jobs)] if jobs > 1 else [])


def display(cmd: list[str]) -> str:
    """The command as a reader would type it (paths relative to the repository)."""
    parts = []
    for part in cmd:
        path = Path(part)
        parts.append(str(path.relative_to(ROOT)) if path.is_absolute() and ROOT in path.parents
                     else part)
    return shlex.join(parts)


def machine() -> dict[str, object]:
    """CPU model, cores, OS and load average where this ran."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "os": platform.platform(terse=True),
            "load_average_1min": round(load[0], 2) if load else None}


def versions() -> dict[str, str]:
    """Versions of Python, curvlab (with its git commit) and the numeric stack."""
    import curvlab

    out = {"python": platform.python_version(), "curvlab": curvlab.__version__}
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                                *CODE], capture_output=True, text=True).stdout
        out["git"] = head + ("+local changes" if dirty.strip() else "")
        trees = subprocess.run(["git", "-C", str(ROOT), "rev-parse", *(f"HEAD:{c}" for c in CODE)],
                               capture_output=True, text=True, check=True).stdout.split()
        out["code"] = ".".join(t[:8] for t in trees) + ("+local" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        pass
    for dist in VERSIONED:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def same_code(start: dict[str, str]) -> dict[str, str]:
    """The versions the runs started with; says so when the code changed meanwhile."""
    end = versions()
    if end.get("code") != start.get("code"):
        print(f"warning: the code changed during the runs ({start.get('git')} -> "
              f"{end.get('git')})", file=sys.stderr)
        return {**start, "git": f"{start.get('git')} -> {end.get('git')} (code changed during the runs)"}
    return start


def compact(scratch: Path, target: Path, names: list[str]) -> None:
    """Copy the runs of comparisons ``names`` into a fresh store, evaluation points only."""
    from curvlab.harness import Store
    from curvlab.harness.reproduce import export

    src = Store(scratch, readonly=True)
    try:
        export(src, target, [src.comparison(name)[0] for name in names])
    finally:
        src.close()


def regenerate(name: str, jobs: int, resume: bool) -> Path:
    """Run set ``name``'s commands and write ``NAME.sqlite`` and ``NAME.json``; returns the latter."""
    spec = SETS[name]
    scratch = SCRATCH / f"{name}.sqlite"
    if scratch.exists() and not resume:
        scratch.unlink()  # a fresh store: no run from older code is reused
    started = dt.datetime.now(dt.timezone.utc)
    before, code = machine(), versions()
    comparisons = []
    for comp in spec["comparisons"]:
        cmd = command(comp["args"], scratch, comp["name"], jobs)
        print("+", display(cmd), flush=True)
        t0 = dt.datetime.now(dt.timezone.utc)
        subprocess.run([sys.executable, "-m", "curvlab.cli", *cmd[1:]], check=True, cwd=ROOT)
        comparisons.append({"name": comp["name"], "title": comp["title"], "about": comp["about"],
                            "command": display(cmd),
                            "started": t0.isoformat(timespec="seconds"),
                            "minutes": round((dt.datetime.now(dt.timezone.utc) - t0)
                                             .total_seconds() / 60, 1)})
    compact(scratch, HERE / f"{name}.sqlite", [c["name"] for c in spec["comparisons"]])
    after = machine()
    manifest = {
        "kind": "comparisons",
        "title": spec["title"],
        "summary": spec["summary"],
        "order": spec.get("order", 100),
        "store": f"{name}.sqlite",
        "regenerate": f"python docs/results/regenerate.py {name}",
        "date": started.strftime("%Y-%m-%d"),
        "machine": {**before, "load_average_1min_after": after["load_average_1min"],
                    "threads_per_run": 1},
        "versions": same_code(code),
        "comparisons": comparisons,
        "profiles": spec.get("profiles", []),
    }
    path = HERE / f"{name}.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def benchmark(name: str) -> Path:
    """Run benchmark ``name`` into ``NAME.csv`` and write its manifest ``NAME.json``."""
    spec = BENCHMARKS[name]
    cmd = ["python", spec["script"], *spec["args"], "--csv", str(HERE / f"{name}.csv")]
    print("+", display(cmd), flush=True)
    started = dt.datetime.now(dt.timezone.utc)
    before, code = machine(), versions()
    subprocess.run([sys.executable, *cmd[1:]], check=True, cwd=ROOT)
    manifest = {
        "kind": "benchmark",
        "title": spec["title"],
        "table": f"{name}.csv",
        "command": display(cmd),
        "regenerate": f"python docs/results/regenerate.py {name}",
        "date": started.strftime("%Y-%m-%d"),
        "machine": {**before, "load_average_1min_after": machine()["load_average_1min"],
                    "threads_per_run": 1},
        "versions": same_code(code),
    }
    path = HERE / f"{name}.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sets", nargs="*", metavar="SET",
                        help=f"what to regenerate (default: all of {', '.join([*SETS, *BENCHMARKS])})")
    parser.add_argument("--jobs", type=int, default=1, help="parallel runs per comparison")
    parser.add_argument("--resume", action="store_true",
                        help="keep the scratch store's finished runs (default: start fresh)")
    args = parser.parse_args(argv)
    known = [*SETS, *BENCHMARKS]
    unknown = [s for s in args.sets if s not in known]
    if unknown:
        parser.error(f"unknown set(s) {', '.join(unknown)}; known: {', '.join(known)}")
    for name in args.sets or known:
        path = benchmark(name) if name in BENCHMARKS else regenerate(name, args.jobs, args.resume)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

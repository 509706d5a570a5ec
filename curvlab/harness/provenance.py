"""Provenance of a run: versions, hardware, git commit, data checksums, plugin code hash.

Every run stores, next to its results, what produced them
(:func:`run_provenance`): the versions of curvlab, torch, numpy, scipy and
Python, the optimizer's plugin (its distribution and version, the versions
of the libraries its extra requires, and :func:`plugin_code_hash`), the CPU
model, the torch thread count, the device (with the CUDA device name), the
git commit of the curvlab checkout when there is one, the host, and the
checksums of the data files read (:meth:`Problem.provenance
<curvlab.harness.problems.Problem.provenance>`).

The plugin code hash also enters every run's key
(:attr:`RunConfig.plugin_code <curvlab.harness.config.RunConfig>`): a
changed backend gets new keys and is re-run, while cached runs of the other
plugins stay valid. :func:`environment_differences` tells whether the runs
of a comparison come from different environments (``curvlab report`` flags
those).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata as md
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["ENVIRONMENT_KEYS", "cpu_model", "environment", "environment_differences",
           "git_commit", "plugin_code_hash", "plugin_files", "plugin_versions",
           "run_provenance"]

#: Provenance entries that define an environment: runs that differ in one of them are
#: flagged as mixing environments.
ENVIRONMENT_KEYS = ("curvlab", "torch", "numpy", "python", "cpu", "device", "threads")


def _source_root(module_name: str) -> Path | None:
    """The folder of the package ``module_name`` belongs to (or the module's file)."""
    try:
        module = importlib.import_module(module_name)
    except Exception:  # noqa: BLE001 - an unloadable plugin has no code to hash
        return None
    if hasattr(module, "__path__"):  # a package
        return Path(next(iter(module.__path__)))
    package = getattr(module, "__package__", "") or ""
    if package:
        parent = importlib.import_module(package)
        if hasattr(parent, "__path__"):
            return Path(next(iter(parent.__path__)))
    file = getattr(module, "__file__", None)
    return Path(file) if file else None


def plugin_files(optimizer: str) -> list[Path]:
    """The Python source files of the plugin package that defines ``optimizer``.

    The package is the one the optimizer class's module belongs to
    (``curvlab_plugins.kfac`` for ``kfac``); every ``*.py`` file under it,
    sorted. A class defined in a top-level module gives that one file.

    Raises:
        ValueError: unknown optimizer (from :func:`curvlab.info`).

    Example:
        >>> sorted(p.name for p in plugin_files("sgd"))
        ['__init__.py', 'adam.py', 'rmsprop.py', 'sgd.py']
    """
    import curvlab

    cls = curvlab.info(optimizer).cls
    root = _source_root(cls.__module__)
    if root is None:
        return []
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def plugin_versions(optimizer: str) -> dict[str, str]:
    """Distribution and version of the plugin, and of the libraries its extra requires.

    Example:
        >>> plugin_versions("sgd")["distribution"]
        'curvlab'
    """
    from curvlab.registry import normalize

    out: dict[str, str] = {}
    for ep in md.entry_points(group="curvlab.optimizers"):
        if normalize(ep.name) != normalize(optimizer):
            continue
        dist = ep.dist
        if dist is not None:
            out["distribution"] = dist.metadata["Name"]
            out["version"] = dist.version
            for extra in ep.extras:
                for req in dist.requires or []:
                    if f'extra == "{extra}"' not in req and f"extra == '{extra}'" not in req:
                        continue
                    name = req.split(";")[0].split("[")[0]
                    for sep in "<>=!~ ":
                        name = name.split(sep)[0]
                    try:
                        out[name] = md.version(name)
                    except md.PackageNotFoundError:
                        out[name] = "missing"
        break
    return out


def plugin_code_hash(optimizer: str) -> str:
    """SHA-256 (16 hex digits) over the plugin's source files and its extra's library versions.

    Lines ``relative/path:sha256(bytes)`` of :func:`plugin_files` plus
    ``name==version`` of :func:`plugin_versions`, hashed together: editing any
    file of the package, or upgrading the library a bridged optimizer wraps,
    changes it. ``"unavailable"`` for a name that cannot be loaded (the run
    then fails as it would without the hash).

    Example:
        >>> len(plugin_code_hash("kfac")), plugin_code_hash("kfac") == plugin_code_hash("kfac")
        (16, True)
        >>> plugin_code_hash("no-such-optimizer")
        'unavailable'
    """
    try:
        files = plugin_files(optimizer)
    except ValueError:
        return "unavailable"
    root = files[0].parent if files else Path()
    lines = []
    for f in files:
        rel = f.relative_to(root) if f.is_relative_to(root) else f.name
        lines.append(f"{rel}:{hashlib.sha256(f.read_bytes()).hexdigest()}")
    versions = plugin_versions(optimizer)
    lines += [f"{k}=={v}" for k, v in sorted(versions.items()) if k not in ("distribution",
                                                                              "version")]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else :func:`platform.processor`).

    Example:
        >>> isinstance(cpu_model(), str)
        True
    """
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the git checkout holding ``path`` (default: curvlab's source), ``+dirty`` if edited.

    ``None`` when it is not a git checkout or git is missing.

    Example:
        >>> c = git_commit("/")
        >>> c is None or len(c) >= 40
        True
    """
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    if where.is_file():
        where = where.parent
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=False)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def environment(device: str = "cpu", threads: int | None = None) -> dict[str, Any]:
    """Versions and hardware of this process (JSON-ready).

    Keys: ``curvlab``, ``torch``, ``numpy``, ``scipy``, ``python``, ``platform``,
    ``host``, ``cpu``, ``cpu_count``, ``threads``, ``device`` (``"cpu"`` or the
    CUDA device's name), ``git``.

    Example:
        >>> env = environment()
        >>> sorted(env)[:4], env["device"]
        (['cpu', 'cpu_count', 'curvlab', 'device'], 'cpu')
    """
    import numpy
    import scipy
    import torch

    import curvlab

    dev = device
    if device.startswith("cuda") and torch.cuda.is_available():
        dev = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return {
        "curvlab": curvlab.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": platform.node(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads() if threads is None else threads,
        "device": dev,
        "git": git_commit(),
        "executable": sys.executable,
    }


def run_provenance(optimizer: str, device: str, threads: int,
                   data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything a run records about what produced it (see the module docstring).

    Args:
        optimizer: The optimizer's name.
        device: The run's device.
        threads: The run's torch thread count.
        data: The problem's data provenance (:meth:`Problem.provenance`).

    Returns:
        ``{"environment": ..., "plugin": {..., "code": hash}, "data": ...}``.

    Example:
        >>> p = run_provenance("sgd", "cpu", 1)
        >>> p["plugin"]["code"] == plugin_code_hash("sgd"), p["environment"]["threads"]
        (True, 1)
    """
    plugin = {"name": optimizer, **plugin_versions(optimizer), "code": plugin_code_hash(optimizer)}
    return {"environment": environment(device, threads), "plugin": plugin,
            "data": dict(data) if data is not None else None}


def environment_differences(provenances: Iterable[Mapping[str, Any] | None]
                            ) -> dict[str, list[str]]:
    """The :data:`ENVIRONMENT_KEYS` on which the given run provenances differ.

    Runs without provenance (stored before it was recorded) are skipped.

    Returns:
        ``key → sorted distinct values`` for every key with more than one value.

    Example:
        >>> a = {"environment": {"torch": "2.3", "cpu": "x"}}
        >>> b = {"environment": {"torch": "2.4", "cpu": "x"}}
        >>> environment_differences([a, b, None])
        {'torch': ['2.3', '2.4']}
    """
    seen: dict[str, set[str]] = {}
    for prov in provenances:
        if not prov:
            continue
        env = prov.get("environment") or {}
        for key in ENVIRONMENT_KEYS:
            if key in env:
                seen.setdefault(key, set()).add(str(env[key]))
    return {k: sorted(v) for k, v in seen.items() if len(v) > 1}

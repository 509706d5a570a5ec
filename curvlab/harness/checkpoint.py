"""Checkpoints of a run in progress: everything needed to continue it bitwise identically.

A checkpoint (one file per run key, written atomically: a temporary file
then :func:`os.replace`) holds

- the model's and the optimizer's ``state_dict`` (curvlab optimizers keep
  *all* curvature state there, see :doc:`/guide/checkpointing`) and the
  learning-rate scheduler's;
- the random-number generators: torch's global CPU (and CUDA) generator,
  NumPy's and Python's global generators, and the positions of the two
  mini-batch streams (generator state and the batches left in the epoch);
- the trajectory so far: the recorded curve, steps, training seconds, the
  divergence limit, the pass counts and the reference-step times.

Where: ``<store folder>/<store name>.checkpoints/<run key>.pt``
(:func:`checkpoint_folder`); the executor deletes a run's checkpoint once
its result is in the store. A run that is killed and started again with the
same key resumes from its last checkpoint, and its curve and metrics
(except the wall-clock times and memory) equal those of an uninterrupted
run bit for bit: the same operations run in the same order on the same
restored state.
"""

from __future__ import annotations

import os
import random
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from curvlab.harness.results import CurvePoint

if TYPE_CHECKING:
    from curvlab.harness.runner import Setup, Trajectory

__all__ = ["CHECKPOINT_FORMAT", "checkpoint_folder", "checkpoint_path", "load_checkpoint",
           "save_checkpoint"]

CHECKPOINT_FORMAT = 1


def checkpoint_folder(store_path: str | os.PathLike) -> Path:
    """``<folder of the store>/<store file name>.checkpoints``.

    Raises:
        ValueError: the store is ``":memory:"`` (no folder).

    Example:
        >>> checkpoint_folder("/tmp/res/results.sqlite").as_posix()
        '/tmp/res/results.sqlite.checkpoints'
    """
    if str(store_path) == ":memory:":
        raise ValueError("checkpoints need a store file (they go into its folder), got ':memory:'")
    p = Path(store_path)
    return p.parent / f"{p.name}.checkpoints"


def checkpoint_path(folder: str | os.PathLike, key: str) -> Path:
    """The checkpoint file of run ``key`` in ``folder``."""
    return Path(folder) / f"{key}.pt"


def _rng_state(device: str) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if device.startswith("cuda"):
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: str) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _load_optimizer(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, keeping the param-group dicts it was built with.

    ``torch.optim.Optimizer.load_state_dict`` replaces ``param_groups`` by new
    dicts. Optimizers that looked their groups up once (``kfac``, ``foof``,
    ``kbfgs`` keep ``id(param) → group`` maps) would then read the old dicts,
    and a learning-rate schedule, which writes the new ones, would stop
    reaching them. So the loaded values are copied into the original dicts,
    which stay the optimizer's groups.
    """
    groups = list(optimizer.param_groups)
    optimizer.load_state_dict(state)
    if len(groups) == len(optimizer.param_groups):
        for old, new in zip(groups, optimizer.param_groups):
            old.update(new)
        optimizer.param_groups = groups


def save_checkpoint(path: str | os.PathLike, setup: Setup, run: Trajectory) -> None:
    """Write the checkpoint of ``setup`` at the state of ``run`` (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "key": setup.config.key(),
        "model": setup.model.state_dict(),
        "optimizer": setup.optimizer.state_dict(),
        "scheduler": setup.scheduler.state_dict() if setup.scheduler is not None else None,
        "rng": _rng_state(setup.config.device),
        "batches": setup.batches.state_dict(),
        "fresh": setup.fresh.state_dict(),
        "trajectory": {
            "curve": [asdict(p) for p in run.curve],
            "steps": run.steps, "train_time": run.train_time, "clock_time": run.clock_time,
            "limit": run.limit,
            "forward": setup.counter.forward, "backward": setup.counter.backward,
            "reference": list(setup.reference.times),
            "reference_clock": list(setup.reference.clock_times),
        },
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, setup: Setup, run: Trajectory) -> bool:
    """Restore ``setup`` and ``run`` from the checkpoint at ``path``; ``False`` if there is none.

    Raises:
        ValueError: the checkpoint belongs to another run key or format (it
            is never applied to a different run).
    """
    path = Path(path)
    if not path.is_file():
        return False
    payload = torch.load(path, map_location=setup.config.device, weights_only=False)
    if payload.get("format") != CHECKPOINT_FORMAT or payload.get("key") != setup.config.key():
        raise ValueError(f"checkpoint {str(path)!r} belongs to run {payload.get('key')!r} "
                         f"(format {payload.get('format')!r}), not to run {setup.config.key()}")
    setup.model.load_state_dict(payload["model"])
    _load_optimizer(setup.optimizer, payload["optimizer"])
    if setup.scheduler is not None:
        setup.scheduler.load_state_dict(payload["scheduler"])
    for name, stream in (("batches", setup.batches), ("fresh", setup.fresh)):
        state = dict(payload[name])
        state["generator"] = state["generator"].cpu()
        state["order"] = [t.cpu() for t in state["order"]]
        stream.load_state_dict(state)
    _set_rng_state(payload["rng"], setup.config.device)
    t = payload["trajectory"]
    run.curve = [CurvePoint(**p) for p in t["curve"]]
    run.steps, run.train_time, run.limit = t["steps"], t["train_time"], t["limit"]
    run.clock_time = t["clock_time"]
    run.resumed_from = t["steps"]
    setup.counter.forward, setup.counter.backward = t["forward"], t["backward"]
    setup.reference.times = list(t["reference"])
    setup.reference.clock_times = list(t["reference_clock"])
    return True

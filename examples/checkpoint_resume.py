"""Checkpoint and resume: a resumed run is bitwise identical to an uninterrupted one.

Trains for ``2 k`` steps in one go, then trains ``k`` steps, saves model and
optimizer with ``torch.save``, rebuilds both from the file in fresh objects,
trains ``k`` more steps and compares the weights.

Run::

    python examples/checkpoint_resume.py --optimizer kfac --steps 20

``CURVLAB_EXAMPLE_STEPS`` overrides the default number of steps.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn

import curvlab


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The digit images as standardised 64-vectors, and their labels."""
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    return (x - x.mean(0)) / (x.std(0) + 1e-6), torch.tensor(data.target)


def build(name: str) -> tuple[nn.Module, nn.Module, curvlab.CurvatureOptimizer]:
    """A freshly initialised model (seed 0), its loss and optimizer ``name``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    loss_fn = nn.CrossEntropyLoss()
    return model, loss_fn, curvlab.create(name, model, loss_fn)


def train(model, loss_fn, opt, x, y, start: int, stop: int) -> None:
    """Steps ``start … stop-1``; the batch of step t depends only on t."""
    for t in range(start, stop):
        idx = torch.randint(len(x), (64,), generator=torch.Generator().manual_seed(t))
        opt.step(curvlab.closure(model, loss_fn, x[idx], y[idx]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", default="kfac")
    parser.add_argument("--steps", type=int, default=int(os.environ.get("CURVLAB_EXAMPLE_STEPS", 40)))
    args = parser.parse_args()
    x, y = digits()
    half = max(1, args.steps // 2)

    # Uninterrupted run.
    model, loss_fn, opt = build(args.optimizer)
    train(model, loss_fn, opt, x, y, 0, 2 * half)
    expected = [p.detach().clone() for p in model.parameters()]

    # Interrupted run: train, save, rebuild everything from the file, continue.
    model, loss_fn, opt = build(args.optimizer)
    train(model, loss_fn, opt, x, y, 0, half)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint.pt"
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                    "rng": torch.get_rng_state(), "step": half}, path)
        del model, opt
        ckpt = torch.load(path)  # weights_only: tensors, numbers, dicts suffice
    model, loss_fn, opt = build(args.optimizer)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])  # includes all curvature state
    torch.set_rng_state(ckpt["rng"])
    train(model, loss_fn, opt, x, y, ckpt["step"], 2 * half)

    same = all(torch.equal(a, b) for a, b in zip(expected, model.parameters()))
    print(f"{args.optimizer}: curvature state keys {sorted(opt.curv_state)[:4]}...")
    print(f"resumed after {half} of {2 * half} steps; weights bitwise identical: {same}")
    if not same:
        raise SystemExit("resumed run differs from the uninterrupted one")


if __name__ == "__main__":
    main()

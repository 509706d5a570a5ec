"""Select optimizers by name: one training loop, many optimizers, identical start.

Every curvlab optimizer is driven by ``opt.step(closure)``, so the loop below
never changes; only the name does. Each optimizer starts from the same
initial weights and sees the same mini-batches.

Run::

    python examples/select_by_name.py                          # a default selection
    python examples/select_by_name.py --optimizers sgd K-BFGS adam --steps 100
    python examples/select_by_name.py --all                    # every available name

``CURVLAB_EXAMPLE_STEPS`` overrides the default number of steps.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time
import warnings

import torch
from sklearn.datasets import load_digits
from torch import nn

import curvlab

DEFAULT = ["sgd", "adam", "kfac", "foof", "kbfgs", "groupednewton"]


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The digit images as standardised 64-vectors, and their labels."""
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    return (x - x.mean(0)) / (x.std(0) + 1e-6), torch.tensor(data.target)


def train(name: str, model: nn.Module, x, y, steps: int, batch_size: int) -> dict[str, float]:
    """Train ``model`` with optimizer ``name`` (defaults) and return final metrics."""
    loss_fn = nn.CrossEntropyLoss()
    opt = curvlab.create(name, model, loss_fn)
    gen = torch.Generator().manual_seed(0)  # identical batches for every optimizer
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(len(x), (batch_size,), generator=gen)
        opt.step(curvlab.closure(model, loss_fn, x[idx], y[idx]))
    seconds = time.perf_counter() - start
    with torch.no_grad():
        logits = model(x)
        loss = loss_fn(logits, y).item()
        acc = (logits.argmax(1) == y).float().mean().item()
    return {"loss": loss, "acc": acc, "seconds": seconds, "skipped": opt.stats["skipped_steps"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizers", nargs="+", default=None, help="names (any spelling)")
    parser.add_argument("--all", action="store_true", help="every name in curvlab.available()")
    parser.add_argument("--steps", type=int, default=int(os.environ.get("CURVLAB_EXAMPLE_STEPS", 100)))
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    names = curvlab.available() if args.all else (args.optimizers or DEFAULT)
    x, y = digits()
    torch.manual_seed(0)
    initial = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    print(f"{'optimizer':<16}{'train loss':>12}{'accuracy':>10}{'seconds':>9}{'skipped':>9}")
    for name in names:
        info = curvlab.info(name)  # raises with the available names for a typo
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", curvlab.NonFiniteStepWarning)  # counted in stats
            r = train(info.name, copy.deepcopy(initial), x, y, args.steps, args.batch_size)
        loss = f"{r['loss']:.4f}" if math.isfinite(r["loss"]) else "diverged"
        print(f"{info.name:<16}{loss:>12}{r['acc']:>10.1%}{r['seconds']:>9.2f}{r['skipped']:>9.0f}")


if __name__ == "__main__":
    main()

"""Quickstart: train a small MLP on scikit-learn's digits with a curvature optimizer.

Run::

    python examples/quickstart.py                 # K-FAC, 200 steps
    python examples/quickstart.py --optimizer foof --steps 50

``CURVLAB_EXAMPLE_STEPS`` overrides the default number of steps (the test
suite uses it to keep the examples fast).
"""

from __future__ import annotations

import argparse
import os

import torch
from sklearn.datasets import load_digits
from torch import nn

import curvlab


def digits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1797 8x8 digit images as standardised 64-vectors, and their labels."""
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return x, torch.tensor(data.target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", default="kfac", help="any name from `curvlab list`")
    parser.add_argument("--steps", type=int, default=int(os.environ.get("CURVLAB_EXAMPLE_STEPS", 200)))
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    torch.manual_seed(0)
    x, y = digits()
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    loss_fn = nn.CrossEntropyLoss()
    opt = curvlab.create(args.optimizer, model, loss_fn)  # paper defaults; see `curvlab info NAME`

    gen = torch.Generator().manual_seed(0)
    for step in range(args.steps):
        idx = torch.randint(len(x), (args.batch_size,), generator=gen)
        loss = opt.step(curvlab.closure(model, loss_fn, x[idx], y[idx]))
        if step % max(1, args.steps // 5) == 0:
            print(f"step {step:4d}  batch loss {loss.item():.4f}")

    with torch.no_grad():
        logits = model(x)
        full = loss_fn(logits, y).item()
        acc = (logits.argmax(1) == y).float().mean().item()
    print(f"{args.optimizer}: train loss {full:.4f}, accuracy {acc:.1%} after {args.steps} steps")
    print(f"optimizer counters: {opt.stats}")


if __name__ == "__main__":
    main()

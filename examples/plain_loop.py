"""K-FAC and FOOF in an existing PyTorch training loop: no closure, no curvlab.closure.

The loop is the one every PyTorch tutorial writes::

    for x, y in loader:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

Only the construction changes: ``curvlab.create(name, model, loss_fn)`` with
the *model* (its layers are hooked) and the *loss module* your loop calls (it
defines K-FAC's output-side curvature). FOOF needs the layer inputs (forward
hooks) and your gradients; K-FAC with ``fisher_type="empirical"`` needs the
gradients of your backward as well, with ``"mc"`` (the default) it
back-propagates sampled targets when your loop calls ``loss_fn``. Methods that
must evaluate the loss themselves (K-BFGS, GroupedNewton, AdaHessian) say so
when ``step()`` gets no closure.

Run::

    python examples/plain_loop.py                       # kfac (empirical, mc) and foof, 200 steps
    python examples/plain_loop.py --steps 50 --optimizers foof

``CURVLAB_EXAMPLE_STEPS`` overrides the default number of steps.
"""

from __future__ import annotations

import argparse
import os

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import curvlab

CONFIGS = {
    "kfac-empirical": ("kfac", {"fisher_type": "empirical"}),
    "kfac-mc": ("kfac", {"fisher_type": "mc"}),
    "foof": ("foof", {}),
    "sgd": ("sgd", {"lr": 0.1, "momentum": 0.9}),
}


def digits() -> TensorDataset:
    """The 1797 8x8 digit images as standardised 64-vectors, with their labels."""
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return TensorDataset(x, torch.tensor(data.target))


def train(config: str, steps: int, batch_size: int = 128) -> list[float]:
    """Train a fresh MLP with the plain loop; the batch losses."""
    name, hp = CONFIGS[config]
    torch.manual_seed(0)
    data = digits()
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    loss_fn = nn.CrossEntropyLoss()
    opt = curvlab.create(name, model, loss_fn, **hp)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    losses: list[float] = []
    while len(losses) < steps:
        for x, y in loader:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if len(losses) == steps:
                break
    with torch.no_grad():  # an evaluation between steps: the hooks ignore it
        x, y = data.tensors
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    print(f"{config:15s} steps {steps:4d}  first batch loss {losses[0]:.4f}  last {losses[-1]:.4f}  "
          f"train accuracy {accuracy:.3f}")
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizers", nargs="+", default=["kfac-empirical", "kfac-mc", "foof"],
                        choices=sorted(CONFIGS))
    parser.add_argument("--steps", type=int, default=int(os.environ.get("CURVLAB_EXAMPLE_STEPS", 200)))
    args = parser.parse_args()
    torch.set_num_threads(1)
    for config in args.optimizers:
        train(config, args.steps)


if __name__ == "__main__":
    main()

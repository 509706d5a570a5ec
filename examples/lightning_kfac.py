"""K-FAC and FOOF under PyTorch Lightning's automatic optimization.

Lightning drives the optimizer itself: in automatic optimization it calls
``optimizer.step(closure)`` with a closure of its own that runs
``training_step``, ``zero_grad`` and ``backward`` and accepts no keywords.
curvlab's K-FAC and FOOF need nothing more: return ``curvlab.create(...)``
from ``configure_optimizers`` with the model and the *same loss module* that
``training_step`` calls (K-FAC measures how the loss Lightning
back-propagates relates to it). Methods that need closure options
(GroupedNewton's fresh batches, AdaHessian's Hessian-vector products) raise
a ``ValueError`` naming them; use manual optimization
(``self.automatic_optimization = False``) with ``curvlab.closure`` for them.

Needs the ``lightning`` extra (``pip install "curvlab[lightning]"``). Run::

    python examples/lightning_kfac.py                    # kfac and foof, 100 steps
    python examples/lightning_kfac.py --steps 5 --optimizers kfac

``CURVLAB_EXAMPLE_STEPS`` overrides the default number of steps.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

import lightning as L
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import curvlab


class DigitsClassifier(L.LightningModule):
    """An MLP on scikit-learn's digits, trained by the curvlab optimizer ``optimizer``."""

    def __init__(self, optimizer: str = "kfac", **hparams: Any) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        self.loss_fn = nn.CrossEntropyLoss()
        self.optimizer_name = optimizer
        self.optimizer_hparams = hparams
        self.losses: list[float] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss_fn(self.model(x), y)  # the loss module given to the optimizer
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return curvlab.create(self.optimizer_name, self.model, self.loss_fn,
                              **self.optimizer_hparams)


def digits(batch_size: int = 128) -> DataLoader:
    """The digits as standardised 64-vectors, shuffled with a fixed seed."""
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return DataLoader(TensorDataset(x, torch.tensor(data.target)), batch_size=batch_size,
                      shuffle=True, generator=torch.Generator().manual_seed(0))


def train(optimizer: str, steps: int) -> list[float]:
    """Fit a fresh module for ``steps`` optimizer steps; the batch losses."""
    torch.manual_seed(0)
    module = DigitsClassifier(optimizer)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, digits())
    opt = trainer.optimizers[0]
    print(f"{optimizer}: {int(opt.stats['steps'])} steps, batch loss {module.losses[0]:.4f} -> "
          f"{module.losses[-1]:.4f}, skipped {int(opt.stats['skipped_steps'])}")
    assert all(math.isfinite(v) for v in module.losses)
    return module.losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizers", nargs="+", default=["kfac", "foof"])
    parser.add_argument("--steps", type=int, default=int(os.environ.get("CURVLAB_EXAMPLE_STEPS", 100)))
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.optimizers:
        train(name, args.steps)


if __name__ == "__main__":
    main()

"""Problems on scikit-learn's 8×8 digits (1797 images, 10 classes; ships with sklearn).

Pixels are scaled to ``[0, 1]`` (``x / 16``). The train/test split is fixed:
a permutation drawn with ``numpy.random.RandomState(0)``, the first 80 % train
(1438 images), the rest test (359). The validation split then takes 10 % of
the training images (144, chosen with the problem's ``split_seed``), leaving
1294 for training.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from curvlab.harness.problems.base import Dataset, Problem

__all__ = ["DigitsAutoencoder", "DigitsCNN", "DigitsMLP", "load_digits_split"]


def load_digits_split(train_fraction: float = 0.8) -> tuple[np.ndarray, ...]:
    """Digits as float32 ``x`` in ``[0, 1]`` (N×64) and int64 labels, split train/test.

    Returns:
        ``(x_train, y_train, x_test, y_test)``.

    Example:
        >>> xtr, ytr, xte, yte = load_digits_split()
        >>> xtr.shape, xte.shape, float(xtr.max())
        ((1438, 64), (359, 64), 1.0)
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    perm = np.random.RandomState(0).permutation(len(x))
    k = int(round(train_fraction * len(x)))
    tr, te = perm[:k], perm[k:]
    return x[tr], y[tr], x[te], y[te]


def _as_dataset(x_shape: tuple[int, ...] | None, autoencoder: bool = False) -> Dataset:
    xtr, ytr, xte, yte = (torch.from_numpy(a) for a in load_digits_split())
    if x_shape is not None:
        xtr, xte = xtr.reshape(-1, *x_shape), xte.reshape(-1, *x_shape)
    if autoencoder:
        return Dataset(xtr, xtr.clone(), xte, xte.clone())
    return Dataset(xtr, ytr, xte, yte)


class DigitsMLP(Problem):
    """Digits classification with an MLP 64-128-64-10 (ReLU), cross-entropy.

    Example:
        >>> p = DigitsMLP()
        >>> p.init_model(0)(p.load_data().x_test).shape
        torch.Size([359, 10])
    """

    name = "digitsmlp"
    dataset = "digits"
    summary = "sklearn digits, MLP 64-128-64-10 ReLU, cross-entropy"
    task = "classification"
    batch_size = 128
    target_loss = 0.15  # validation loss (its floor is ~0.1: 144 validation images)

    def load_data(self) -> Dataset:
        """Fixed split of the 1797 digits (see module docstring)."""
        return self.with_validation(_as_dataset(None))

    def build_model(self) -> nn.Sequential:
        """64-128-64-10 ReLU MLP."""
        return nn.Sequential(
            nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def loss_fn(self) -> nn.Module:
        """Mean cross-entropy."""
        return nn.CrossEntropyLoss()


class DigitsCNN(DigitsMLP):
    """Digits as 1×8×8 images, a small CNN (conv 16, pool, conv 32, pool, linear).

    Example:
        >>> p = DigitsCNN()
        >>> p.init_model(0)(p.load_data().x_test[:2]).shape
        torch.Size([2, 10])
    """

    name = "digitscnn"
    summary = "sklearn digits 1x8x8, Conv(16)-Pool-Conv(32)-Pool-Linear, cross-entropy"

    def load_data(self) -> Dataset:
        """The digits reshaped to ``N×1×8×8``."""
        return self.with_validation(_as_dataset((1, 8, 8)))

    def build_model(self) -> nn.Sequential:
        """Conv2d(1→16, 3×3) ReLU MaxPool, Conv2d(16→32, 3×3) ReLU MaxPool, Linear(128→10)."""
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(128, 10),
        )


def mirrored_autoencoder(widths: list[int]) -> nn.Sequential:
    """Symmetric ReLU auto-encoder ``w0-w1-…-wk-…-w1-w0`` with a linear code layer.

    Every hidden layer is followed by ReLU except the code (``wk``) and the
    output, which returns logits (use a sigmoid cross-entropy loss).

    Example:
        >>> m = mirrored_autoencoder([8, 4, 2])
        >>> [l.out_features for l in m if isinstance(l, nn.Linear)]
        [4, 2, 4, 8]
    """
    dims = widths + widths[-2::-1]
    layers: list[nn.Module] = []
    code = len(widths) - 2
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i != code and i != len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DigitsAutoencoder(Problem):
    """Digits auto-encoder 64-256-128-64-16 (mirrored), sigmoid cross-entropy.

    Reported loss: summed over the 64 pixels, mean over the batch (see
    :mod:`curvlab.harness.problems.base`).

    Example:
        >>> p = DigitsAutoencoder()
        >>> p.init_model(0)(p.load_data().x_test).shape
        torch.Size([359, 64])
    """

    name = "digitsautoencoder"
    dataset = "digits"
    summary = "sklearn digits, ReLU AE 64-256-128-64-16 mirrored, sigmoid CE summed over pixels"
    task = "autoencoder"
    batch_size = 256
    target_loss = 22.0
    loss_scale = 64.0

    def load_data(self) -> Dataset:
        """Digits as inputs and targets."""
        return self.with_validation(_as_dataset(None, autoencoder=True))

    def build_model(self) -> nn.Sequential:
        """64-256-128-64-16-64-128-256-64."""
        return mirrored_autoencoder([64, 256, 128, 64, 16])

    def loss_fn(self) -> nn.Module:
        """Sigmoid cross-entropy, mean over pixels and batch (reported × 64)."""
        return nn.BCEWithLogitsLoss()

"""MNIST problems read from IDX files in a user-given folder (never downloaded).

Expected files in ``data_dir`` (raw or with ``.gz``): ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``.
Pixels are scaled to ``[0, 1]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from curvlab.harness.problems.base import Dataset, Problem
from curvlab.harness.problems.digits import mirrored_autoencoder
from curvlab.harness.problems.idx import read_idx

__all__ = ["MNIST_FILES", "MNISTAutoencoder", "MNISTMLP", "load_mnist"]

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _find(folder: Path, stem: str) -> Path:
    for cand in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / cand).is_file():
            return folder / cand
    raise FileNotFoundError(
        f"MNIST file {stem!r} (raw or .gz) not found in {str(folder)!r}; put the four IDX "
        f"files {', '.join(MNIST_FILES)} there (curvlab never downloads data)"
    )


def load_mnist(data_dir: str | Path | None) -> tuple[np.ndarray, ...]:
    """Load MNIST from ``data_dir`` as float32 ``N×784`` images in ``[0, 1]`` and int64 labels.

    Returns:
        ``(x_train, y_train, x_test, y_test)``.

    Raises:
        FileNotFoundError: ``data_dir`` is missing or lacks a file (names it).
        ValueError: image and label counts differ.

    Example:
        >>> load_mnist(None)
        Traceback (most recent call last):
        ...
        FileNotFoundError: mnist problems need --data-dir (data_dir=...) pointing to a folder with the IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (raw or .gz)
    """
    if data_dir is None:
        raise FileNotFoundError(
            "mnist problems need --data-dir (data_dir=...) pointing to a folder with the IDX "
            f"files {', '.join(MNIST_FILES)} (raw or .gz)"
        )
    folder = Path(data_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"data_dir {str(folder)!r} is not a folder")
    out = []
    for img_stem, lab_stem in (MNIST_FILES[:2], MNIST_FILES[2:]):
        imgs, labs = read_idx(_find(folder, img_stem)), read_idx(_find(folder, lab_stem))
        if len(imgs) != len(labs):
            raise ValueError(f"{img_stem}: {len(imgs)} images but {len(labs)} labels")
        out += [(imgs.reshape(len(imgs), -1) / 255.0).astype(np.float32), labs.astype(np.int64)]
    return tuple(out)


class MNISTMLP(Problem):
    """MNIST classification with an MLP 784-256-128-10 (ReLU), cross-entropy.

    Example:
        >>> MNISTMLP().load_data()
        Traceback (most recent call last):
        ...
        FileNotFoundError: mnist problems need --data-dir ...
    """

    name = "mnistmlp"
    summary = "MNIST (IDX files from --data-dir), MLP 784-256-128-10 ReLU, cross-entropy"
    task = "classification"
    batch_size = 128
    target_loss = 0.1

    def load_data(self) -> Dataset:
        """The IDX files of ``data_dir``."""
        return Dataset(*(torch.from_numpy(a) for a in load_mnist(self.data_dir)))

    def build_model(self) -> nn.Sequential:
        """784-256-128-10 ReLU MLP."""
        return nn.Sequential(
            nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)
        )

    def loss_fn(self) -> nn.Module:
        """Mean cross-entropy."""
        return nn.CrossEntropyLoss()


class MNISTAutoencoder(Problem):
    """MNIST auto-encoder 784-1000-500-250-30 mirrored (K-BFGS paper), sigmoid CE summed over pixels.

    Example:
        >>> MNISTAutoencoder().task
        'autoencoder'
    """

    name = "mnistautoencoder"
    summary = "MNIST (IDX files from --data-dir), AE 784-1000-500-250-30 mirrored, sigmoid CE"
    task = "autoencoder"
    batch_size = 1000
    target_loss = 80.0
    loss_scale = 784.0

    def load_data(self) -> Dataset:
        """Images as inputs and targets."""
        xtr, _, xte, _ = (torch.from_numpy(a) for a in load_mnist(self.data_dir))
        return Dataset(xtr, xtr.clone(), xte, xte.clone())

    def build_model(self) -> nn.Sequential:
        """784-1000-500-250-30-250-500-1000-784."""
        return mirrored_autoencoder([784, 1000, 500, 250, 30])

    def loss_fn(self) -> nn.Module:
        """Sigmoid cross-entropy, mean over pixels and batch (reported × 784)."""
        return nn.BCEWithLogitsLoss()

"""Problems on 28×28 IDX image sets: MNIST and Fashion-MNIST (never downloaded).

Both datasets are four IDX files (raw or ``.gz``): ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, found as :mod:`curvlab.harness.data` describes
(``--data-dir``, ``$CURVLAB_DATA``, and for Fashion-MNIST the Debian package
``dataset-fashion-mnist``). Each file is decoded once per process
(:func:`~curvlab.harness.problems.idx.read_idx_cached`) and its SHA-256 is
recorded in :attr:`Dataset.sources`.

Splits: test = the 10,000 ``t10k`` images; validation = 5,000 of the 60,000
training images chosen with the problem's ``split_seed``
(:meth:`Problem.validation_size`), training = the other 55,000. ``small``
uses the first 2,000 training and 500 test images of the files (1,800 /
200 / 500 after the split) and smaller models.

Inputs: pixels ``x / 255 ∈ [0, 1]``; the classifiers standardise them,
``x ↦ (x − μ) / σ`` with the mean ``μ`` and standard deviation ``σ`` of all
pixels of the training split (one scalar pair, recorded in
``Dataset.meta["standardise"]``; per-pixel statistics would divide the
nearly constant border pixels by nearly zero). The auto-encoders keep
``[0, 1]`` (their targets are the pixels).

The three models, for either dataset:

``*-mlp``
    FOOF paper's MLP (Benzing, 2022): 784-1000-1000-1000-10, ReLU, no biases,
    cross-entropy, batch 100 (``small``: 784-32-32-32-10).
``*-autoencoder``
    K-BFGS paper's auto-encoder (Goldfarb, Ren & Bahamou, 2020):
    784-1000-500-250-30 mirrored, ReLU, linear code, sigmoid cross-entropy
    summed over pixels, batch 1000 (``small``: 784-64-16 mirrored, batch 250).
``*-cnn``
    ResNet-8 of width 16 with BatchNorm (:mod:`~curvlab.harness.problems.resnet`),
    cross-entropy, batch 128 (``small``: width 4, batch 64).

Loss targets (reported scale, for time-to-target): ``fashion-mlp`` 0.35 and
``fashion-autoencoder`` 240 are what Adam (lr 10⁻³, seed 0) reaches in about
400 and 330 steps (it is at 0.37 after 500 steps and 242.5 after 300; the
auto-encoder's floor, the pixels' own entropy Σ_d H(x_d), is 188.4 on the
training split). The others are set by analogy (MNIST is easier).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from curvlab.harness.data import DataCorruptError, DataFile, Location, locate
from curvlab.harness.problems.base import Dataset, Problem
from curvlab.harness.problems.digits import mirrored_autoencoder
from curvlab.harness.problems.idx import load_idx
from curvlab.harness.problems.resnet import resnet8

__all__ = [
    "MNIST_FILES",
    "MNISTCNN",
    "MNISTMLP",
    "FashionAutoencoder",
    "FashionCNN",
    "FashionMLP",
    "IDXImageProblem",
    "ImageSet",
    "MNISTAutoencoder",
    "load_image_set",
    "load_mnist",
    "mlp_without_bias",
    "standardise",
]

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

SMALL_TRAIN, SMALL_TEST = 2000, 500


@dataclass(frozen=True)
class ImageSet:
    """The four arrays of an IDX image dataset (read-only, as decoded) and their files.

    Attributes:
        x_train, x_test: ``uint8`` images ``(N, 28, 28)``.
        y_train, y_test: ``uint8`` labels ``(N,)`` in ``[0, 9]``.
        files: The four files with their SHA-256.
        location: Where they were found.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    files: tuple[DataFile, ...]
    location: Location


def _repair(location: Location) -> str:
    if location.origin == "system" and location.source.name == "fashion-mnist":
        return "apt-get install --reinstall dataset-fashion-mnist"
    return f"replace it with an intact copy ({location.source.how_to_get})"


def load_image_set(dataset: str, data_dir: str | Path | None = None) -> ImageSet:
    """Locate and decode the IDX files of ``dataset`` (``"mnist"`` or ``"fashion-mnist"``).

    Raises:
        DataNotFoundError: the files are not found (one line: where it looked
            and the command that gets them).
        DataCorruptError: a file is truncated or corrupt, or images and labels
            disagree (one line naming the file and the fix).

    Example:
        >>> import tempfile
        >>> load_image_set("mnist", tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        curvlab.harness.data.DataNotFoundError: mnist not found (looked in ...); to get it: put the IDX files ...
    """
    loc = locate(dataset, data_dir)
    arrays, files = [], []
    for stem, path in zip(MNIST_FILES, loc.paths):
        try:
            array, file = load_idx(path)
        except DataCorruptError as err:
            raise DataCorruptError(f"{dataset}: {err}; to fix: {_repair(loc)}") from err
        images = "images" in stem
        if array.dtype != np.uint8 or array.ndim != (3 if images else 1) or (
                images and array.shape[1:] != (28, 28)) or (not images and array.size and array.max() > 9):
            raise DataCorruptError(
                f"{dataset}: {path} is not an MNIST-format {'image' if images else 'label'} file "
                f"(dtype {array.dtype}, shape {array.shape}); to fix: {_repair(loc)}")
        arrays.append(array)
        files.append(file)
    for i, split in ((0, "train"), (2, "t10k")):
        if len(arrays[i]) != len(arrays[i + 1]):
            raise DataCorruptError(f"{dataset}: {len(arrays[i])} {split} images but "
                                   f"{len(arrays[i + 1])} labels; to fix: {_repair(loc)}")
    return ImageSet(*arrays, files=tuple(files), location=loc)


def load_mnist(data_dir: str | Path | None, dataset: str = "mnist") -> tuple[np.ndarray, ...]:
    """Load an IDX image set as float32 ``N×784`` images in ``[0, 1]`` and int64 labels.

    Returns:
        ``(x_train, y_train, x_test, y_test)`` (the full files, no validation split).

    Raises:
        DataNotFoundError, DataCorruptError: as :func:`load_image_set`.

    Example:
        >>> import tempfile
        >>> load_mnist(tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        curvlab.harness.data.DataNotFoundError: mnist not found ...
    """
    s = load_image_set(dataset, data_dir)
    return ((s.x_train.reshape(len(s.x_train), -1) / 255.0).astype(np.float32),
            s.y_train.astype(np.int64),
            (s.x_test.reshape(len(s.x_test), -1) / 255.0).astype(np.float32),
            s.y_test.astype(np.int64))


def standardise(data: Dataset) -> Dataset:
    """``x ↦ (x − μ)/σ`` on every split, ``μ, σ`` = mean and std of all training inputs.

    The statistics are accumulated in float64 (``μ = Σx/n``, ``σ² = Σx²/n − μ²``,
    no float64 copy of the data); ``σ = 0`` is replaced by 1. The transform
    runs in the inputs' dtype. Records ``meta["standardise"] = {"mean": μ, "std": σ}``.

    Example:
        >>> d = Dataset(torch.tensor([[0.0], [2.0]]), torch.zeros(2), torch.tensor([[4.0]]), torch.zeros(1))
        >>> s = standardise(d)
        >>> s.x_train.flatten().tolist(), s.x_test.flatten().tolist()
        ([-1.0, 1.0], [3.0])
    """
    x = data.x_train
    n = x.numel()
    mu = float(x.sum(dtype=torch.float64)) / n
    second = float(torch.linalg.vector_norm(x, dtype=torch.float64)) ** 2 / n
    sigma = max(second - mu * mu, 0.0) ** 0.5
    sigma = sigma if sigma > 0 else 1.0

    def f(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.sub(mu).div_(sigma)

    meta = {**data.meta, "standardise": {"mean": mu, "std": sigma}}
    return Dataset(f(data.x_train), data.y_train, f(data.x_test), data.y_test,
                   f(data.x_val), data.y_val, sources=data.sources, meta=meta)


def mlp_without_bias(widths: list[int]) -> nn.Sequential:
    """``Linear(bias=False)`` layers ``w0 → w1 → … → wk`` with ReLU between them (logits out).

    Example:
        >>> m = mlp_without_bias([4, 3, 2])
        >>> [type(l).__name__ for l in m], m[0].bias is None
        (['Linear', 'ReLU', 'Linear'], True)
    """
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b, bias=False))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class IDXImageProblem(Problem):
    """Common data pipeline of the MNIST-format problems (see the module docstring).

    Subclasses set :attr:`dataset` (``"mnist"`` or ``"fashion-mnist"``),
    :attr:`layout` and the model.

    Attributes:
        layout: ``"flat"`` (``N×784``), ``"image"`` (``N×1×28×28``) or
            ``"autoencoder"`` (``N×784`` inputs = targets in ``[0, 1]``).
    """

    layout: ClassVar[str] = "flat"
    default_eval_size = 5000

    def load_data(self) -> Dataset:
        """Read the files, take the ``small`` subset, split, and standardise (classifiers)."""
        s = load_image_set(self.dataset, self.data_dir)
        xtr, ytr, xte, yte = s.x_train, s.y_train, s.x_test, s.y_test
        if self.small:
            xtr, ytr, xte, yte = xtr[:SMALL_TRAIN], ytr[:SMALL_TRAIN], xte[:SMALL_TEST], yte[:SMALL_TEST]
        shape: tuple[int, ...] = (1, 28, 28) if self.layout == "image" else (784,)

        def images(a: np.ndarray) -> torch.Tensor:  # uint8 (read-only, cached) -> new float32
            return torch.from_numpy(a.reshape(len(a), *shape).astype(np.float32)).div_(255.0)

        x_train, x_test = images(xtr), images(xte)
        meta: dict[str, Any] = {"location": str(s.location.folder), "origin": s.location.origin}
        if self.layout == "autoencoder":
            data = Dataset(x_train, x_train.clone(), x_test, x_test.clone(), sources=s.files, meta=meta)
            return self.with_validation(data)
        labels = [torch.from_numpy(a.astype(np.int64)) for a in (ytr, yte)]
        data = Dataset(x_train, labels[0], x_test, labels[1], sources=s.files, meta=meta)
        return standardise(self.with_validation(data))


class MNISTMLP(IDXImageProblem):
    """MNIST, FOOF paper's MLP 784-1000-1000-1000-10 (ReLU, no biases), standardised inputs.

    Example:
        >>> p = MNISTMLP()
        >>> sum(w.numel() for w in p.init_model(0).parameters())
        2794000
    """

    name = "mnistmlp"
    dataset = "mnist"
    summary = "MNIST, MLP 784-1000-1000-1000-10 ReLU no biases (FOOF), standardised, cross-entropy"
    task = "classification"
    batch_size = 100
    target_loss = 0.1
    default_eval_every = 100  # one evaluation (5000 + 5000 rows) costs ~20 SGD steps

    def build_model(self) -> nn.Module:
        """784-1000-1000-1000-10 (small: 784-32-32-32-10), ReLU, no biases."""
        return mlp_without_bias([784, 32, 32, 32, 10] if self.small else [784, 1000, 1000, 1000, 10])

    def loss_fn(self) -> nn.Module:
        """Mean cross-entropy."""
        return nn.CrossEntropyLoss()


class MNISTAutoencoder(IDXImageProblem):
    """MNIST auto-encoder 784-1000-500-250-30 mirrored (K-BFGS paper), sigmoid CE summed over pixels.

    Example:
        >>> MNISTAutoencoder().task, MNISTAutoencoder(small=True).batch_size
        ('autoencoder', 250)
    """

    name = "mnistautoencoder"
    dataset = "mnist"
    summary = "MNIST, AE 784-1000-500-250-30 mirrored ReLU (K-BFGS), sigmoid CE summed over pixels"
    task = "autoencoder"
    layout = "autoencoder"
    batch_size = 1000
    small_batch_size = 250
    target_loss = 80.0
    loss_scale = 784.0

    def build_model(self) -> nn.Module:
        """784-1000-500-250-30-250-500-1000-784 (small: 784-64-16-64-784)."""
        return mirrored_autoencoder([784, 64, 16] if self.small else [784, 1000, 500, 250, 30])

    def loss_fn(self) -> nn.Module:
        """Sigmoid cross-entropy, mean over pixels and batch (reported × 784)."""
        return nn.BCEWithLogitsLoss()


class MNISTCNN(IDXImageProblem):
    """MNIST, ResNet-8 (width 16, BatchNorm), standardised inputs, cross-entropy.

    Example:
        >>> isinstance(MNISTCNN().init_model(0), torch.nn.Sequential)
        False
    """

    name = "mnistcnn"
    dataset = "mnist"
    summary = "MNIST 1x28x28, ResNet-8 width 16 with BatchNorm, standardised, cross-entropy"
    task = "classification"
    layout = "image"
    batch_size = 128
    small_batch_size = 64
    eval_batch_size = 128  # 28x28x16 activations of bigger chunks leave the cache: 3x slower
    target_loss = 0.1
    default_eval_every = 100  # one evaluation (5000 + 5000 rows) costs ~24 SGD steps

    def build_model(self) -> nn.Module:
        """ResNet-8, width 16 (small: width 4)."""
        return resnet8(1, 10, width=4 if self.small else 16)

    def loss_fn(self) -> nn.Module:
        """Mean cross-entropy."""
        return nn.CrossEntropyLoss()


class FashionMLP(MNISTMLP):
    """Fashion-MNIST, FOOF paper's MLP 784-1000-1000-1000-10 (its main benchmark).

    Example:
        >>> FashionMLP().dataset, FashionMLP().batch_size
        ('fashion-mnist', 100)
    """

    name = "fashionmlp"
    dataset = "fashion-mnist"
    summary = ("Fashion-MNIST, MLP 784-1000-1000-1000-10 ReLU no biases (FOOF), standardised, "
               "cross-entropy")
    target_loss = 0.35


class FashionAutoencoder(MNISTAutoencoder):
    """Fashion-MNIST with the K-BFGS paper's MNIST auto-encoder 784-1000-500-250-30 mirrored.

    Example:
        >>> FashionAutoencoder().loss_scale
        784.0
    """

    name = "fashionautoencoder"
    dataset = "fashion-mnist"
    summary = ("Fashion-MNIST, AE 784-1000-500-250-30 mirrored ReLU (K-BFGS), sigmoid CE summed "
               "over pixels")
    target_loss = 240.0


class FashionCNN(MNISTCNN):
    """Fashion-MNIST, ResNet-8 (width 16, BatchNorm).

    Example:
        >>> FashionCNN().batch_size
        128
    """

    name = "fashioncnn"
    dataset = "fashion-mnist"
    summary = "Fashion-MNIST 1x28x28, ResNet-8 width 16 with BatchNorm, standardised, cross-entropy"
    target_loss = 0.35

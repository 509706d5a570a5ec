"""The benchmark-problem interface: :class:`Problem`, :class:`Dataset`, :class:`BatchStream`.

A problem fixes everything that must be identical for every optimizer of a
comparison: the data (generated or loaded deterministically), the model
architecture and its initialisation (from a seed), the loss, the mini-batch
size and the order in which mini-batches are drawn (from a seed).

Loss convention: the loss handed to optimizers is a stock torch loss module
(``MSELoss``, ``CrossEntropyLoss`` or ``BCEWithLogitsLoss``, all with
``reduction="mean"``) so that every backend, BackPACK-based ones included,
understands it. Recorded losses are multiplied by :attr:`Problem.loss_scale`;
for the auto-encoders this is the number of pixels ``D``, so reported values
follow the K-BFGS paper: sigmoid cross-entropy *summed over pixels*, *mean
over the batch*, ``L = (1/B) Σ_b Σ_d ℓ(x̂_bd, x_bd) = D · mean``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

__all__ = ["BatchStream", "Dataset", "Problem"]


@dataclass(frozen=True)
class Dataset:
    """Train and test tensors of a problem (inputs ``x``, targets ``y``).

    Example:
        >>> d = Dataset(torch.zeros(4, 2), torch.zeros(4), torch.zeros(1, 2), torch.zeros(1))
        >>> d.n_train, d.n_test
        (4, 1)
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    @property
    def n_train(self) -> int:
        """Number of training examples."""
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test examples."""
        return int(self.x_test.shape[0])

    def to(self, device: str | torch.device, dtype: torch.dtype) -> Dataset:
        """Move to ``device``; floating tensors are cast to ``dtype`` (class labels stay int)."""

        def cast(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)

        return Dataset(*(cast(t) for t in (self.x_train, self.y_train, self.x_test, self.y_test)))


class BatchStream:
    """Endless seeded mini-batch stream: a fresh random permutation every epoch.

    Epoch ``e`` visits the training set in the order ``randperm(n)`` drawn
    from a :class:`torch.Generator` seeded with ``seed``; the last incomplete
    batch of an epoch is dropped so every batch has ``batch_size`` rows.

    Args:
        x: Inputs, first dimension = examples.
        y: Targets.
        batch_size: Rows per batch (clipped to ``n``).
        seed: Seed of the order.

    Example:
        >>> s = BatchStream(torch.arange(6.0), torch.arange(6), 2, seed=0)
        >>> a = [b[1].tolist() for b in (next(s), next(s))]
        >>> s2 = BatchStream(torch.arange(6.0), torch.arange(6), 2, seed=0)
        >>> a == [b[1].tolist() for b in (next(s2), next(s2))]
        True
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, seed: int) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self.x, self.y = x, y
        self.n = int(x.shape[0])
        self.batch_size = min(batch_size, self.n)
        self.generator = torch.Generator().manual_seed(int(seed))
        self._order: list[Tensor] = []

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        if not self._order:
            perm = torch.randperm(self.n, generator=self.generator)
            k = self.n // self.batch_size
            self._order = list(perm[: k * self.batch_size].view(k, self.batch_size).unbind(0))
            self._order.reverse()
        idx = self._order.pop().to(self.x.device)
        return self.x[idx], self.y[idx]


class Problem:
    """Base class of benchmark problems (registered in the ``curvlab.problems`` group).

    Subclasses set the class attributes and implement :meth:`load_data`,
    :meth:`build_model` and :meth:`loss_fn`.

    Args:
        small: Use the reduced variant (smaller model/data) for CI, where a
            problem has one.
        data_dir: Folder with data files, for problems that read them.

    Attributes:
        name: Registry name.
        summary: One-line description.
        task: ``"classification"`` (accuracy is reported), ``"regression"``
            or ``"autoencoder"``.
        batch_size: Mini-batch size.
        target_loss: Default loss target for time-to-target (reported scale).
        loss_scale: Factor from the optimised loss to the reported loss.
        optimum: Known optimal loss (reported scale), if any.

    Example:
        >>> from curvlab.harness.problems import load_problem
        >>> p = load_problem("quadratic")
        >>> model = p.init_model(seed=3)
        >>> torch.equal(model[0].weight, p.init_model(seed=3)[0].weight)
        True
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    task: ClassVar[str] = "classification"
    batch_size: ClassVar[int] = 128
    target_loss: ClassVar[float] = 0.0
    loss_scale: ClassVar[float] = 1.0
    optimum: ClassVar[float | None] = None

    def __init__(self, *, small: bool = False, data_dir: str | None = None) -> None:
        self.small = bool(small)
        self.data_dir = data_dir

    def options(self) -> dict[str, Any]:
        """The options that define this problem instance (part of the run hash)."""
        return {"small": self.small, "data_dir": self.data_dir}

    def load_data(self) -> Dataset:
        """Return the (deterministic) train/test data."""
        raise NotImplementedError

    def build_model(self) -> nn.Sequential:
        """Build the network (parameters drawn from torch's global RNG)."""
        raise NotImplementedError

    def loss_fn(self) -> nn.Module:
        """The loss module handed to the optimizer."""
        raise NotImplementedError

    def init_model(self, seed: int) -> nn.Sequential:
        """Build the model with parameters initialised from ``seed`` (global RNG untouched)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return self.build_model()

    def describe(self) -> str:
        """One line: name, summary, batch size and target."""
        return f"{self.name}: {self.summary} (batch {self.batch_size}, target {self.target_loss:g})"

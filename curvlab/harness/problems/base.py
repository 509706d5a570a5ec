"""The benchmark-problem interface: :class:`Problem`, :class:`Dataset`, :class:`BatchStream`.

A problem fixes everything that must be identical for every optimizer of a
comparison: the data (generated or loaded deterministically) and its
train / validation / test split, the model architecture and its
initialisation (from a seed), the loss, the mini-batch sizes and the order
in which mini-batches are drawn (from a seed).

Loss convention: the loss handed to optimizers is a stock torch loss module
(``MSELoss``, ``CrossEntropyLoss`` or ``BCEWithLogitsLoss``, all with
``reduction="mean"``) so that every backend, BackPACK-based ones included,
understands it. Recorded losses are multiplied by :attr:`Problem.loss_scale`;
for the auto-encoders this is the number of pixels ``D``, so reported values
follow the K-BFGS paper: sigmoid cross-entropy *summed over pixels*, *mean
over the batch*, ``L = (1/B) Σ_b Σ_d ℓ(x̂_bd, x_bd) = D · mean``.

Splits: the *test* set is the dataset's own (MNIST's ``t10k`` files) or a
fixed part of it; the *validation* set is carved out of the training set by
:meth:`Dataset.split_validation` with the problem's ``split_seed`` (a
problem option, default 0, identical for every optimizer and every run
seed of a comparison): ``n_val = min(5000, round(0.1 · n))`` rows of the
``n`` training rows by default (:meth:`Problem.validation_size`), the rows
``numpy.random.RandomState(split_seed).permutation(n)[:n_val]``. Input
statistics (standardisation) are computed on the remaining training rows
only.

Evaluation: during training the harness evaluates the training loss on a
fixed subset of :attr:`Problem.eval_size` training rows
(:meth:`Problem.evaluation_subset`), the validation loss on the whole
validation set, and everything on the full sets at the end.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from curvlab.harness.data import DataFile, fingerprint

__all__ = ["BatchStream", "Dataset", "Evaluation", "Problem"]


def _rows(t: Tensor | None) -> int:
    return 0 if t is None else int(t.shape[0])


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train, validation and test tensors of a problem (inputs ``x``, targets ``y``).

    ``Dataset(x_train, y_train, x_test, y_test)`` (no validation split yet)
    still works; :meth:`split_validation` carves one out of the training set.

    Attributes:
        x_train, y_train: Training rows (validation rows excluded once split).
        x_test, y_test: Test rows.
        x_val, y_val: Validation rows, or ``None`` before the split.
        sources: The files read, with their SHA-256 (empty for generated data).
        meta: Facts about how the data were made (JSON-ready), e.g. the text
            corpus's file list or the standardisation constants.

    Raises:
        ValueError: only one of ``x_val``/``y_val`` given, or inputs and
            targets with different numbers of rows.

    Example:
        >>> d = Dataset(torch.zeros(4, 2), torch.zeros(4), torch.zeros(1, 2), torch.zeros(1))
        >>> d.n_train, d.n_val, d.n_test
        (4, 0, 1)
        >>> d.split_validation(1, seed=0).n_train
        3
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    x_val: Tensor | None = None
    y_val: Tensor | None = None
    sources: tuple[DataFile, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.x_val is None) != (self.y_val is None):
            raise ValueError("x_val and y_val must be given together")
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x is not None and _rows(x) != _rows(y):
                raise ValueError(f"x_{split} has {_rows(x)} rows but y_{split} has {_rows(y)}")

    @property
    def n_train(self) -> int:
        """Number of training examples."""
        return _rows(self.x_train)

    @property
    def n_val(self) -> int:
        """Number of validation examples (0 before the split)."""
        return _rows(self.x_val)

    @property
    def n_test(self) -> int:
        """Number of test examples."""
        return _rows(self.x_test)

    @property
    def has_validation(self) -> bool:
        """Whether the validation split exists."""
        return self.x_val is not None

    def to(self, device: str | torch.device, dtype: torch.dtype) -> Dataset:
        """Move to ``device``; floating tensors are cast to ``dtype`` (class labels, tokens stay int)."""

        def cast(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)

        return replace(self, **{f"{x}_{s}": cast(getattr(self, f"{x}_{s}"))
                                for x in "xy" for s in ("train", "val", "test")})

    def split_validation(self, size: int, seed: int) -> Dataset:
        """Move ``size`` seeded rows of the training set into the validation set.

        The validation rows are ``numpy.random.RandomState(seed).permutation(n)[:size]``
        (``n = n_train``), the training rows the rest; both keep their original
        order. ``RandomState`` streams are frozen across NumPy versions, so the
        split is the same on every machine.

        Args:
            size: Validation rows, ``1 ≤ size < n_train``.
            seed: Split seed (``≥ 0``).

        Returns:
            A new :class:`Dataset` (``meta["split"]`` records size and seed).

        Raises:
            ValueError: a validation split exists already, or ``size``/``seed``
                out of range.

        Example:
            >>> d = Dataset(torch.arange(10.0), torch.arange(10), torch.zeros(1), torch.zeros(1))
            >>> s = d.split_validation(3, seed=0)
            >>> sorted(s.x_val.tolist() + s.x_train.tolist()) == d.x_train.tolist()
            True
        """
        if self.has_validation:
            raise ValueError("this Dataset has a validation split already")
        n = self.n_train
        if not 1 <= size < n:
            raise ValueError(f"validation size must be in [1, {n - 1}] (n_train = {n}), got {size}")
        if seed < 0:
            raise ValueError(f"split seed must be >= 0, got {seed}")
        perm = np.random.RandomState(seed).permutation(n)
        val = torch.as_tensor(np.sort(perm[:size]), device=self.x_train.device)
        train = torch.as_tensor(np.sort(perm[size:]), device=self.x_train.device)
        meta = {**self.meta, "split": {"validation_size": size, "split_seed": seed}}
        return replace(self, x_train=self.x_train[train], y_train=self.y_train[train],
                       x_val=self.x_train[val], y_val=self.y_train[val], meta=meta)


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

    def state_dict(self) -> dict[str, Any]:
        """The position in the stream: generator state and the batches left in this epoch.

        Example:
            >>> s = BatchStream(torch.arange(6.0), torch.arange(6), 2, seed=0)
            >>> _ = next(s); state = s.state_dict(); a = next(s)[1].tolist()
            >>> s.load_state_dict(state); a == next(s)[1].tolist()
            True
        """
        return {"generator": self.generator.get_state(),
                "order": [t.clone() for t in self._order], "batch_size": self.batch_size,
                "n": self.n}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict` of a stream over the same data.

        Raises:
            ValueError: the state belongs to a stream of another size or batch size.
        """
        if state["n"] != self.n or state["batch_size"] != self.batch_size:
            raise ValueError(f"batch-stream state of {state['n']} rows in batches of "
                             f"{state['batch_size']} does not fit this stream ({self.n} rows, "
                             f"batches of {self.batch_size})")
        self.generator.set_state(state["generator"])
        self._order = [t.clone() for t in state["order"]]


@dataclass(frozen=True)
class Evaluation:
    """Result of :meth:`Problem.evaluate`: mean loss (reported scale) and accuracy.

    Attributes:
        loss: Mean loss × :attr:`Problem.loss_scale`.
        accuracy: Fraction of target entries predicted right (argmax over
            dimension 1 of the output) for classification problems, else ``None``.
        n: Rows evaluated.
    """

    loss: float
    accuracy: float | None
    n: int


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


class Problem:
    """Base class of benchmark problems (registered in the ``curvlab.problems`` group).

    Subclasses set the class attributes and implement :meth:`load_data`,
    :meth:`build_model` and :meth:`loss_fn`. The harness calls :meth:`data`
    (which adds the validation split when :meth:`load_data` has none).

    Args:
        small: Use the reduced variant (smaller model/data) for CI, where a
            problem has one.
        data_dir: Folder (or file) with data, for problems that read it; see
            :mod:`curvlab.harness.data` for the search order.
        batch_size: Mini-batch size; ``None``: the problem's
            (:attr:`batch_size`, :attr:`small_batch_size` for ``small``).
        fresh_batch_size: Size of the separate mini-batches some optimizers
            draw (``closure(fresh=True)``, GroupedNewton's paper uses 1000);
            ``None``: equal to ``batch_size``.
        split_seed: Seed of the train/validation split (``≥ 0``); the same
            for every optimizer and run seed of a comparison.
        eval_size: Training rows of the evaluation subset used during
            training (:meth:`evaluation_subset`): ``None`` for the problem's
            default (:attr:`default_eval_size`, at most the training set),
            an integer ``1 ≤ eval_size ≤ n_train``, or ``"full"``.

    Raises:
        ValueError: an option outside its range (names it and the range).

    Attributes:
        name: Registry name.
        summary: One-line description.
        dataset: Name of the data source in :data:`curvlab.harness.data.DATASETS`.
        task: ``"classification"`` (accuracy is reported), ``"regression"``
            or ``"autoencoder"``.
        batch_size: Mini-batch size (class: the default; instance: in effect).
        small_batch_size: Default batch size of the ``small`` variant (``None``: ``batch_size``).
        fresh_batch_size: In effect on an instance (class: ``None``).
        default_eval_size: Default size of the training-loss evaluation subset
            (``None``: the whole training set).
        default_eval_every: Default evaluation period of a run in steps
            (the harness's ``--eval-every``): one evaluation (subset + full
            validation set) should cost a small fraction of the steps between
            two evaluations.
        eval_batch_size: Rows per forward pass when evaluating (memory bound).
        target_loss: Default validation-loss target for time-to-target and the
            time-to-target selection (reported scale).
        loss_scale: Factor from the optimised loss to the reported loss.
        optimum: Known optimal loss (reported scale), if any.

    Example:
        >>> from curvlab.harness.problems import load_problem
        >>> p = load_problem("quadratic")
        >>> model = p.init_model(seed=3)
        >>> torch.equal(model[0].weight, p.init_model(seed=3)[0].weight)
        True
        >>> d = p.data()
        >>> d.n_train, d.n_val, d.n_test, p.options()["batch_size"]
        (1843, 205, 512, 256)
        >>> load_problem("quadratic", batch_size=0)
        Traceback (most recent call last):
        ...
        ValueError: batch_size must be an integer >= 1, got 0
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    dataset: ClassVar[str] = ""
    task: ClassVar[str] = "classification"
    batch_size: int = 128
    small_batch_size: ClassVar[int | None] = None
    fresh_batch_size: int | None = None
    default_eval_size: ClassVar[int | None] = None
    default_eval_every: ClassVar[int] = 25
    eval_batch_size: ClassVar[int] = 1024
    validation_fraction: ClassVar[float] = 0.1
    validation_max: ClassVar[int] = 5000
    target_loss: ClassVar[float] = 0.0
    loss_scale: ClassVar[float] = 1.0
    optimum: ClassVar[float | None] = None

    def __init__(self, *, small: bool = False, data_dir: str | None = None,
                 batch_size: int | None = None, fresh_batch_size: int | None = None,
                 split_seed: int = 0, eval_size: int | str | None = None) -> None:
        self.small = bool(small)
        self.data_dir = None if data_dir is None else str(data_dir)
        default = type(self).small_batch_size if self.small else None
        self.batch_size = (_positive_int("batch_size", batch_size) if batch_size is not None
                           else default or type(self).batch_size)
        self.fresh_batch_size = (self.batch_size if fresh_batch_size is None
                                 else _positive_int("fresh_batch_size", fresh_batch_size))
        if isinstance(split_seed, bool) or not isinstance(split_seed, (int, np.integer)) or split_seed < 0:
            raise ValueError(f"split_seed must be an integer >= 0, got {split_seed!r}")
        self.split_seed = int(split_seed)
        if eval_size is not None and eval_size != "full":
            if isinstance(eval_size, bool) or not isinstance(eval_size, (int, np.integer)) or eval_size < 1:
                raise ValueError(f"eval_size must be an integer >= 1 or 'full', got {eval_size!r}")
            eval_size = int(eval_size)
        self.eval_size: int | str | None = eval_size
        # a size equal to the default is not an explicit choice: options() reports the sizes in
        # effect, and load_problem(name, **p.options()) must rebuild p (a default above the
        # training rows is clipped, an explicit one refused)
        self._explicit = {
            "batch_size": batch_size is not None and batch_size != (default or type(self).batch_size),
            "fresh_batch_size": fresh_batch_size is not None and fresh_batch_size != self.batch_size,
        }

    def options(self) -> dict[str, Any]:
        """The options that define this problem instance (part of the run hash).

        ``load_problem(name, **p.options())`` rebuilds an identical instance;
        batch sizes are the values in effect, ``eval_size`` as given.
        """
        return {"small": self.small, "data_dir": self.data_dir, "batch_size": self.batch_size,
                "fresh_batch_size": self.fresh_batch_size, "split_seed": self.split_seed,
                "eval_size": self.eval_size}

    # --------------------------------------------------------------- data
    def load_data(self) -> Dataset:
        """Return the deterministic train/test data (validation optional; see :meth:`data`)."""
        raise NotImplementedError

    def validation_size(self, n_train: int) -> int:
        """Validation rows carved from ``n_train``: ``min(validation_max, round(validation_fraction · n))``, ≥ 1."""
        return min(self.validation_max, max(1, round(self.validation_fraction * n_train)))

    def with_validation(self, data: Dataset) -> Dataset:
        """``data`` with the documented validation split (unchanged if it has one)."""
        if data.has_validation:
            return data
        return data.split_validation(self.validation_size(data.n_train), self.split_seed)

    def data(self) -> Dataset:
        """The data the harness trains on: :meth:`load_data` plus the validation split.

        Raises:
            ValueError: an explicit ``batch_size``, ``fresh_batch_size`` or
                ``eval_size`` larger than the training set. (A class default
                larger than the training set of a third-party problem is
                clipped by :class:`BatchStream`, as before.)
            curvlab.harness.data.DataNotFoundError: a data file is missing.
            curvlab.harness.data.DataCorruptError: a data file is corrupt.
        """
        data = self.with_validation(self.load_data())
        n = data.n_train
        for opt in ("batch_size", "fresh_batch_size"):
            if self._explicit[opt] and getattr(self, opt) > n:
                raise ValueError(f"{opt} must be in [1, {n}] (the training rows of "
                                 f"{self.name}), got {getattr(self, opt)}")
        if isinstance(self.eval_size, int) and self.eval_size > n:
            raise ValueError(f"eval_size must be in [1, {n}] (the training rows of {self.name}) "
                             f"or 'full', got {self.eval_size}")
        return data

    def resolved_eval_size(self, n_train: int) -> int:
        """Rows of the training-loss evaluation subset for a training set of ``n_train`` rows."""
        if self.eval_size == "full":
            return n_train
        if isinstance(self.eval_size, int):
            return min(self.eval_size, n_train)
        default = type(self).default_eval_size
        return n_train if default is None else min(default, n_train)

    def evaluation_subset(self, data: Dataset) -> tuple[Tensor, Tensor]:
        """The fixed training rows on which the harness evaluates the training loss during training.

        The rows ``sort(RandomState(split_seed + 1).permutation(n)[:k])`` with
        ``k = resolved_eval_size(n)``; all rows (the tensors themselves) when
        ``k = n``. Independent of the run seed, so identical for every
        optimizer and seed.

        Example:
            >>> from curvlab.harness.problems import load_problem
            >>> p = load_problem("quadratic", eval_size=100)
            >>> x, y = p.evaluation_subset(p.data())
            >>> x.shape[0], y.shape[0]
            (100, 100)
        """
        n = data.n_train
        k = self.resolved_eval_size(n)
        if k >= n:
            return data.x_train, data.y_train
        perm = np.random.RandomState(self.split_seed + 1).permutation(n)
        idx = torch.as_tensor(np.sort(perm[:k]), device=data.x_train.device)
        return data.x_train[idx], data.y_train[idx]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, x: Tensor, y: Tensor,
                 loss_fn: nn.Module | None = None) -> Evaluation:
        """Mean loss (reported scale) and, for classification, accuracy of ``model`` on ``(x, y)``.

        Runs in chunks of :attr:`eval_batch_size` rows with the model in eval
        mode (its previous mode is restored). The chunk losses are weighted by
        their rows, which equals the mean over all target entries because
        every row has the same number of them. Accuracy counts target
        entries: ``argmax`` over dimension 1 of the output (classes; for the
        text problem, bytes at every position) equals the target.

        Example:
            >>> from curvlab.harness.problems import load_problem
            >>> p = load_problem("digits-mlp")
            >>> d = p.data()
            >>> e = p.evaluate(p.init_model(0), d.x_val, d.y_val)
            >>> e.n == d.n_val, 0.0 <= e.accuracy <= 1.0
            (True, True)
        """
        loss_fn = self.loss_fn() if loss_fn is None else loss_fn
        was_training = model.training
        model.eval()
        try:
            total, correct, entries = 0.0, 0, 0
            n = int(x.shape[0])
            for i in range(0, n, self.eval_batch_size):
                xb, yb = x[i : i + self.eval_batch_size], y[i : i + self.eval_batch_size]
                out = model(xb)
                total += float(loss_fn(out, yb)) * int(xb.shape[0])
                if self.task == "classification":
                    correct += int((out.argmax(dim=1) == yb).sum())
                    entries += int(yb.numel())
        finally:
            model.train(was_training)
        acc = correct / entries if self.task == "classification" and entries else None
        return Evaluation(total / max(n, 1) * self.loss_scale, acc, n)

    def provenance(self, data: Dataset | None = None) -> dict[str, Any]:
        """What a run should record about its data (JSON-ready).

        Keys: ``problem``, ``dataset``, ``options``, ``files`` (path, SHA-256
        and size of every file read), ``fingerprint`` (one SHA-256 over the
        file names and checksums, ``None`` for generated data), ``sizes``
        (train, val, test and eval rows) and ``meta`` (see :class:`Dataset`).

        Args:
            data: The result of :meth:`data` (loaded when omitted).

        Example:
            >>> from curvlab.harness.problems import load_problem
            >>> prov = load_problem("digits-mlp").provenance()
            >>> prov["sizes"], prov["fingerprint"]
            ({'train': 1294, 'val': 144, 'test': 359, 'eval': 1294}, None)
        """
        data = self.data() if data is None else data
        return {
            "problem": self.name,
            "dataset": self.dataset,
            "options": self.options(),
            "files": [f.as_dict() for f in data.sources],
            "fingerprint": fingerprint(data.sources) if data.sources else None,
            "sizes": {"train": data.n_train, "val": data.n_val, "test": data.n_test,
                      "eval": self.resolved_eval_size(data.n_train)},
            "meta": dict(data.meta),
        }

    # -------------------------------------------------------------- model
    def build_model(self) -> nn.Module:
        """Build the network (parameters drawn from torch's global RNG)."""
        raise NotImplementedError

    def loss_fn(self) -> nn.Module:
        """The loss module handed to the optimizer."""
        raise NotImplementedError

    def init_model(self, seed: int) -> nn.Module:
        """Build the model with parameters initialised from ``seed`` (global RNG untouched)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return self.build_model()

    def describe(self) -> str:
        """One line: name, summary, batch sizes and target."""
        fresh = (f", fresh batch {self.fresh_batch_size}"
                 if self.fresh_batch_size != self.batch_size else "")
        return (f"{self.name}: {self.summary} (batch {self.batch_size}{fresh}, "
                f"target {self.target_loss:g})")

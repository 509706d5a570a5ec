"""The backend case table: small models × losses × reductions, as data.

Every Kronecker backend (K-FAC, FOOF, K-BFGS) checks its maths against the
dense float64 oracles of :mod:`curvlab.reference` on every row of this
table, with one test body per property: a failure reads
``test_factors_match_reference[autoencoder-bce-sum]``. A plugin author runs
the same rows on their own backend::

    import pytest
    from curvlab.testing.cases import backend_cases

    @pytest.mark.parametrize("case", backend_cases())
    def test_my_backend(case):
        problem = case.instantiate(batch=4)
        ...

Rows are built with the harness's own model builders where they are small
enough for dense oracles (:mod:`curvlab.harness.problems`: the quadratic's
linear model, the teacher-student MLP, the mirrored auto-encoder, the
digits MLP and CNN), plus a few tiny hand-made variants that exercise one
feature each (no bias, an in-place activation, a frozen bias). A model row
says which optimizers refuse it at construction and with which message
(:attr:`ModelCase.refused`), so a refusal is an expected, checked outcome
and never a silently skipped test. Adding a row (a tiny GPT, a ResNet block
with BatchNorm, tied weights, ...) is adding a :class:`ModelCase` to
:data:`MODELS`: every backend test picks it up.

Example:
    >>> cases = backend_cases()
    >>> cases[0].id
    'linear-mse-mean'
    >>> p = cases[0].instantiate(batch=3)
    >>> tuple(p.inputs.shape), p.model[0].weight.dtype
    ((3, 20), torch.float64)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from curvlab.harness.problems import DigitsCNN, DigitsMLP, Quadratic, TeacherStudent
from curvlab.harness.problems.digits import mirrored_autoencoder

__all__ = [
    "LOSSES",
    "MODELS",
    "REDUCTIONS",
    "BackendCase",
    "CaseProblem",
    "LossCase",
    "ModelCase",
    "backend_cases",
    "case_ids",
    "describe",
]

#: Loss reductions every loss row is run with.
REDUCTIONS = ("mean", "sum")


@dataclass(frozen=True)
class ModelCase:
    """One model row.

    Attributes:
        name: Readable id (part of the test id).
        build: Builds the model (parameters from torch's global RNG; the
            table seeds it).
        input_shape: Shape of one example's input.
        outputs: Entries per example of the model output (the loss input is
            ``(N, outputs)``).
        vocab: Integer inputs in ``[0, vocab)`` instead of Gaussian ones.
        refused: Optimizer name → text its construction-time
            :class:`ValueError` must contain (e.g. ``{"kbfgs": "Conv2d at model.0"}``).
        note: What the row exercises.
    """

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    outputs: int
    vocab: int | None = None
    refused: Mapping[str, str] = field(default_factory=dict)
    note: str = ""

    def inputs(self, n: int, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
        """A batch of ``n`` inputs drawn from ``generator``."""
        if self.vocab is not None:
            return torch.randint(0, self.vocab, (n, *self.input_shape), generator=generator)
        return torch.randn(n, *self.input_shape, generator=generator, dtype=dtype)


@dataclass(frozen=True)
class LossCase:
    """One loss row.

    Attributes:
        name: Readable id.
        build: ``reduction`` → the loss module.
        targets: ``(outputs (N, K), generator)`` → targets for the batch.
        min_outputs: Fewest output entries the loss makes sense for
            (cross-entropy needs two classes).
    """

    name: str
    build: Callable[[str], nn.Module]
    targets: Callable[[Tensor, torch.Generator], Tensor]
    min_outputs: int = 1


@dataclass(frozen=True)
class CaseProblem:
    """An instantiated case: model, loss module and one batch (all in one dtype).

    Attributes:
        model: The seeded model.
        loss_fn: The loss module.
        inputs: Batch inputs.
        targets: Batch targets.
    """

    model: nn.Module
    loss_fn: nn.Module
    inputs: Tensor
    targets: Tensor


@dataclass(frozen=True)
class BackendCase:
    """One row of the table: a model, a loss and a reduction.

    Attributes:
        model: The :class:`ModelCase`.
        loss: The :class:`LossCase`.
        reduction: ``"mean"`` or ``"sum"``.
    """

    model: ModelCase
    loss: LossCase
    reduction: str

    @property
    def id(self) -> str:
        """``<model>-<loss>-<reduction>``, e.g. ``"cnn-ce-sum"``."""
        return f"{self.model.name}-{self.loss.name}-{self.reduction}"

    def refusal(self, optimizer: str) -> str | None:
        """The message ``optimizer`` must refuse this model with (``None``: it must accept it)."""
        return self.model.refused.get(optimizer)

    def instantiate(self, seed: int = 0, *, batch: int = 6,
                    dtype: torch.dtype = torch.float64) -> CaseProblem:
        """Build the seeded model (global RNG untouched), the loss and one batch.

        Args:
            seed: Seed of the model's initialisation and of the batch.
            batch: Examples in the batch.
            dtype: Floating dtype of the model and the inputs.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.model.build().to(dtype)
        gen = torch.Generator().manual_seed(seed + 1)
        x = self.model.inputs(batch, gen, dtype)
        with torch.no_grad():
            out = model(x)
        y = self.loss.targets(out.reshape(out.shape[0], -1), gen)
        return CaseProblem(model, self.loss.build(self.reduction), x, y)


def _frozen_first_bias(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        model = build()
        model[0].bias.requires_grad_(False)
        return model

    return make


def _tiny(bias: bool = True, inplace: bool = False, act: type[nn.Module] = nn.Tanh) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        activation = nn.ReLU(inplace=True) if inplace else act()
        return nn.Sequential(nn.Linear(5, 4, bias=bias), activation, nn.Linear(4, 3, bias=bias))

    return make


_CONV = "Conv2d at model.0"

#: The model rows (see the module docstring).
MODELS: tuple[ModelCase, ...] = (
    ModelCase("linear", Quadratic().build_model, (Quadratic.dim,), 1,
              note="the quadratic problem's Linear(20, 1)"),
    ModelCase("teacher-student", TeacherStudent().build_model, (16,), 1,
              note="tanh MLP 16-32-32-1 of the teacher-student problem"),
    ModelCase("autoencoder", lambda: mirrored_autoencoder([8, 4, 2]), (8,), 8,
              note="the harness's mirrored ReLU auto-encoder, 8-4-2-4-8"),
    ModelCase("digits-mlp", DigitsMLP().build_model, (64,), 10,
              note="the digits problem's ReLU MLP 64-128-64-10"),
    ModelCase("digits-cnn", DigitsCNN().build_model, (1, 8, 8), 10,
              note="the digits problem's CNN (two Conv2d with max-pooling, Linear head)"),
    ModelCase("no-bias", _tiny(bias=False), (5,), 3, note="Linear layers without bias"),
    ModelCase("inplace-relu", _tiny(inplace=True), (5,), 3,
              refused={"kfac": "in-place ReLU at model.1"},
              note="ReLU(inplace=True) after a preconditioned layer"),
    ModelCase("frozen-bias", _frozen_first_bias(_tiny()), (5,), 3,
              note="the first layer's bias has requires_grad=False"),
)

#: The loss rows.
LOSSES: tuple[LossCase, ...] = (
    LossCase("mse", lambda r: nn.MSELoss(reduction=r),
             lambda out, g: torch.randn(out.shape, generator=g, dtype=out.dtype)),
    LossCase("ce", lambda r: nn.CrossEntropyLoss(reduction=r),
             lambda out, g: torch.randint(0, out.shape[1], (out.shape[0],), generator=g),
             min_outputs=2),
    LossCase("bce", lambda r: nn.BCEWithLogitsLoss(reduction=r),
             lambda out, g: torch.rand(out.shape, generator=g, dtype=out.dtype)),
)


def backend_cases(
    models: Iterable[ModelCase] = MODELS,
    losses: Iterable[LossCase] = LOSSES,
    reductions: Sequence[str] = REDUCTIONS,
    *,
    where: Callable[[BackendCase], bool] | None = None,
) -> list[BackendCase]:
    """The table: every model × every loss it fits × every reduction (optionally filtered).

    Args:
        models: Model rows (default :data:`MODELS`).
        losses: Loss rows (default :data:`LOSSES`).
        reductions: Reductions (default :data:`REDUCTIONS`).
        where: Keep only the cases it accepts.

    Returns:
        The cases, ordered model-major; their :attr:`BackendCase.id` are unique.

    Example:
        >>> [c.id for c in backend_cases(where=lambda c: c.model.name == "linear")]
        ['linear-mse-mean', 'linear-mse-sum', 'linear-bce-mean', 'linear-bce-sum']
    """
    losses = list(losses)
    out = [
        BackendCase(m, loss, r)
        for m in models for loss in losses if m.outputs >= loss.min_outputs for r in reductions
    ]
    return [c for c in out if where is None or where(c)]


def case_ids(cases: Iterable[BackendCase]) -> list[str]:
    """The readable ids, for ``pytest.mark.parametrize(..., ids=case_ids(cases))``."""
    return [c.id for c in cases]


def describe(cases: Iterable[BackendCase]) -> list[dict[str, Any]]:
    """One row per case (id, model note, refusals) for reports and docs.

    Example:
        >>> describe(backend_cases()[:1])[0]["id"]
        'linear-mse-mean'
    """
    return [{"id": c.id, "model": c.model.note, "refused": dict(c.model.refused)} for c in cases]

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
digits MLP and CNN), plus tiny hand-made models that exercise one feature
each (no bias, an in-place activation, a frozen bias) and the modern
architectures researchers study: a tiny GPT (token and position
``Embedding``, ``LayerNorm``, causal attention from ``nn.Linear``
projections, a GELU MLP; untied and nanoGPT's tied layout), a ResNet block
with ``BatchNorm`` and an in-place ReLU, one ``Linear`` shared by two calls,
``nn.MultiheadAttention``, and a ``Linear`` on ``(batch, seq, features)``
(:class:`TinyGPT`, :class:`ResNetBlockBN`, :class:`SharedLinear`,
:class:`AttentionPool`). A model row says which optimizers refuse it at
construction and with which message (:attr:`ModelCase.refused`), so a
refusal is an expected, checked outcome and never a silently skipped test,
and which update each parameter gets from the layer-wise backends
(:attr:`ModelCase.coverage`, the expected ``opt.coverage().kinds()``).
Adding a row is adding a :class:`ModelCase` to :data:`MODELS`: every
backend test picks it up.

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
from curvlab.harness.problems.transformer import Block

__all__ = [
    "LOSSES",
    "MODELS",
    "REDUCTIONS",
    "AttentionPool",
    "BackendCase",
    "CaseProblem",
    "LossCase",
    "ModelCase",
    "ResNetBlockBN",
    "SharedLinear",
    "TinyGPT",
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
        outputs: Entries per row of the loss input (the model returns
            ``(rows, outputs)``; rows are the examples, or the examples'
            tokens for a language model).
        vocab: Integer inputs in ``[0, vocab)`` instead of Gaussian ones.
        refused: Optimizer name → text of the :class:`ValueError` it raises at
            construction or, for what only the data show (a layer called twice
            per pass), at its first step (e.g. ``{"kbfgs": "Conv2d at model.0"}``).
        pending: Optimizer name → why it neither handles nor refuses the row
            yet; its tests skip the row with that reason (an open item, visible
            in every test report, never a silent pass).
        coverage: Expected kind of every parameter for the layer-wise
            backends with their defaults (``kfac_approx="expand"``,
            ``fallback="adam"``): ``opt.coverage().kinds()`` of K-FAC and
            FOOF (empty: not stated).
        note: What the row exercises.
    """

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    outputs: int
    vocab: int | None = None
    refused: Mapping[str, str] = field(default_factory=dict)
    pending: Mapping[str, str] = field(default_factory=dict)
    coverage: Mapping[str, str] = field(default_factory=dict)
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

    def pending(self, optimizer: str) -> str | None:
        """Why ``optimizer``'s tests skip this row for now (``None``: they run it)."""
        return self.model.pending.get(optimizer)

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


#: natgrad's refusal of a model whose loss rows (tokens) are not its input rows (sequences)
_PER_TOKEN = "recomputes the model example by example and needs every tensor input with the batch"


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


class TinyGPT(nn.Module):
    """A one-block GPT (the harness's pre-norm :class:`~curvlab.harness.problems.transformer.Block`).

    Token embedding plus a position ``Embedding`` called on ``arange(T)``
    (nanoGPT's ``wpe``), the block (LayerNorm, causal attention from four
    ``nn.Linear`` projections, LayerNorm, GELU MLP), a final LayerNorm and an
    ``lm_head``; ``tied=True`` shares the token embedding with the head
    (nanoGPT's layout). Returns per-token logits ``(N·T, V)``.

    Example:
        >>> TinyGPT()(torch.zeros(2, 4, dtype=torch.long)).shape
        torch.Size([8, 11])
    """

    def __init__(self, vocab: int = 11, context: int = 4, dim: int = 8, heads: int = 2,
                 tied: bool = False) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.block = Block(dim, heads, context)
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        if tied:
            self.head.weight = self.tok.weight
        self.register_buffer("positions", torch.arange(context), persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits ``(N·T, V)`` of tokens ``(N, T)``."""
        h = self.tok(tokens) + self.pos(self.positions[: tokens.shape[1]])
        logits = self.head(self.ln_f(self.block(h)))
        return logits.reshape(-1, logits.shape[-1])


class ResNetBlockBN(nn.Module):
    """A bias-free conv stem with BatchNorm, one residual block, global pooling, a Linear head.

    ``y = ReLU(BN(conv(ReLU(BN(conv(h))))) + h)`` with ``h = BN(conv(x))`` and
    in-place ReLUs (BatchNorm in training mode: batch statistics).

    Example:
        >>> ResNetBlockBN()(torch.zeros(2, 1, 6, 6)).shape
        torch.Size([2, 3])
    """

    def __init__(self, channels: int = 3, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.head = nn.Linear(channels, classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, classes)`` of images ``(N, 1, H, W)``."""
        h = self.bn0(self.stem(x))
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(h)))))
        return self.head(self.relu(y + h).mean(dim=(2, 3)))


class SharedLinear(nn.Module):
    """One ``Linear(5, 5)`` called twice (tied weights in one role), then a head.

    Example:
        >>> SharedLinear()(torch.zeros(2, 5)).shape
        torch.Size([2, 3])
    """

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(5, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        """``head(tanh(shared(tanh(shared(x)))))``."""
        return self.head(torch.tanh(self.shared(torch.tanh(self.shared(x)))))


class AttentionPool(nn.Module):
    """``nn.MultiheadAttention`` self-attention over positions, mean-pooled, a Linear head.

    Example:
        >>> AttentionPool()(torch.zeros(2, 4, 3)).shape
        torch.Size([2, 3])
    """

    def __init__(self, dim: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(3, dim)
        self.mha = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, classes)`` of sequences ``(N, T, 3)``."""
        h = self.embed(x)
        a, _ = self.mha(h, h, h, need_weights=False)
        return self.head(a.mean(dim=1))


def _linear_3d() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3), nn.Flatten())


def _layers(*names: str, bias: bool = True) -> list[str]:
    return [f"{n}.{k}" for n in names for k in (("weight", "bias") if bias else ("weight",))]


_K, _U, _A, _F = "kronecker-expand", "unit-wise", "fallback-adam", "frozen"
_GPT_LINEARS = _layers("block.attn.query", "block.attn.key", "block.attn.value", "block.attn.out",
                       "block.fc", "block.proj")
_GPT_NORMS = _layers("block.ln1", "block.ln2", "ln_f")


def _gpt_coverage(tied: bool) -> dict[str, str]:
    out = {"tok.weight": _A if tied else _K, "pos.weight": _K}
    out.update({n: _K for n in _GPT_LINEARS})
    out.update({n: _U for n in _GPT_NORMS})
    if not tied:
        out["head.weight"] = _K
    return out


def _all(kind: str, *names: str) -> dict[str, str]:
    return {n: kind for n in names}


_CONV = "Conv2d at model.0"
_KBFGS_ND = ("K-BFGS's statistics of Linear layers on N-D inputs are not defined yet "
             "(issue 14, K-BFGS part): no oracle for them")

#: The model rows (see the module docstring).
MODELS: tuple[ModelCase, ...] = (
    ModelCase("linear", Quadratic().build_model, (Quadratic.dim,), 1,
              coverage=_all(_K, "0.weight", "0.bias"),
              note="the quadratic problem's Linear(20, 1)"),
    ModelCase("teacher-student", TeacherStudent().build_model, (16,), 1,
              coverage=_all(_K, *_layers("0", "2", "4")),
              note="tanh MLP 16-32-32-1 of the teacher-student problem"),
    ModelCase("autoencoder", lambda: mirrored_autoencoder([8, 4, 2]), (8,), 8,
              coverage=_all(_K, *_layers("0", "2", "3", "5")),
              note="the harness's mirrored ReLU auto-encoder, 8-4-2-4-8"),
    ModelCase("digits-mlp", DigitsMLP().build_model, (64,), 10,
              coverage=_all(_K, *_layers("0", "2", "4")),
              note="the digits problem's ReLU MLP 64-128-64-10"),
    ModelCase("digits-cnn", DigitsCNN().build_model, (1, 8, 8), 10,
              refused={"kbfgs": _CONV, "kbfgsl": _CONV},
              coverage=_all(_K, *_layers("0", "3", "7")),
              note="the digits problem's CNN (two Conv2d with max-pooling, Linear head)"),
    ModelCase("no-bias", _tiny(bias=False), (5,), 3, coverage=_all(_K, "0.weight", "2.weight"),
              note="Linear layers without bias"),
    ModelCase("inplace-relu", _tiny(inplace=True), (5,), 3,
              coverage=_all(_K, *_layers("0", "2")),
              note="ReLU(inplace=True) after a preconditioned layer"),
    ModelCase("frozen-bias", _frozen_first_bias(_tiny()), (5,), 3,
              coverage={"0.weight": _K, "0.bias": _F, "2.weight": _K, "2.bias": _K},
              note="the first layer's bias has requires_grad=False"),
    ModelCase("tiny-gpt", TinyGPT, (4,), 11, vocab=11,
              refused={"kbfgs": "Embedding at model.tok", "kbfgsl": "Embedding at model.tok",
                       "natgrad": _PER_TOKEN},
              coverage=_gpt_coverage(tied=False),
              note="a one-block GPT: token/position Embedding, LayerNorm, causal attention from "
                   "nn.Linear, GELU MLP, per-token logits"),
    ModelCase("tiny-gpt-tied", lambda: TinyGPT(tied=True), (4,), 11, vocab=11,
              refused={"kbfgs": "Embedding at model.tok", "kbfgsl": "Embedding at model.tok",
                       "natgrad": _PER_TOKEN},
              coverage=_gpt_coverage(tied=True),
              note="the same with nanoGPT's tied token embedding and lm_head (two roles: fallback)"),
    ModelCase("resnet-bn", ResNetBlockBN, (1, 6, 6), 3,
              refused={"kbfgs": "Conv2d at model.stem", "kbfgsl": "Conv2d at model.stem",
                       "natgrad": "cannot handle BatchNorm2d at model.bn0"},
              coverage={"stem.weight": _K, "conv1.weight": _K, "conv2.weight": _K,
                        **_all(_U, *_layers("bn0", "bn1", "bn2")), **_all(_K, *_layers("head"))},
              note="bias-free convolutions with BatchNorm, a residual block, in-place ReLU"),
    ModelCase("shared-linear", SharedLinear, (5,), 3,
              refused={"kbfgs": "model.shared ran twice", "kbfgsl": "model.shared ran twice"},
              coverage=_all(_K, *_layers("shared", "head")),
              note="one Linear called twice per forward pass (factors summed over both uses)"),
    ModelCase("mha", AttentionPool, (4, 3), 3,
              refused={"kbfgs": "MultiheadAttention at model.mha",
                       "kbfgsl": "MultiheadAttention at model.mha"},
              coverage={**_all(_K, *_layers("embed", "head")),
                        **_all(_A, "mha.in_proj_weight", "mha.in_proj_bias", "mha.out_proj.weight",
                               "mha.out_proj.bias")},
              note="nn.MultiheadAttention (fused projections called functionally: fallback)"),
    ModelCase("linear-3d", _linear_3d, (2, 5), 6, coverage=_all(_K, *_layers("0", "2")),
              pending={"kbfgs": _KBFGS_ND, "kbfgsl": _KBFGS_ND},
              note="Linear layers on (batch, seq, features) in an nn.Sequential"),
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
    return [{"id": c.id, "model": c.model.note, "refused": dict(c.model.refused),
             "pending": dict(c.model.pending)} for c in cases]

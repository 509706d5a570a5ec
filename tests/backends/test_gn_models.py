"""GroupedNewton treats parameters generically: it trains modern models at its defaults.

One test body over a case table (issue #14): a tiny GPT (Embedding, LayerNorm, causal
attention built from ``nn.Linear`` — its key bias has a mathematically zero gradient —,
head tied to the token embedding), a ResNet block with BatchNorm, convolution biases
right before BatchNorm (zero gradients again), frozen biases, an in-place ReLU, one layer
applied twice, and the harness's ``text-transformer`` and ``fashion-cnn`` problems in their
small variants. Each trains 20 steps with finite losses and a lower loss on a held-out batch
(evaluation mode, so BatchNorm's running statistics are what a user would evaluate with).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

import curvlab
from curvlab.harness.data import DataNotFoundError
from curvlab.harness.problems import BatchStream, load_problem
from curvlab_plugins.groupednewton import GroupedNewtonWarning

STEPS = 20


class CausalSelfAttention(nn.Module):
    """Single-head causal attention from four ``nn.Linear`` (nanoGPT layout)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        t = x.shape[1]
        scores = self.query(x) @ self.key(x).transpose(1, 2) / math.sqrt(x.shape[-1])
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        return self.out(scores.masked_fill(mask, float("-inf")).softmax(-1) @ self.value(x))


class TinyGPT(nn.Module):
    """Token + position embeddings, one pre-norm block, final LayerNorm, head tied to the embedding."""

    def __init__(self, vocab: int = 11, dim: int = 8, context: int = 6) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(context, dim)
        self.ln1, self.attn = nn.LayerNorm(dim), CausalSelfAttention(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.tok.weight  # tied: one Parameter in two modules

    def forward(self, idx: Tensor) -> Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        x = x + self.attn(self.ln1(x))
        x = x + self.mlp(self.ln2(x))
        return self.head(self.ln_f(x)).transpose(1, 2)  # (B, vocab, T) for cross-entropy


class ResidualBlock(nn.Module):
    """Conv-BN-ReLU-Conv-BN plus identity, ReLU; then pooling and a linear head."""

    def __init__(self, width: int = 4, conv_bias: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=conv_bias),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=conv_bias),
                                    nn.BatchNorm2d(width), nn.ReLU(),
                                    nn.Conv2d(width, width, 3, padding=1, bias=conv_bias),
                                    nn.BatchNorm2d(width))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3))

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        return self.head(torch.relu(h + self.branch(h)))


class SharedLayer(nn.Module):
    """One ``nn.Linear`` applied twice (shared weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.shared, self.out = nn.Linear(5, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.tanh(self.shared(torch.tanh(self.shared(torch.tanh(self.inp(x)))))))


def _mlp(inplace: bool = False, frozen_biases: bool = False) -> nn.Module:
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(inplace=inplace), nn.Linear(8, 8),
                          nn.ReLU(inplace=inplace), nn.Linear(8, 3))
    if frozen_biases:
        for m in model:
            if isinstance(m, nn.Linear):
                m.bias.requires_grad_(False)
    return model


@dataclass(frozen=True)
class Case:
    """A model and its data: ``sample(n, generator) -> (inputs, targets)``."""

    id: str
    model: Callable[[], nn.Module]
    sample: Callable[[int, torch.Generator], tuple[Tensor, Tensor]]
    batch: int = 32


def _tokens(n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    # a learnable rule: the next token is the current one plus one (mod 11)
    start = torch.randint(0, 11, (n, 1), generator=g)
    seq = (start + torch.arange(7)) % 11
    return seq[:, :-1], seq[:, 1:]


def _images(n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 1, 6, 6, generator=g) * 0.5
    x[:, :, :2, :] += (y == 0).float()[:, None, None, None]  # class-dependent bands
    x[:, :, 2:4, :] += (y == 1).float()[:, None, None, None]
    return x, y


def _vectors(n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    x = torch.randn(n, 5, generator=g)
    return x, (x[:, :3] * x[:, 1:4]).argmax(1)


CASES = [
    Case("tiny-gpt-tied-embedding", TinyGPT, _tokens),
    Case("resnet-block-batchnorm", ResidualBlock, _images),
    Case("conv-bias-before-batchnorm", lambda: ResidualBlock(conv_bias=True), _images),
    Case("frozen-biases", lambda: _mlp(frozen_biases=True), _vectors),
    Case("inplace-relu", lambda: _mlp(inplace=True), _vectors),
    Case("shared-layer", SharedLayer, _vectors),
]


def _train(model: nn.Module, loss_fn: nn.Module, batches, fresh, held_out) -> tuple[float, float, dict]:
    """Losses on ``held_out`` (evaluation mode) before and after STEPS default GroupedNewton steps."""
    def held_out_loss() -> float:
        model.eval()
        with torch.no_grad():
            value = float(loss_fn(model(held_out[0]), held_out[1]))
        model.train()
        return value

    before = held_out_loss()
    opt = curvlab.create("groupednewton", model, loss_fn)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GroupedNewtonWarning)
        for _ in range(STEPS):
            x, y = next(batches)
            loss = opt.step(curvlab.closure(model, loss_fn, x, y, batches=fresh))
            assert math.isfinite(float(loss.detach()))
    return before, held_out_loss(), opt.stats


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_trains_at_defaults(case):
    torch.manual_seed(0)
    model = case.model()
    g = torch.Generator().manual_seed(1)
    data = [case.sample(case.batch, g) for _ in range(8)]

    def stream(offset):
        k = offset
        while True:
            yield data[k % len(data)]
            k += 1

    before, after, stats = _train(model, nn.CrossEntropyLoss(), stream(0), stream(3),
                                  case.sample(256, g))
    assert stats["skipped_steps"] == 0
    assert stats["solve_failures"] < stats["tensor_computations"]
    assert after < before, (before, after)


HARNESS = [("text-transformer", 0.9), ("fashion-cnn", 1.0)]


@pytest.mark.slow  # ~10 s each on one thread; the tiny models above cover the same regressions
@pytest.mark.parametrize("name, factor", HARNESS, ids=[n for n, _ in HARNESS])
def test_trains_harness_problems(name, factor):
    """The harness's small transformer and ResNet-8 (BatchNorm): before the fix, every solve
    on the transformer failed (its attention key bias) and the model never moved."""
    try:
        problem = load_problem(name, small=True)
        data = problem.data()
    except DataNotFoundError as err:
        pytest.skip(f"{name}: data not installed ({err})")
    model, loss_fn = problem.init_model(0), problem.loss_fn()
    batches = BatchStream(data.x_train, data.y_train, problem.batch_size, 0)
    fresh = BatchStream(data.x_train, data.y_train, problem.batch_size, 1)
    held_out = data.x_val[:256], data.y_val[:256]
    before, after, stats = _train(model, loss_fn, batches, fresh, held_out)
    assert stats["solve_failures"] == 0 and stats["skipped_steps"] == 0
    assert after < factor * before, (before, after)

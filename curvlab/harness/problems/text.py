"""Next-byte prediction with a small transformer on the standard-library corpus (or any text).

Data: the corpus bytes (:mod:`curvlab.harness.problems.corpus`; ``small``:
its first 65,536 bytes) are cut into non-overlapping sequences of
``T + 1`` bytes (a trailing remainder is dropped); a sequence gives inputs
``x = s[:T]`` and targets ``y = s[1:]`` (int64, shapes ``(N, T)``). The
sequences are split at random, leak-free because they do not overlap: test
= the rows ``RandomState(split_seed + 2).permutation(N)[:round(0.05 N)]``,
validation = 5 % of the rest (``Problem.validation_size``), training = the
remainder.

Model: :class:`~curvlab.harness.problems.transformer.ByteTransformer` with
4 layers, ``d = 128``, 4 heads, context ``T = 128`` (``small``: 1 layer,
``d = 32``, 2 heads, ``T = 32``). Loss: mean next-byte cross-entropy in nats
(stock ``CrossEntropyLoss`` on logits ``(B, 256, T)`` against ``(B, T)``);
accuracy is the fraction of bytes predicted right. Divide a loss by
``ln 2`` for bits per byte. Loss target 2.3 nats: Adam (lr 3·10⁻³, seed 0)
passes the unigram plateau (≈ 2.9) after ~100 steps and is at 2.53 after
250 steps, still falling.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from curvlab.harness.problems.base import Dataset, Problem
from curvlab.harness.problems.corpus import load_corpus
from curvlab.harness.problems.transformer import ByteTransformer

__all__ = ["TextTransformer", "byte_sequences"]

SMALL_BYTES = 65536


def byte_sequences(data: bytes, length: int) -> torch.Tensor:
    """Non-overlapping windows of ``length`` bytes as an int64 tensor ``(len(data) // length, length)``.

    Raises:
        ValueError: fewer than ``2 · length`` bytes (no room for a split).

    Example:
        >>> byte_sequences(b"abcdefg", 3).tolist()
        [[97, 98, 99], [100, 101, 102]]
    """
    n = len(data) // length
    if n < 2:
        raise ValueError(f"the text has {len(data)} bytes; need at least {2 * length} "
                         f"(two sequences of {length})")
    arr = np.frombuffer(data, dtype=np.uint8, count=n * length).reshape(n, length)
    return torch.from_numpy(arr.astype(np.int64))


class TextTransformer(Problem):
    """Byte-level transformer language model (see the module docstring).

    Example:
        >>> p = TextTransformer(small=True)
        >>> d = p.data()
        >>> d.x_train.shape[1], p.init_model(0)(d.x_val[:2]).shape
        (32, torch.Size([2, 256, 32]))
    """

    name = "texttransformer"
    summary = ("byte-level transformer LM (4 layers, d 128, 4 heads, context 128) on the Python "
               "stdlib source (or --data-dir FILE), next-byte cross-entropy")
    dataset = "stdlib-text"
    task = "classification"
    batch_size = 32
    small_batch_size = 16
    default_eval_size = 512
    eval_batch_size = 64
    default_eval_every = 50  # one evaluation costs ~14 steps
    validation_fraction = 0.05
    target_loss = 2.3

    @property
    def architecture(self) -> dict[str, int]:
        """``context``, ``layers``, ``d_model``, ``heads`` of this variant."""
        if self.small:
            return {"context": 32, "layers": 1, "d_model": 32, "heads": 2}
        return {"context": 128, "layers": 4, "d_model": 128, "heads": 4}

    def load_data(self) -> Dataset:
        """Sequences of the corpus, test split carved with ``split_seed + 2``, then validation."""
        corpus = load_corpus(self.data_dir)
        data = corpus.data[:SMALL_BYTES] if self.small else corpus.data
        seqs = byte_sequences(data, self.architecture["context"] + 1)
        n = seqs.shape[0]
        perm = np.random.RandomState(self.split_seed + 2).permutation(n)
        k = max(1, round(0.05 * n))
        test, train = (torch.as_tensor(np.sort(perm[:k])), torch.as_tensor(np.sort(perm[k:])))
        meta = {"corpus": corpus.meta(), "bytes_used": len(data), "sequences": n,
                "test_size": k}
        full = Dataset(seqs[train, :-1], seqs[train, 1:], seqs[test, :-1], seqs[test, 1:],
                       sources=corpus.files, meta=meta)
        return self.with_validation(full)

    def build_model(self) -> nn.Module:
        """:class:`ByteTransformer` with :attr:`architecture`."""
        return ByteTransformer(256, **self.architecture)

    def loss_fn(self) -> nn.Module:
        """Mean next-byte cross-entropy (nats)."""
        return nn.CrossEntropyLoss()

"""Tiny modern architectures for the factor-engine tests (a GPT, a BatchNorm ResNet block, ...)."""

from __future__ import annotations

import math

import torch
from torch import nn


class CausalSelfAttention(nn.Module):
    """nanoGPT-style attention: fused ``c_attn`` Linear(D, 3D), ``c_proj`` Linear(D, D)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.c_attn(x).split(D, dim=2)
        q, k, v = (t.view(B, T, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D // self.heads)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, D)
        return self.c_proj(y)


class Block(nn.Module):
    """Pre-norm transformer block: LayerNorm, attention, LayerNorm, GELU MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    """Token + position embedding, one block, final LayerNorm, ``lm_head``; logits ``(B·T, V)``."""

    def __init__(self, vocab: int = 11, dim: int = 8, heads: int = 2, context: int = 5,
                 tied: bool = False) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Parameter(0.02 * torch.randn(context, dim))
        self.block = Block(dim, heads)
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        if tied:
            self.lm_head.weight = self.wte.weight

    def forward(self, idx):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe[:T]
        x = self.ln_f(self.block(x))
        return self.lm_head(x).reshape(-1, self.lm_head.out_features)


class ResBlockBN(nn.Module):
    """Conv-BN-ReLU-Conv-BN + identity skip, ReLU, pooling, Linear head."""

    def __init__(self, channels: int = 3, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        x = self.stem(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        y = self.relu(x + y)
        return self.head(y.mean(dim=(2, 3)))


class AttentionClassifier(nn.Module):
    """``nn.MultiheadAttention`` over positions, mean-pooled, Linear head."""

    def __init__(self, dim: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(3, dim)
        self.mha = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.embed(x)
        a, _ = self.mha(h, h, h, need_weights=False)
        return self.head(a.mean(dim=1))

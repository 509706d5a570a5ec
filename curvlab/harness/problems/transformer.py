r"""A byte-level decoder-only transformer (GPT-2 layout, as nanoGPT) built from plain modules.

Every parametrised module is an ``nn.Embedding``, ``nn.LayerNorm`` or
``nn.Linear``: attention uses four separate ``nn.Linear`` projections
(query, key, value, output) rather than ``nn.MultiheadAttention`` or a
fused ``c_attn``, so that Kronecker-factored backends can precondition every
projection. For tokens ``t ∈ {0..V-1}^T`` (``V = 256`` bytes)::

    h⁰ = E_tok[t] + E_pos[0..T-1]                           (B, T, d)
    hˡ = hˡ⁻¹ + Attn(LN₁(hˡ⁻¹)),  hˡ ← hˡ + MLP(LN₂(hˡ))     (pre-norm blocks)
    Attn(u) = W_o · concat_heads softmax(q kᵀ/√(d/H) + M) v,  q, k, v = W_q u, W_k u, W_v u
    MLP(u)  = W₂ GELU(W₁ u),  W₁: d → 4d
    logits  = W_head LN_f(hᴸ)                                (B, T, V)

with the causal mask ``M_ij = −∞`` for ``j > i``. No dropout (runs are
deterministic), untied input and output embeddings, biases on every Linear
except the head.

Output layout: :class:`ByteTransformer` returns logits of shape
``(B, V, T)`` — the layout :class:`torch.nn.CrossEntropyLoss` takes for
targets of shape ``(B, T)`` ("K-dimensional" inputs, class dimension 1) —
so the stock loss module gives the mean next-byte cross-entropy over all
``B·T`` positions, and ``argmax(dim=1)`` gives the predicted bytes. The
transpose happens after the head, so a hook on the head sees its natural
``(B, T, V)`` output.

Initialisation (GPT-2): Linear and Embedding weights ``N(0, 0.02²)``, the
two residual output projections of each block ``N(0, (0.02/√(2L))²)``,
biases 0, LayerNorm ``γ = 1, β = 0``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["Block", "ByteTransformer", "CausalSelfAttention"]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention from four ``nn.Linear`` projections.

    Args:
        d_model: Width ``d``.
        heads: Number of heads ``H`` (``d`` divisible by ``H``).
        context: Maximal sequence length (size of the causal mask).

    Example:
        >>> a = CausalSelfAttention(8, 2, context=5)
        >>> a(torch.zeros(3, 5, 8)).shape
        torch.Size([3, 5, 8])
    """

    def __init__(self, d_model: int, heads: int, context: int) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
        self.heads = heads
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        mask = torch.ones(context, context, dtype=torch.bool).tril()
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, u: Tensor) -> Tensor:
        """``(B, T, d) → (B, T, d)``; position ``i`` attends to positions ``≤ i``."""
        b, t, d = u.shape
        hd = d // self.heads

        def split(z: Tensor) -> Tensor:
            return z.view(b, t, self.heads, hd).transpose(1, 2)  # (B, H, T, hd)

        q, k, v = split(self.query(u)), split(self.key(u)), split(self.value(u))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        scores = scores.masked_fill(~self.mask[:t, :t], float("-inf"))
        y = torch.softmax(scores, dim=-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: ``h + Attn(LN(h))``, then ``h + MLP(LN(h))``.

    Example:
        >>> Block(8, 2, context=4)(torch.zeros(1, 4, 8)).shape
        torch.Size([1, 4, 8])
    """

    def __init__(self, d_model: int, heads: int, context: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, heads, context)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.act = nn.GELU()
        self.proj = nn.Linear(4 * d_model, d_model)

    def forward(self, h: Tensor) -> Tensor:
        """``(B, T, d) → (B, T, d)``."""
        h = h + self.attn(self.ln1(h))
        return h + self.proj(self.act(self.fc(self.ln2(h))))


class ByteTransformer(nn.Module):
    """Decoder-only byte-level language model (see the module docstring).

    Args:
        vocab: Vocabulary size ``V`` (256 for bytes).
        context: Maximal sequence length ``T``.
        layers: Number of blocks ``L``.
        d_model: Width ``d``.
        heads: Attention heads ``H``.

    Example:
        >>> net = ByteTransformer(context=8, layers=1, d_model=16, heads=2)
        >>> logits = net(torch.zeros(2, 8, dtype=torch.long))
        >>> logits.shape
        torch.Size([2, 256, 8])
        >>> loss = torch.nn.CrossEntropyLoss()(logits, torch.zeros(2, 8, dtype=torch.long))
    """

    def __init__(self, vocab: int = 256, context: int = 128, layers: int = 4, d_model: int = 128,
                 heads: int = 4) -> None:
        super().__init__()
        for name, value in (("vocab", vocab), ("context", context), ("layers", layers),
                            ("d_model", d_model), ("heads", heads)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.context = context
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.Sequential(*(Block(d_model, heads, context) for _ in range(layers)))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)
        self.register_buffer("positions", torch.arange(context), persistent=False)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif name.endswith(("attn.out.weight", "proj.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * layers))
            elif p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits ``(B, V, T)`` for integer tokens ``(B, T)``, ``T ≤ context``."""
        t = tokens.shape[1]
        if t > self.context:
            raise ValueError(f"sequence length {t} exceeds the context {self.context}")
        h = self.tok(tokens) + self.pos(self.positions[:t])
        logits = self.head(self.ln_f(self.blocks(h)))
        return logits.transpose(1, 2)

"""Routing and fusion layers: content-aware routing for long sequences (mixture of depths), cross-
attention fusion of two modalities, and dynamic convolution attention. All map ``(N, L, D)`` to
``(N, L, D)`` and are residual, so they drop into a transformer stack."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class MixtureOfDepths(nn.Module):
    """Content-aware routing (Raposo et al. 2024): a learned router picks the top ``capacity`` share of
    tokens of each sequence to go through ``block``; the others skip it unchanged, so the block's cost
    falls to about ``capacity``. Selected tokens keep their order (causal blocks stay causal) and receive
    ``x + sigmoid(score) * (block(x) - x)``, which is how the router learns."""

    def __init__(self, block: nn.Module, dim: int, capacity: float = 0.5) -> None:
        super().__init__()
        if not 0 < capacity <= 1:
            raise ValueError(f"capacity must be in (0, 1], got {capacity}")
        self.block, self.capacity = block, capacity
        self.router = nn.Linear(dim, 1)
        self.last_selected: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, d = x.shape
        k = max(1, math.ceil(self.capacity * length))
        scores = self.router(x).squeeze(-1)  # (N, L)
        chosen = scores.topk(k, dim=1).indices.sort(dim=1).values  # keep sequence order
        picked = x.gather(1, chosen[..., None].expand(-1, -1, d))
        delta = self.block(picked) - picked
        gate = torch.sigmoid(scores.gather(1, chosen)).unsqueeze(-1)
        self.last_selected = chosen
        return x.scatter(1, chosen[..., None].expand(-1, -1, d), picked + gate * delta)


class CrossAttentionFusion(nn.Module):
    """Queries from one modality ``x (N, L, dim)`` attend to another ``context (N, S, context_dim)``
    (pre-norm, residual), then a feed-forward. ``context_mask (N, S)`` is True for real context tokens."""

    def __init__(self, dim: int, context_dim: int, heads: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_q, self.norm_c, self.norm_f = nn.LayerNorm(dim), nn.LayerNorm(context_dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(
            dim, heads, dropout=dropout, kdim=context_dim, vdim=context_dim, batch_first=True
        )
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        c = self.norm_c(context)
        pad = ~context_mask if context_mask is not None else None
        x = x + self.attn(self.norm_q(x), c, c, key_padding_mask=pad, need_weights=False)[0]
        return x + self.ffn(self.norm_f(x))


class DynamicConvAttention(nn.Module):
    """Dynamic convolution (Wu et al. 2019): each position predicts a softmax-normalised kernel of width
    ``kernel`` per head from its own features and mixes its neighbourhood with it; linear in L. With
    ``causal`` the window ends at the position (for decoders and streaming)."""

    def __init__(self, dim: int, heads: int = 8, kernel: int = 7, causal: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.kernel, self.causal = heads, kernel, causal
        self.norm, self.value = nn.LayerNorm(dim), nn.Linear(dim, dim)
        self.weights = nn.Linear(dim, heads * kernel)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, d = x.shape
        h = self.norm(x)
        v = self.value(h)
        left = self.kernel - 1 if self.causal else self.kernel // 2
        windows = F.pad(v, (0, 0, left, self.kernel - 1 - left)).unfold(1, self.kernel, 1)  # (N, L, D, K)
        windows = windows.reshape(n, length, self.heads, d // self.heads, self.kernel)
        w = torch.softmax(self.weights(h).view(n, length, self.heads, 1, self.kernel), dim=-1)
        return x + self.out((windows * w).sum(-1).reshape(n, length, d))

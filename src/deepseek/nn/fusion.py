"""Routing and fusion layers: content-aware routing for long sequences (mixture of depths), cross-
attention fusion of two modalities, and dynamic convolution attention. All map ``(N, L, D)`` to
``(N, L, D)`` and are residual, so they drop into a transformer stack."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class MixtureOfDepths(nn.Module):
    """Content-aware routing (Raposo et al. 2024): a learned router sends about a ``capacity`` share of
    the tokens of each sequence through ``block``; the others skip it unchanged, so the block's cost
    falls to about ``capacity``. Routed tokens keep their order and receive ``x + sigmoid(score) *
    (block(x) - x)``, which is how the router learns.

    By default the router takes the top ``capacity`` share of each sequence, a choice that depends on
    the whole sequence, future tokens included. With ``causal`` (decoders, streaming) each token decides
    alone: it is routed when its score is > 0 (sigmoid > 0.5); ``aux_loss`` then holds the paper's
    auxiliary BCE loss (``aux_loss_weight`` times) that trains that decision to predict membership of the
    top-k, so about ``capacity`` of the tokens are routed. ``block`` must itself be causal; it sees the
    routed tokens of each row packed to the front, any filler after them. ``last_routed (N, L)`` is True
    for the tokens the block ran on (``last_selected (N, k)``: their indices, non-causal mode).

    ``last_selected`` and ``aux_loss`` describe the latest call only: a call in the mode without them
    sets them to None (``causal`` may be switched between calls), so no stale tensor from an earlier
    call -- whose graph backward may already have freed -- is mistaken for the current one."""

    def __init__(
        self, block: nn.Module, dim: int, capacity: float = 0.5, causal: bool = False, aux_loss_weight: float = 0.01
    ) -> None:
        super().__init__()
        if not 0 < capacity <= 1:
            raise ValueError(f"capacity must be in (0, 1], got {capacity}")
        self.block, self.capacity, self.causal, self.aux_loss_weight = block, capacity, causal, aux_loss_weight
        self.router = nn.Linear(dim, 1)
        self.last_selected: torch.Tensor | None = None
        self.last_routed: torch.Tensor | None = None
        self.aux_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, d = x.shape
        k = max(1, math.ceil(self.capacity * length))
        scores = self.router(x).squeeze(-1).float()  # (N, L)
        top_k = scores.topk(k, dim=1).indices
        if self.causal:
            target = torch.zeros_like(scores).scatter(1, top_k, 1.0)  # a training target only: never decides
            self.aux_loss = self.aux_loss_weight * F.binary_cross_entropy_with_logits(scores, target)
            routed = scores > 0
            width = max(1, int(routed.sum(1).max()))
            # routed positions first, in sequence order (stable sort); the rest of the width is filler
            chosen = torch.argsort((~routed).to(torch.int8), dim=1, stable=True)[:, :width]
            valid = routed.gather(1, chosen)
            self.last_selected = None  # routing is per token here: no fixed top-k indices
        else:
            chosen = top_k.sort(dim=1).values  # keep sequence order
            valid = torch.ones_like(chosen, dtype=torch.bool)
            routed = torch.zeros_like(scores, dtype=torch.bool).scatter(1, chosen, True)
            self.last_selected, self.aux_loss = chosen, None  # top-k routing needs no auxiliary loss
        index = chosen[..., None].expand(-1, -1, d)
        picked = x.gather(1, index)
        gate = torch.sigmoid(scores.gather(1, chosen)).unsqueeze(-1)
        updated = picked + (gate * (self.block(picked) - picked)).to(x.dtype)
        self.last_routed = routed
        return x.scatter(1, index, torch.where(valid.unsqueeze(-1), updated, picked))


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

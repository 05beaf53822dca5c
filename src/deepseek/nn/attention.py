"""Sparse attention that computes only what it keeps, and a chunked causal block for streaming ASR.

Tensors are ``(N, heads, L, head_dim)``. Dense attention costs ``4 * L * L * head_dim`` FLOPs per head
(QK^T and AV). :func:`sliding_window_attention` cuts the sequence into blocks of ``window`` and scores
each block against its neighbours only: ``4 * L * (2 or 3) * window * head_dim``, a saving of about
``L / (3 * window)`` (``L / (2 * window)`` causal). :func:`block_sparse_attention` scores each query
block against the key blocks a layout allows (``4 * block * r * block * head_dim`` a row of ``r``
blocks); rows that see every block, such as global tokens, take one dense pass of their own.
Both are exact for the pattern they implement (tests compare them with masked dense attention, and
count FLOPs with ``torch.utils.flop_counter``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _softmax_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.nan_to_num(torch.softmax(scores, dim=-1))  # a fully masked row (padding) gives zeros
    return weights @ v


def sliding_window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, causal: bool = False
) -> torch.Tensor:
    """Each position ``i`` attends to ``j`` with ``|i - j| <= window`` (``i - window <= j <= i`` when causal)."""
    n, h, length, d = q.shape
    blocks = math.ceil(length / window)
    pad = blocks * window - length
    left, right = window, 0 if causal else window
    qb = F.pad(q, (0, 0, 0, pad)).view(n, h, blocks, window, d)
    kb = F.pad(k, (0, 0, left, pad + right)).unfold(2, left + window + right, window).transpose(-1, -2)
    vb = F.pad(v, (0, 0, left, pad + right)).unfold(2, left + window + right, window).transpose(-1, -2)
    qi = torch.arange(blocks * window, device=q.device).view(blocks, window, 1)
    kj = (
        (torch.arange(blocks, device=q.device) * window).view(blocks, 1, 1)
        - left
        + torch.arange(left + window + right, device=q.device)
    )
    allowed = ((qi - kj).abs() <= window) & (kj >= 0) & (kj < length)
    if causal:
        allowed &= kj <= qi
    out = _softmax_attend(qb, kb, vb, allowed).reshape(n, h, blocks * window, d)
    return out[:, :, :length]


def local_global_layout(blocks: int, local: int = 1, global_blocks: int = 1) -> torch.Tensor:
    """``(blocks, blocks)`` bool layout: each block sees ``local`` neighbours either side and the first
    ``global_blocks`` blocks, which also see everything (Longformer/BigBird-style)."""
    i = torch.arange(blocks)
    layout = (i[:, None] - i[None, :]).abs() <= local
    layout[:, :global_blocks] = True
    layout[:global_blocks, :] = True
    return layout


def block_sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int, layout: torch.Tensor
) -> torch.Tensor:
    """Query block ``a`` attends to key block ``b`` where ``layout[a, b]``; ``L`` must be a multiple of ``block``."""
    n, h, length, d = q.shape
    if length % block:
        raise ValueError(f"length {length} is not a multiple of block {block}")
    blocks = length // block
    if layout.shape != (blocks, blocks):
        raise ValueError(f"layout must be ({blocks}, {blocks}), got {tuple(layout.shape)}")
    full = layout.all(dim=1)  # rows that see every block (global queries): one dense pass for them
    out = torch.empty_like(q).view(n, h, blocks, block, d)
    qb = q.view(n, h, blocks, block, d)
    if bool(full.any()):
        rows = full.nonzero().flatten().to(q.device)
        qf = qb[:, :, rows].reshape(n, h, -1, d)
        everything = torch.ones(1, 1, dtype=torch.bool, device=q.device)
        out[:, :, rows] = _softmax_attend(qf, k, v, everything).view(n, h, len(rows), block, d)
    rest = (~full).nonzero().flatten()
    if len(rest):
        sub = layout[rest]
        counts = sub.sum(1)
        width = int(counts.max())
        order = torch.argsort((~sub).to(torch.int8), dim=1, stable=True)[:, :width].to(q.device)  # allowed first
        valid = (torch.arange(width)[None, :] < counts[:, None]).to(q.device)
        kb = k.view(n, h, blocks, block, d)[:, :, order].reshape(n, h, len(rest), width * block, d)
        vb = v.view(n, h, blocks, block, d)[:, :, order].reshape(n, h, len(rest), width * block, d)
        allowed = valid.repeat_interleave(block, dim=1)[:, None, :].expand(len(rest), block, width * block)
        idx = rest.to(q.device)
        out[:, :, idx] = _softmax_attend(qb[:, :, idx], kb, vb, allowed)
    return out.view(n, h, length, d)


def block_sparse_flops(length: int, block: int, layout: torch.Tensor, head_dim: int) -> int:
    """FLOPs of :func:`block_sparse_attention` for one sequence and head (dense rows + padded sparse rows)."""
    full = layout.all(dim=1)
    rest = layout[~full]
    width = int(rest.sum(1).max()) if len(rest) else 0
    return 4 * int(full.sum()) * block * length * head_dim + 4 * len(rest) * block * width * block * head_dim


class ChunkedStreamingAttention(nn.Module):
    """Chunk-causal self-attention for streaming ASR: frames attend within their chunk and to
    ``left_chunks`` earlier chunks, never ahead of their chunk. ``forward(x (N, T, D))`` processes a whole
    utterance; ``stream(chunk, cache)`` processes one chunk of ``chunk`` frames at a time with a key/value
    cache and gives the same outputs."""

    def __init__(self, dim: int, heads: int, chunk: int, left_chunks: int = 4) -> None:
        super().__init__()
        self.heads, self.chunk, self.left_chunks = heads, chunk, left_chunks
        self.qkv, self.proj, self.norm = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), nn.LayerNorm(dim)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n, t, d = x.shape
        return tuple(z.view(n, t, self.heads, -1).transpose(1, 2) for z in self.qkv(self.norm(x)).split(d, dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(x)
        t = x.shape[1]
        ci = torch.arange(t, device=x.device) // self.chunk
        allowed = (ci[None, :] <= ci[:, None]) & (ci[None, :] >= ci[:, None] - self.left_chunks)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return x + self.proj(out.transpose(1, 2).reshape(x.shape))

    def stream(self, chunk: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None):
        """One chunk ``(N, chunk, D)`` -> ``(output, cache)``; the cache keeps ``left_chunks`` chunks."""
        q, k, v = self._split(chunk)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v)  # the whole chunk and its left context: all visible
        keep = self.left_chunks * self.chunk
        new_cache = (k[:, :, -keep:], v[:, :, -keep:]) if keep else None
        return chunk + self.proj(out.transpose(1, 2).reshape(chunk.shape)), new_cache


class SparseSelfAttention(nn.Module):
    """Multi-head self-attention ``(N, L, D) -> (N, L, D)`` with a sliding-window or block-sparse pattern."""

    def __init__(self, dim: int, heads: int, pattern: str = "sliding", window: int = 64, causal: bool = False,
                 local: int = 1, global_blocks: int = 1) -> None:  # fmt: skip
        super().__init__()
        if pattern not in ("sliding", "block"):
            raise ValueError(f"pattern must be 'sliding' or 'block', got {pattern!r}")
        self.heads, self.pattern, self.window, self.causal = heads, pattern, window, causal
        self.local, self.global_blocks = local, global_blocks
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, d = x.shape
        q, k, v = (z.view(n, length, self.heads, -1).transpose(1, 2) for z in self.qkv(x).split(d, dim=-1))
        if self.pattern == "sliding":
            out = sliding_window_attention(q, k, v, self.window, self.causal)
        else:
            layout = local_global_layout(length // self.window, self.local, self.global_blocks)
            out = block_sparse_attention(q, k, v, self.window, layout)
        return self.proj(out.transpose(1, 2).reshape(n, length, d))

    def attention_flops(self, length: int, head_dim: int) -> int:
        """Multiply-add FLOPs (x2) of the attention core for one sequence and head: the figure tests check."""
        if self.pattern == "sliding":
            blocks = math.ceil(length / self.window)
            keys = (2 if self.causal else 3) * self.window
            return 4 * blocks * self.window * keys * head_dim
        layout = local_global_layout(length // self.window, self.local, self.global_blocks)
        return block_sparse_flops(length, self.window, layout, head_dim)

"""Pieces shared by the transformer-style models: a pre-norm encoder block and gradient checkpointing."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from deepseek.nn.checkpointing import run_checkpointed


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: ``x + MHA(LN(x))``, then ``x + MLP(LN(x))``; ``(N, L, D) -> (N, L, D)``.

    ``mlp`` replaces the default GELU MLP (``dim -> mlp_ratio * dim -> dim``), e.g. with a mixture of experts.
    """

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, mlp: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        hidden = int(dim * mlp_ratio)
        self.mlp = mlp if mlp is not None else nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``key_padding_mask (N, L)``: True at padding, which no token attends to."""
        h = self.norm1(x)
        x = x + self.attn(h, h, h, key_padding_mask=key_padding_mask, need_weights=False)[0]
        return x + self.feed_forward(self.norm2(x), key_padding_mask)

    def feed_forward(self, h: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        """The MLP on ``h (N, L, D)``; it works per token, so padding needs no mask here (subclasses whose
        MLP mixes tokens, such as a capacity-limited MoE, use it)."""
        return self.mlp(h)


class GradientCheckpointing:
    """Mixin: ``gradient_checkpointing_enable()`` recomputes each of ``self.blocks`` in backward.

    The model's forward runs its blocks with :meth:`run_blocks` (or calls
    :func:`~deepseek.nn.checkpointing.run_checkpointed` itself when ``self.checkpointing``).
    """

    checkpointing = False

    def gradient_checkpointing_enable(self) -> None:
        self.checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.checkpointing = False

    def run_blocks(self, x: torch.Tensor, *args: Any) -> torch.Tensor:
        """``x`` through every block in turn; ``args`` (e.g. a padding mask) go to every block unchanged."""
        for block in self.blocks:  # type: ignore[attr-defined]
            x = run_checkpointed(block, x, *args) if self.checkpointing else block(x, *args)
        return x

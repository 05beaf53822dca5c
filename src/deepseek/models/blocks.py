"""Pieces shared by the transformer-style models: multi-head attention with separate q/k/v projections, a
pre-norm encoder block and gradient checkpointing."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from deepseek.nn.checkpointing import run_checkpointed


def split_in_proj(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Load-state-dict pre-hook of :class:`MultiHeadAttention`: weights saved from ``nn.MultiheadAttention``
    (packed ``in_proj_weight (3 * dim, dim)`` / ``in_proj_bias (3 * dim,)``, rows q then k then v) load into
    the separate ``q_proj``, ``k_proj`` and ``v_proj``; ``out_proj`` keeps its name. A packed tensor whose rows
    do not split in three is left for ``load_state_dict`` to report as unexpected."""
    unpack_qkv(state_dict, prefix, "in_proj_{kind}", ("q_proj", "k_proj", "v_proj"))


def unpack_qkv(state_dict: dict[str, Any], prefix: str, packed: str, names: tuple[str, str, str]) -> None:
    """Split the packed ``prefix + packed.format(kind=...)`` weight ``(3 * dim, dim)`` and bias ``(3 * dim,)``
    (rows q, then k, then v) into ``prefix + name + ".weight"`` / ``".bias"`` for the three ``names``, in place;
    rows that do not split in three are left for ``load_state_dict`` to report."""
    for kind in ("weight", "bias"):
        key = prefix + packed.format(kind=kind)
        if key in state_dict and state_dict[key].shape[0] % 3 == 0:
            for name, part in zip(names, state_dict.pop(key).chunk(3, dim=0)):
                state_dict[f"{prefix}{name}.{kind}"] = part


class MultiHeadAttention(nn.Module):
    """Multi-head attention ``query (N, L, dim)``, ``key``/``value (N, S, dim)`` -> ``(N, L, dim)``, equal to
    ``nn.MultiheadAttention(dim, heads, batch_first=True)`` on the same weights but with q, k and v as separate
    Linears, so that a column-wise shard of each holds whole heads (``deepseek.models.parallelize``): the
    forward views with ``-1`` heads and so runs on a rank's local heads. Files saved with the packed
    ``in_proj_weight`` load through :func:`split_in_proj`.

    ``key_padding_mask (N, S)`` and ``attn_mask (L, S)`` are bool, True where attention is NOT allowed (as in
    ``nn.MultiheadAttention``); ``is_causal`` masks future keys when no ``attn_mask`` is given.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads, self.head_dim, self.dropout = heads, dim // heads, dropout
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        # nn.MultiheadAttention's initialisation: Xavier-uniform over the packed (3 * dim, dim) q/k/v, zero biases
        bound = math.sqrt(6.0 / (dim + 3 * dim))
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.uniform_(proj.weight, -bound, bound)
            nn.init.zeros_(proj.bias)
        nn.init.zeros_(self.out_proj.bias)
        self.register_load_state_dict_pre_hook(split_in_proj)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """``key`` and ``value`` default to ``query`` (self-attention)."""
        key = query if key is None else key
        value = key if value is None else value
        n, length = query.shape[:2]
        q = self.q_proj(query).view(n, length, -1, self.head_dim).transpose(1, 2)  # (N, heads, L, head_dim)
        k, v = (p(x).view(n, x.shape[1], -1, self.head_dim).transpose(1, 2)
                for p, x in ((self.k_proj, key), (self.v_proj, value)))  # fmt: skip
        blocked = None  # (N or 1, 1, L or 1, S), True where attention is not allowed
        if attn_mask is not None:
            blocked = attn_mask.bool()[None, None]
        if key_padding_mask is not None:
            padding = key_padding_mask.bool()[:, None, None, :]
            blocked = padding if blocked is None else blocked | padding
        causal = is_causal and blocked is None
        if is_causal and blocked is not None and attn_mask is None:
            future = torch.ones(length, k.shape[2], dtype=torch.bool, device=query.device).triu(1)
            blocked = blocked | future
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None if blocked is None else ~blocked,
            dropout_p=self.dropout if self.training else 0.0, is_causal=causal,
        )  # fmt: skip
        return self.out_proj(out.transpose(1, 2).reshape(n, length, -1))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: ``x + MHA(LN(x))``, then ``x + MLP(LN(x))``; ``(N, L, D) -> (N, L, D)``.

    ``mlp`` replaces the default GELU MLP (``dim -> mlp_ratio * dim -> dim``), e.g. with a mixture of experts.
    """

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, mlp: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiHeadAttention(dim, heads, dropout=dropout)
        hidden = int(dim * mlp_ratio)
        self.mlp = mlp if mlp is not None else nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``key_padding_mask (N, L)``: True at padding, which no token attends to."""
        h = self.norm1(x)
        x = x + self.attn(h, key_padding_mask=key_padding_mask)
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

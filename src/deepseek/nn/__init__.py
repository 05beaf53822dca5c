"""``ds.nn``: everything in :mod:`torch.nn` (the very same objects) plus ds's own layers.

``ds.nn.Linear is torch.nn.Linear``; names ds adds are defined in this package and listed in
``__all__``. Unknown names fall through to :mod:`torch.nn`, so ``from deepseek.nn import Conv2d``
and ``ds.nn.functional`` work as they do with torch.
"""

from __future__ import annotations

from typing import Any

import torch.nn as _torch_nn

from deepseek.nn.attention import (
    ChunkedStreamingAttention,
    SparseSelfAttention,
    block_sparse_attention,
    local_global_layout,
    sliding_window_attention,
)
from deepseek.nn.checkpointing import checkpoint_modules
from deepseek.nn.fusion import CrossAttentionFusion, DynamicConvAttention, MixtureOfDepths
from deepseek.nn.graph_ops import segment_softmax, segment_sum
from deepseek.nn.moe import Dispatch, FeedForward, MoE, aux_loss

__all__: list[str] = [
    "ChunkedStreamingAttention",
    "CrossAttentionFusion",
    "Dispatch",
    "DynamicConvAttention",
    "FeedForward",
    "MixtureOfDepths",
    "MoE",
    "SparseSelfAttention",
    "aux_loss",
    "block_sparse_attention",
    "checkpoint_modules",
    "local_global_layout",
    "segment_softmax",
    "segment_sum",
    "sliding_window_attention",
]


def __getattr__(name: str) -> Any:
    try:
        return getattr(_torch_nn, name)
    except AttributeError:
        raise AttributeError(f"module 'deepseek.nn' (torch.nn) has no attribute '{name}'") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(dir(_torch_nn)))

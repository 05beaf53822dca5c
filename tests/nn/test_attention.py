"""Sparse attention equals masked dense attention and saves the FLOPs it states; streaming equals full."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from deepseek.nn.attention import (
    ChunkedStreamingAttention,
    SparseSelfAttention,
    block_sparse_attention,
    local_global_layout,
    sliding_window_attention,
)  # fmt: skip


def qkv(length: int, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, length, d, generator=g) for _ in range(3)]


def dense(q, k, v, allowed):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


@pytest.mark.parametrize("length, window, causal", [(50, 8, False), (64, 16, True), (7, 4, False), (33, 5, True)])
def test_sliding_window_equals_banded_dense(length, window, causal):
    q, k, v = qkv(length)
    i = torch.arange(length)
    allowed = (i[:, None] - i[None, :]).abs() <= window
    if causal:
        allowed &= i[None, :] <= i[:, None]
    torch.testing.assert_close(
        sliding_window_attention(q, k, v, window, causal), dense(q, k, v, allowed), rtol=1e-5, atol=1e-5
    )


def test_block_sparse_equals_masked_dense():
    q, k, v = qkv(64)
    layout = local_global_layout(8, local=1, global_blocks=1)
    allowed = layout.repeat_interleave(8, 0).repeat_interleave(8, 1)
    torch.testing.assert_close(
        block_sparse_attention(q, k, v, 8, layout), dense(q, k, v, allowed), rtol=1e-5, atol=1e-5
    )


def count(fn, *args) -> int:
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


@pytest.mark.parametrize("pattern, causal", [("sliding", False), ("sliding", True), ("block", False)])
def test_stated_flops_match_the_counter_and_save_against_dense(pattern, causal):
    length, d, window = 1024, 16, 64
    q, k, v = qkv(length, d)
    layer = SparseSelfAttention(48, 3, pattern=pattern, window=window, causal=causal)
    if pattern == "sliding":
        measured = count(sliding_window_attention, q, k, v, window, causal)
    else:
        measured = count(block_sparse_attention, q, k, v, window, local_global_layout(length // window))
    stated = layer.attention_flops(length, d) * q.shape[0] * q.shape[1]
    assert measured == stated
    dense_flops = count(lambda: q @ k.transpose(-1, -2) @ v)  # QK^T and AV of dense attention
    assert dense_flops == 4 * length * length * d * 6
    assert measured < dense_flops / 3  # L=1024, window 64: 5.3x (sliding), 8x (causal), 3.4x (local + global)


def test_streaming_chunks_equal_the_full_pass():
    torch.manual_seed(0)
    block = ChunkedStreamingAttention(32, 4, chunk=5, left_chunks=2).eval()
    x = torch.randn(2, 30, 32)
    full = block(x)
    outs, cache = [], None
    for start in range(0, 30, 5):
        y, cache = block.stream(x[:, start : start + 5], cache)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-5, atol=1e-5)
    assert math.isclose(cache[0].shape[2], 10)  # two left chunks kept

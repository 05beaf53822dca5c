"""Mixture-of-depths routing, cross-attention fusion and dynamic convolution attention."""

from __future__ import annotations

import torch
import torch.nn as nn

from deepseek.nn.fusion import CrossAttentionFusion, DynamicConvAttention, MixtureOfDepths


def test_mixture_of_depths_routes_a_share_and_learns():
    torch.manual_seed(0)
    seen = []
    block = nn.Linear(16, 16)
    block.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape))
    mod = MixtureOfDepths(block, 16, capacity=0.25)
    x = torch.randn(3, 40, 16, requires_grad=True)
    y = mod(x)
    assert seen[-1] == (3, 10, 16)  # only a quarter of the tokens ran through the block
    skipped = torch.ones(3, 40, dtype=torch.bool)
    skipped.scatter_(1, mod.last_selected, False)
    assert torch.equal(y[skipped], x[skipped])
    assert torch.equal(mod.last_selected, mod.last_selected.sort(dim=1).values)
    y.sum().backward()
    assert mod.router.weight.grad is not None and mod.router.weight.grad.abs().sum() > 0


def test_cross_attention_fusion_ignores_masked_context():
    torch.manual_seed(0)
    fuse = CrossAttentionFusion(dim=32, context_dim=24, heads=4).eval()
    x, ctx = torch.randn(2, 5, 32), torch.randn(2, 7, 24)
    mask = torch.tensor([[True] * 4 + [False] * 3] * 2)
    out = fuse(x, ctx, mask)
    changed = ctx.clone()
    changed[:, 4:] = 100.0  # only padded positions change
    assert out.shape == (2, 5, 32) and torch.allclose(fuse(x, changed, mask), out, atol=1e-6)
    assert not torch.allclose(fuse(x, changed), out, atol=1e-3)  # without the mask they matter


def test_causal_dynamic_convolution_never_looks_ahead():
    torch.manual_seed(0)
    conv = DynamicConvAttention(dim=32, heads=4, kernel=5, causal=True).eval()
    x = torch.randn(2, 12, 32)
    out = conv(x)
    future = x.clone()
    future[:, 8:] = torch.randn(2, 4, 32)
    assert torch.allclose(conv(future)[:, :8], out[:, :8], atol=1e-6)
    centred = DynamicConvAttention(dim=32, heads=4, kernel=5).eval()
    assert not torch.allclose(centred(future)[:, :8], centred(x)[:, :8], atol=1e-6)

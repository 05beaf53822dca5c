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


class CumulativeMean(nn.Module):
    """A causal block: each position becomes a projection of the mean of the positions up to it."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype).view(1, -1, 1)
        return self.proj(x.cumsum(1) / steps)


def test_causal_mixture_of_depths_never_looks_ahead():
    torch.manual_seed(0)
    mod = MixtureOfDepths(CumulativeMean(16), 16, capacity=0.5, causal=True).eval()
    x = torch.randn(3, 20, 16)
    out = mod(x)
    ran = mod.last_routed  # (N, L) bool: which tokens went through the block
    assert 0 < int(ran.sum()) < ran.numel()
    assert torch.equal(out[~ran], x[~ran])
    for t in (0, 7, 14):
        future = x.clone()
        future[:, t + 1 :] = torch.randn(3, 19 - t, 16) * 3
        torch.testing.assert_close(mod(future)[:, : t + 1], out[:, : t + 1], rtol=0, atol=1e-6)


def test_causal_mixture_of_depths_trains_its_router_towards_the_capacity():
    torch.manual_seed(0)
    mod = MixtureOfDepths(nn.Linear(16, 16), 16, capacity=0.25, causal=True)
    mod(torch.randn(4, 32, 16)).sum().backward()
    assert mod.router.weight.grad is not None and mod.router.weight.grad.abs().sum() > 0
    opt = torch.optim.Adam(mod.router.parameters(), lr=0.05)
    x = torch.randn(8, 32, 16)
    for _ in range(100):  # the aux loss alone teaches the per-token decision to pick the top quarter
        mod(x)
        opt.zero_grad()
        mod.aux_loss.backward()
        opt.step()
    mod(x)
    assert abs(float(mod.last_routed.float().mean()) - 0.25) < 0.05


def test_mixture_of_depths_keeps_no_stale_state_from_the_other_mode():
    """``last_selected`` (non-causal only) and ``aux_loss`` (causal only) describe the latest call: after
    a call in the other mode they are None, not the previous call's tensors (the trainer adds any
    tensor ``aux_loss`` to the loss, and a stale one belongs to a graph already freed)."""
    torch.manual_seed(0)
    mod = MixtureOfDepths(nn.Linear(16, 16), 16, capacity=0.25)
    x = torch.randn(2, 12, 16)
    mod(x)
    assert mod.last_selected is not None and mod.aux_loss is None
    mod.causal = True
    mod(x)
    assert mod.last_selected is None and mod.aux_loss is not None
    mod.causal = False
    mod(x)
    assert mod.last_selected is not None and mod.aux_loss is None


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

"""INT4 group-wise weights: every group reconstructs within half a quantization step, whatever its sign."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from deepseek.compress import Int4Linear, quantize_int4

# fp16 storage of the per-group scale and minimum rounds them by at most ~2.5e-4 for weights in [-1, 1]
FP16_EPS = 1e-3


def _linear_with_groups(groups: list[tuple[float, float]], group_size: int = 32, rows: int = 4) -> nn.Linear:
    """An ``nn.Linear`` whose inputs are ``len(groups)`` blocks of ``group_size``, block i uniform in ``groups[i]``."""
    gen = torch.Generator().manual_seed(0)
    blocks = [lo + (hi - lo) * torch.rand(rows, group_size, generator=gen) for lo, hi in groups]
    for block, (lo, hi) in zip(blocks, groups):  # pin each group's own min and max to the stated range
        block[:, 0], block[:, 1] = lo, hi
    linear = nn.Linear(group_size * len(groups), rows)
    with torch.no_grad():
        linear.weight.copy_(torch.cat(blocks, dim=1))
    return linear


@pytest.mark.parametrize(
    "lo, hi",
    [(0.5, 1.0), (-1.0, -0.5), (-1.0, 1.0), (-0.2, 0.9), (0.1, 0.1001), (3.0, 3.0)],
    ids=["positive", "negative", "mixed", "skewed", "narrow", "constant"],
)
def test_int4_group_reconstructs_within_half_a_step(lo: float, hi: float):
    linear = _linear_with_groups([(lo, hi), (-1.0, 1.0)])  # a second, mixed group in the same rows
    q = Int4Linear(linear, group_size=32)
    error = (q.weight() - linear.weight).abs().view(4, 2, 32).amax(dim=(0, 2))  # (groups,)
    bound = torch.tensor([(hi - lo) / 15, 2.0 / 15]) / 2 + FP16_EPS * max(1.0, abs(lo), abs(hi))
    assert (error <= bound).all(), f"max abs error per group {error.tolist()} > bound {bound.tolist()}"


def test_one_sign_group_is_not_collapsed_to_a_constant():
    linear = _linear_with_groups([(0.5, 1.0)])
    w = Int4Linear(linear, group_size=32).weight()
    assert w.unique().numel() > 8  # 16 levels available across [0.5, 1.0]
    assert torch.allclose(w.amin(1), torch.full((4,), 0.5), atol=FP16_EPS)
    assert torch.allclose(w.amax(1), torch.full((4,), 1.0), atol=FP16_EPS)


def test_quantized_model_output_close_for_positive_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.uniform_(0.5, 1.0)
    x = torch.randn(8, 64)
    expected = model(x)
    small = quantize_int4(copy.deepcopy(model), group_size=16)
    rel = (small(x) - expected).norm() / expected.norm()
    assert rel < 0.02

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


def test_narrow_group_gets_the_step_it_needs():
    """A group spanning 3e-4 needs a step of 2e-5, below the smallest normal fp16 (6.1e-5): the scale
    may be an fp16 subnormal (down to 2**-24), so the error stays within half of that ideal step."""
    lo, hi = -1e-4, 2e-4
    linear = _linear_with_groups([(lo, hi), (-1.0, 1.0)])
    q = Int4Linear(linear, group_size=32)
    error = (q.weight() - linear.weight.detach()).abs().view(4, 2, 32)[:, 0].amax()
    ideal_half_step = (hi - lo) / 15 / 2
    assert float(error) <= ideal_half_step * 1.01, f"max abs error {float(error):.3g} > {ideal_half_step:.3g}"
    assert float(q.scale[:, 0].float().max()) < torch.finfo(torch.float16).tiny  # a subnormal step


def old_format(linear: nn.Linear, group_size: int = 32) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The state dict Int4Linear had before offsets (``w = (code - zero) * scale``, fp16 ``scale`` and
    ``zero``), quantized as it was then, and the weight it dequantized to."""
    w = linear.weight.detach().float().view(linear.out_features, -1, group_size)
    lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    scale = ((hi - lo) / 15).clamp_min(1e-8)
    zero = (-lo / scale).round().clamp(0, 15)
    codes = (w / scale + zero).round().clamp(0, 15).to(torch.uint8)
    scale, zero = scale.squeeze(-1).half(), zero.squeeze(-1).half()
    weight = (codes.float() - zero.float().unsqueeze(-1)) * scale.float().unsqueeze(-1)
    flat = codes.view(linear.out_features, -1)
    state = {"packed": flat[:, 0::2] | (flat[:, 1::2] << 4), "scale": scale, "zero": zero, "bias": linear.bias.detach()}
    return state, weight.view(linear.out_features, -1)


def test_old_zero_point_state_dict_loads_as_offsets():
    linear = _linear_with_groups([(-1.0, 1.0), (-0.2, 0.9)])
    state, expected = old_format(linear)
    q = Int4Linear(nn.Linear(64, 4), group_size=32)
    q.load_state_dict(state)  # strict: ``zero`` becomes ``offset``
    assert "zero" not in q.state_dict() and q.offset.dtype == torch.float16
    torch.testing.assert_close(q.weight(), expected, rtol=0, atol=1e-3 * float(q.scale.float().max()))


def test_old_pickled_module_converts_on_unpickling():
    """A whole module pickled in the old format (``deepseek compress`` saves ``model.pt`` with torch.save)."""
    import io

    linear = _linear_with_groups([(-1.0, 1.0), (0.5, 1.0)])
    state, expected = old_format(linear)
    old = Int4Linear(linear, group_size=32)
    del old._buffers["offset"]  # rebuild the old layout: packed, scale, zero
    old._load_state_dict_pre_hooks.clear()
    for name in ("packed", "scale", "zero"):
        old.register_buffer(name, state[name])
    buffer = io.BytesIO()
    torch.save(nn.Sequential(old), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)[0]
    assert "zero" not in dict(loaded.named_buffers()) and "offset" in dict(loaded.named_buffers())
    torch.testing.assert_close(loaded.weight(), expected, rtol=0, atol=1e-3 * float(loaded.scale.float().max()))
    x = torch.randn(3, 64)
    torch.testing.assert_close(loaded(x), x @ expected.T + linear.bias.detach(), rtol=1e-4, atol=1e-4)
    loaded.load_state_dict(state)  # and it still takes an old state dict afterwards

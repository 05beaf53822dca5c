"""Experimental binary and ternary weights (``Quantizer(bit_width=1 | 2)``), packed four per byte.

Ternary follows TWN (Li et al., 2016): per output unit, weights below ``0.7 * mean|w|`` become 0,
the rest ``+-alpha`` with ``alpha`` the mean magnitude of the kept ones. Binary is
``alpha * sign(w)`` with ``alpha = mean|w|`` (XNOR-Net's weight scaling). Without quantization-aware
training most models lose accuracy at these levels: measure before you use them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from deepseek.compress.int4 import swap_linears


class TernaryLinear(nn.Module):
    """``nn.Linear`` whose weights are ``alpha[unit] * code`` with ``code`` in {-1, 0, +1}.

    Buffers: ``packed`` (out, ceil(in / 4)) uint8 of 2-bit codes, ``alpha`` (out,) fp16.
    """

    def __init__(self, linear: nn.Linear, binary: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features, self.binary = linear.in_features, linear.out_features, binary
        w = linear.weight.detach().float()
        magnitude = w.abs()
        if binary:
            codes, alpha = torch.where(w >= 0, 1, -1), magnitude.mean(1)
        else:
            keep = magnitude > 0.7 * magnitude.mean(1, keepdim=True)
            codes = torch.sign(w).long() * keep
            alpha = (magnitude * keep).sum(1) / keep.sum(1).clamp_min(1)
        stored = F.pad((codes + 1).to(torch.uint8), (0, (-w.shape[1]) % 4))  # {-1, 0, 1} -> {0, 1, 2}
        quads = stored.view(w.shape[0], -1, 4)
        self.register_buffer("packed", quads[..., 0] | quads[..., 1] << 2 | quads[..., 2] << 4 | quads[..., 3] << 6)
        self.register_buffer("alpha", alpha.half())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def weight(self) -> torch.Tensor:
        """The dequantized fp32 weight ``(out, in)``."""
        codes = torch.stack([(self.packed >> s) & 0b11 for s in (0, 2, 4, 6)], dim=-1).view(self.out_features, -1)
        return (codes[:, : self.in_features].float() - 1) * self.alpha.float().unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (..., in) -> (..., out)."""
        return F.linear(x, self.weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def quantize_lowbit(model: nn.Module, binary: bool = False) -> nn.Module:
    """Replace every ``nn.Linear`` (in place) with :class:`TernaryLinear`; returns ``model``."""
    return swap_linears(model, lambda linear: TernaryLinear(linear, binary))

"""INT4 weight-only, group-wise: ``Int4Linear`` keeps two 4-bit codes per byte.

torchao's int4 weight-only kernels do not run on CPUs without their packing support (every
packing format failed on this project's AVX2 machine), so the weights are stored packed here and
dequantized to fp32 for each forward: an 8x smaller ``nn.Linear`` weight, not a faster one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


class Int4Linear(nn.Module):
    """``nn.Linear`` with asymmetric 4-bit weights, one scale and zero point per ``group_size`` inputs.

    Buffers: ``packed`` (out, in_padded // 2) uint8, ``scale`` and ``zero`` (out, groups) fp16.
    """

    def __init__(self, linear: nn.Linear, group_size: int = 32) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group_size = linear.in_features, linear.out_features, group_size
        w = linear.weight.detach().float()
        pad = (-w.shape[1]) % group_size
        w = F.pad(w, (0, pad)).view(w.shape[0], -1, group_size)  # (out, groups, group_size)
        lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        scale = ((hi - lo) / 15).clamp_min(1e-8)
        zero = (-lo / scale).round().clamp(0, 15)
        codes = (w / scale + zero).round().clamp(0, 15).to(torch.uint8).view(w.shape[0], -1)
        self.register_buffer("packed", codes[:, 0::2] | (codes[:, 1::2] << 4))
        self.register_buffer("scale", scale.squeeze(-1).half())
        self.register_buffer("zero", zero.squeeze(-1).half())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def weight(self) -> torch.Tensor:
        """The dequantized fp32 weight ``(out, in)``."""
        codes = torch.stack([self.packed & 0xF, self.packed >> 4], dim=-1).view(self.out_features, -1, self.group_size)
        w = (codes.float() - self.zero.float().unsqueeze(-1)) * self.scale.float().unsqueeze(-1)
        return w.view(self.out_features, -1)[:, : self.in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (..., in) -> (..., out)."""
        return F.linear(x, self.weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}"


def swap_linears(model: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (in place) with ``make(linear)``; returns ``model``."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            setattr(model, name, make(child))
        else:
            swap_linears(child, make)
    return model


def quantize_int4(model: nn.Module, group_size: int = 32) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (in place) with :class:`Int4Linear`; returns ``model``."""
    return swap_linears(model, lambda linear: Int4Linear(linear, group_size))

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

SMALLEST_FP16_SUBNORMAL = 2.0**-24


class Int4Linear(nn.Module):
    """``nn.Linear`` with asymmetric 4-bit weights, one scale and offset per ``group_size`` inputs.

    A weight is ``offset + scale * code`` with ``code`` in [0, 15] (the GPTQ/AWQ "min + scale * q" form):
    ``offset`` is the group's minimum, so a group whose weights share one sign keeps all 16 levels.
    Buffers: ``packed`` (out, in_padded // 2) uint8, ``scale`` and ``offset`` (out, groups) fp16.
    The earlier zero-point format (a ``zero`` buffer, ``w = (code - zero) * scale``) converts on loading,
    from a state dict or from a whole pickled module (``offset = -zero * scale``).
    """

    def __init__(self, linear: nn.Linear, group_size: int = 32) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group_size = linear.in_features, linear.out_features, group_size
        w = linear.weight.detach().float()
        pad = (-w.shape[1]) % group_size
        w = F.pad(w, (0, pad)).view(w.shape[0], -1, group_size)  # (out, groups, group_size)
        offset, scale = _fp16_grid(w.amin(-1, keepdim=True), w.amax(-1, keepdim=True))
        # codes are rounded against the stored fp16 offset and scale, so rounding them costs no extra error
        codes = ((w - offset.float()) / scale.float()).round().clamp(0, 15).to(torch.uint8).view(w.shape[0], -1)
        self.register_buffer("packed", codes[:, 0::2] | (codes[:, 1::2] << 4))
        self.register_buffer("scale", scale.squeeze(-1))
        self.register_buffer("offset", offset.squeeze(-1))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.register_load_state_dict_pre_hook(_offset_from_zero_point)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "zero" in self._buffers:  # pickled in the zero-point format, before its pre-hook existed
            zero = self._buffers.pop("zero")
            self.register_buffer("offset", _offset(zero, self.scale))
            self.register_load_state_dict_pre_hook(_offset_from_zero_point)

    def weight(self) -> torch.Tensor:
        """The dequantized fp32 weight ``(out, in)``."""
        codes = torch.stack([self.packed & 0xF, self.packed >> 4], dim=-1).view(self.out_features, -1, self.group_size)
        w = self.offset.float().unsqueeze(-1) + codes.float() * self.scale.float().unsqueeze(-1)
        return w.view(self.out_features, -1)[:, : self.in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (..., in) -> (..., out)."""
        return F.linear(x, self.weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}"


def _fp16_grid(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp16 ``(offset, scale)`` per group from fp32 group ``lo``/``hi`` (same shapes) whose 16 levels span [lo, hi].

    The offset is rounded down and the scale up to fp16 values, so ``offset + 15 * scale >= hi`` still holds
    and no weight is clipped: the error stays within half a step.
    """
    offset = lo.half()
    offset = torch.where(offset.float() > lo, torch.nextafter(offset, offset.new_tensor(float("-inf"))), offset)
    # A constant group still needs a nonzero, representable step: the smallest fp16 SUBNORMAL, 2**-24, not
    # finfo.tiny (the smallest normal, 6.1e-5), which would coarsen every group narrower than ~9e-4.
    step = ((hi - offset.float()) / 15).clamp_min(SMALLEST_FP16_SUBNORMAL)
    scale = step.half()
    scale = torch.where(scale.float() < step, torch.nextafter(scale, scale.new_tensor(float("inf"))), scale)
    return offset, scale


def _offset(zero: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp16 ``offset`` of the zero-point format's ``zero`` and ``scale`` (out, groups): ``(code - zero) * scale
    == offset + code * scale``; rounding it to fp16 moves a weight by at most ~0.7% of its group's step."""
    return (-zero.float() * scale.float()).half()


def _offset_from_zero_point(module: nn.Module, state_dict: dict, prefix: str, *_: object) -> None:
    """Load-state-dict pre-hook: a zero-point state dict (``zero``, no ``offset``) gets its ``offset``."""
    if prefix + "zero" in state_dict and prefix + "offset" not in state_dict:
        zero = state_dict.pop(prefix + "zero")
        state_dict[prefix + "offset"] = _offset(zero, state_dict[prefix + "scale"])


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

"""Precision policy (``train.precision``): which autocast dtype (if any) and whether fp16 needs a loss scaler.

``auto`` picks the fastest safe choice: bf16-mixed on CUDA GPUs with native bf16, fp16-mixed on
older GPUs, and fp32 on CPUs. CPU autocast to bf16 was measured 7x-25x slower than fp32 on an AVX2
CPU without native bf16, and fp16 autocast on CPU is an emulation, so ``auto`` never picks either
there (ask for them explicitly to try).

``progressive`` is :class:`deepseek.amp.ProgressivePrecision`: fp16 autocast per module, with
unhealthy modules promoted to fp32 (and demoted again once stable).
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from deepseek.amp.progressive import ProgressivePrecision

PRECISIONS = ("auto", "fp32", "bf16-mixed", "fp16-mixed", "progressive")
_DTYPES = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> a concrete precision for ``device``; other values are checked and returned."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "fp16-mixed"
    return "fp32"


@dataclass
class PrecisionPolicy:
    """Autocast context factory and the GradScaler for one resolved precision."""

    precision: str
    device: torch.device
    scaler: torch.amp.GradScaler | None

    @classmethod
    def create(
        cls, precision: str, device: torch.device, model: nn.Module | None = None
    ) -> PrecisionPolicy | ProgressivePrecision:
        resolved = resolve_precision(precision, device)
        if resolved == "progressive":
            if model is None:
                raise ValueError("precision='progressive' needs the model")
            return ProgressivePrecision(model, torch.float16, device.type)
        scaler = torch.amp.GradScaler(device.type) if resolved == "fp16-mixed" else None
        return cls(resolved, device, scaler)

    @property
    def dtype(self) -> torch.dtype | None:
        return _DTYPES.get(self.precision)

    def autocast(self) -> ContextManager[Any]:
        # A disabled torch.autocast still costs ~4 us per entry; fp32 takes a free null context.
        dtype = _DTYPES.get(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

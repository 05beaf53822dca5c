"""``deepseek.amp``: ``auto_cast`` and ``GradScaler`` over ``torch.autocast`` / ``torch.amp.GradScaler``.

Document 000's loop runs as written::

    scaler = GradScaler(init_scale=2**10, growth_interval=1000)
    with auto_cast():
        loss = model(x).sum()
    scaler.scale(loss).backward(); scaler.step(optimizer); scaler.update()

What ds adds: the device comes from the call (the tensors or modules a decorated function receives)
or the default device, and the dtype defaults per device (bfloat16 on CPUs and on GPUs that support
it, float16 on older GPUs), so one line works on CPU and CUDA.

Every precision mechanism lives in this package: the Trainer's ``train.precision`` policy
(:mod:`~deepseek.amp.policy`), progressive precision (:mod:`~deepseek.amp.progressive`), the
per-parameter ``MixedPrecision`` optimizer (:mod:`~deepseek.amp.mixed_precision`, also
``deepseek.optimizer.MixedPrecision``) and ``MixedPrecisionTrainer`` (:mod:`~deepseek.amp.mp_trainer`,
also ``deepseek.optim.MixedPrecisionTrainer``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.nn as nn

F = TypeVar("F", bound=Callable[..., Any])


def default_device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device_type: str) -> torch.dtype:
    """bfloat16 where it is supported natively, else float16 (GPUs before Ampere)."""
    if device_type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def _device_of(values: Any) -> str | None:
    for v in values:
        if isinstance(v, torch.Tensor):
            return v.device.type
        if isinstance(v, nn.Module):
            p = next(v.parameters(), None)
            if p is not None:
                return p.device.type
    return None


class auto_cast:  # noqa: N801  (the documents' name)
    """Context manager and decorator over ``torch.autocast`` with the device and dtype resolved for you."""

    def __init__(
        self,
        dtype: torch.dtype | None = None,
        enabled: bool = True,
        device_type: str | None = None,
        cache_enabled: bool = True,
    ) -> None:
        self.dtype, self.enabled, self.device_type, self.cache_enabled = dtype, enabled, device_type, cache_enabled
        self._stack: list[Any] = []

    def _autocast(self, device_type: str | None) -> torch.autocast:
        device = device_type or self.device_type or default_device_type()
        return torch.autocast(
            device, dtype=self.dtype or default_dtype(device), enabled=self.enabled, cache_enabled=self.cache_enabled
        )

    def __enter__(self) -> auto_cast:
        ctx = self._autocast(None)
        ctx.__enter__()
        self._stack.append(ctx)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.pop().__exit__(*exc)

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self._autocast(self.device_type or _device_of([*args, *kwargs.values()])):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


class GradScaler(torch.amp.GradScaler):
    """``torch.amp.GradScaler`` for the default device (or ``device``); the same methods and state."""

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True, device: str | None = None) -> None:  # fmt: skip
        super().__init__(device or default_device_type(), init_scale=init_scale, growth_factor=growth_factor,
                         backoff_factor=backoff_factor, growth_interval=growth_interval, enabled=enabled)  # fmt: skip


# Below the definitions: these modules use GradScaler and default_device_type from here.
from deepseek.amp.mixed_precision import MixedPrecision  # noqa: E402
from deepseek.amp.mp_trainer import MixedPrecisionTrainer, adaptive_clip_grad_  # noqa: E402
from deepseek.amp.policy import PRECISIONS, PrecisionPolicy, resolve_precision  # noqa: E402
from deepseek.amp.progressive import ProgressivePrecision  # noqa: E402

__all__ = [
    "PRECISIONS",
    "GradScaler",
    "MixedPrecision",
    "MixedPrecisionTrainer",
    "PrecisionPolicy",
    "ProgressivePrecision",
    "adaptive_clip_grad_",
    "auto_cast",
    "default_dtype",
    "resolve_precision",
]

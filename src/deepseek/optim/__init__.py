"""``ds.optim``: :mod:`torch.optim` and its LR schedulers, plus ds's registered builders.

``ds.optim.AdamW is torch.optim.AdamW`` and ``ds.optim.CosineAnnealingWarmRestarts is
torch.optim.lr_scheduler.CosineAnnealingWarmRestarts``. ds adds :class:`WarmupCosine` and the
registry entries that configs use (``optim: {name: adamw, lr: 1e-3}``), and re-exports
:class:`MixedPrecision` (per-parameter dtypes with fp32 masters) and :class:`MixedPrecisionTrainer`,
which live in :mod:`deepseek.amp` with the other precision code.
``deepseek.optimizer`` is another name for this module (document 004 imports from it).
"""

from __future__ import annotations

from typing import Any

import torch.optim as _torch_optim
import torch.optim.lr_scheduler as _torch_sched

from deepseek.amp import MixedPrecision, MixedPrecisionTrainer, adaptive_clip_grad_
from deepseek.optim.builders import build_optimizer, build_scheduler
from deepseek.optim.schedulers import WarmupCosine

__all__ = [
    "MixedPrecision",
    "MixedPrecisionTrainer",
    "WarmupCosine",
    "adaptive_clip_grad_",
    "build_optimizer",
    "build_scheduler",
]


def __getattr__(name: str) -> Any:
    for module in (_torch_optim, _torch_sched):
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module 'deepseek.optim' (torch.optim) has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(dir(_torch_optim)) | set(dir(_torch_sched)))

"""``deepseek.compress``: quantization (fp16/bf16, INT8 with calibration, INT4 weight-only), QAT, distillation, structured pruning.

``from deepseek.compress import Quantizer``; see :mod:`deepseek.compress.quantizer` and
:mod:`deepseek.compress.qat`.
"""

from __future__ import annotations

import importlib
from typing import Any

from deepseek.compress.quiet import quiet_third_party_noise

quiet_third_party_noise()  # before anything here imports torchao

# What needs no torchao is imported now (``prune`` must be the function, not the submodule of that name);
# what needs torchao on first use (PEP 562), so that Distiller, pruning and INT4 work without it.
from deepseek.compress.distill import Distiller  # noqa: E402
from deepseek.compress.int4 import Int4Linear, quantize_int4  # noqa: E402
from deepseek.compress.prune import PruneReport, prune  # noqa: E402

_NEEDS_TORCHAO = {
    "CalibrationObserver": "calibration",
    "clip_range": "calibration",
    "QATModel": "qat",
    "convert": "qat",
    "prepare_qat": "qat",
    "LowPrecision": "quantizer",
    "Quantizer": "quantizer",
    "size_bytes": "quantizer",
}


def __getattr__(name: str) -> Any:
    if name not in _NEEDS_TORCHAO:
        raise AttributeError(f"module 'deepseek.compress' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"deepseek.compress.{_NEEDS_TORCHAO[name]}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_NEEDS_TORCHAO})


__all__ = [
    "CalibrationObserver",
    "Distiller",
    "Int4Linear",
    "LowPrecision",
    "PruneReport",
    "QATModel",
    "Quantizer",
    "clip_range",
    "convert",
    "prepare_qat",
    "prune",
    "quantize_int4",
    "size_bytes",
]

"""``deepseek.compress``: quantization (fp16/bf16, INT8 with calibration, INT4 weight-only), QAT, distillation, structured pruning.

``from deepseek.compress import Quantizer``; see :mod:`deepseek.compress.quantizer` and
:mod:`deepseek.compress.qat`.
"""

from deepseek.compress.calibration import CalibrationObserver, clip_range
from deepseek.compress.distill import Distiller
from deepseek.compress.int4 import Int4Linear, quantize_int4
from deepseek.compress.prune import PruneReport, prune
from deepseek.compress.qat import QATModel, convert, prepare_qat
from deepseek.compress.quantizer import LowPrecision, Quantizer, size_bytes

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

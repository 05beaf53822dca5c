"""``deepseek.compress``: quantization (fp16/bf16, INT8 with calibration, INT4 weight-only).

``from deepseek.compress import Quantizer``; see :mod:`deepseek.compress.quantizer`.
"""

from deepseek.compress.calibration import CalibrationObserver, clip_range
from deepseek.compress.int4 import Int4Linear, quantize_int4
from deepseek.compress.quantizer import LowPrecision, Quantizer, size_bytes

__all__ = [
    "CalibrationObserver",
    "Int4Linear",
    "LowPrecision",
    "Quantizer",
    "clip_range",
    "quantize_int4",
    "size_bytes",
]

"""``deepseek.export``: ONNX (verified in ONNX Runtime, optionally optimized and INT8-quantized) and
``torch.export`` programs. ``deepseek export`` on the command line."""

from deepseek.export.onnx import (
    OnnxModule,
    TensorInputs,
    export_onnx,
    export_program,
    external_data_path,
    needs_external_data,
    onnx_session,
    onnx_size,
    onnx_variant,
    optimize_onnx,
    quantize_onnx,
    quantize_onnx_int4,
    run_onnx,
    verify_onnx,
)

__all__ = [
    "OnnxModule",
    "TensorInputs",
    "export_onnx",
    "export_program",
    "external_data_path",
    "needs_external_data",
    "onnx_session",
    "onnx_size",
    "onnx_variant",
    "optimize_onnx",
    "quantize_onnx",
    "quantize_onnx_int4",
    "run_onnx",
    "verify_onnx",
]

"""``deepseek.export``: ONNX (verified in ONNX Runtime, optionally optimized, transformer-fused and INT8-quantized),
``torch.export`` programs, OpenVINO IR (NNCF INT8), ExecuTorch ``.pte`` (XNNPACK), LiteRT ``.tflite``, Core ML
``.mlpackage`` and TensorRT engines. ``deepseek export`` on the command line.

The runtimes themselves (onnxruntime, openvino, nncf, executorch, ai-edge-litert, coremltools, torch-tensorrt)
are imported only when a function needs them, so importing this package needs none of the optional extras."""

from deepseek.export.coreml import describe_coreml, export_coreml
from deepseek.export.executorch import ExecuTorchModule, executorch_variant, export_executorch, lower_executorch
from deepseek.export.litert import LiteRTModule, export_litert, litert_variant, quantize_litert
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
from deepseek.export.openvino import (
    OpenVINOModule,
    export_openvino,
    openvino_variant,
    quantize_openvino,
    verify_openvino,
)
from deepseek.export.ort_fusion import fuse_transformer_onnx, fused_onnx_variant
from deepseek.export.tensorrt import export_tensorrt, verify_tensorrt

__all__ = [
    "ExecuTorchModule",
    "LiteRTModule",
    "OnnxModule",
    "OpenVINOModule",
    "TensorInputs",
    "describe_coreml",
    "executorch_variant",
    "export_coreml",
    "export_executorch",
    "export_litert",
    "export_onnx",
    "export_openvino",
    "export_program",
    "export_tensorrt",
    "external_data_path",
    "fuse_transformer_onnx",
    "fused_onnx_variant",
    "litert_variant",
    "lower_executorch",
    "needs_external_data",
    "onnx_session",
    "onnx_size",
    "onnx_variant",
    "openvino_variant",
    "optimize_onnx",
    "quantize_litert",
    "quantize_onnx",
    "quantize_onnx_int4",
    "quantize_openvino",
    "run_onnx",
    "verify_onnx",
    "verify_openvino",
    "verify_tensorrt",
]

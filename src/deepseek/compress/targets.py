"""The rows of the compression comparison: for each level, every backend that builds a variant of the model.

``variants(model, level, calib, example, method, workdir)`` -> ``{backend: (build, positional, size)}``:

- fp32: torch eager; ONNX Runtime; ONNX Runtime with its transformer fusions (dict inputs only, the
  MiniLM-like models they are for); OpenVINO; ExecuTorch (XNNPACK); LiteRT.
- fp16 / bf16: torch (a cast copy); bf16 also OpenVINO (the fp32 IR run with bf16 arithmetic).
- int8: static pt2e (calibrated, inductor kernels); torchao weight-only; ONNX Runtime dynamic INT8;
  OpenVINO with NNCF post-training INT8; ExecuTorch XNNPACK INT8; LiteRT INT8 (the last three calibrated
  on ``calib``).
- int4: torch, packed group-wise weight-only; ONNX Runtime's MatMulNBits (4-bit blocks of 32).

The export targets are imported inside their builders, so a target whose package (or module) is missing
is a row that says so when the comparison builds it, never an import error here. ``backends`` keeps the
rows of the named runtimes (:data:`RUNTIMES`); fp32 torch eager, the baseline, is always kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch.nn as nn

from deepseek.compress.quantizer import Quantizer, size_bytes

RUNTIMES = ("torch", "onnxruntime", "openvino", "executorch", "litert")
BASELINE = ("fp32", "torch eager")
# what `deepseek compress` saves for a chosen row of each runtime (torch rows: model.pt / model.pt2)
ARTIFACT_NAMES = {"onnxruntime": "model.onnx", "openvino": "model.xml", "executorch": "model.pte",
                  "litert": "model.tflite"}  # fmt: skip

Builder = tuple[Callable[[], nn.Module], bool, Callable[[nn.Module], int]]


def runtime_of(backend: str) -> str:
    """The runtime a row's backend runs in: its first word when that names one of :data:`RUNTIMES`, else torch
    (``pt2e static, kl`` and ``torchao weight-only`` run in torch)."""
    word = backend.split()[0].rstrip(",")
    return word if word in RUNTIMES else "torch"


def check_backends(backends: Sequence[str] | None) -> list[str] | None:
    """``backends`` validated against :data:`RUNTIMES` (ValueError naming the unknown ones); None = all."""
    if backends is None:
        return None
    unknown = [b for b in backends if b not in RUNTIMES]
    if unknown or not backends:
        raise ValueError(f"backends must be some of {', '.join(RUNTIMES)}; got {list(backends)}")
    return list(backends)


def variants(
    model: nn.Module,
    level: str,
    calib: list[Any],
    example: Any,
    method: str,
    workdir: Path,
    backends: Sequence[str] | None = None,
) -> dict[str, Builder]:
    """``{backend: (build, takes positional tensors, size in bytes)}`` for one level, only the rows of
    ``backends`` (runtime names; None = every runtime) plus fp32 torch eager."""
    rows = _all_variants(model, level, calib, example, method, Path(workdir))
    keep = check_backends(backends)
    if keep is None:
        return rows
    return {name: b for name, b in rows.items() if runtime_of(name) in keep or (level, name) == BASELINE}


def _all_variants(model: nn.Module, level: str, calib: list[Any], example: Any, method: str, workdir: Path
                  ) -> dict[str, Builder]:  # fmt: skip
    def target(kind: str, quantize: str | None) -> Builder:  # an export target: called as model(x) or model(dict)
        sub = workdir / f"{kind}-{quantize or 'fp32'}"
        return (lambda: _export_target(kind, model, example, sub, quantize, calib), False, size_bytes)

    if level == "fp32":
        fused = {"onnxruntime fused": (lambda: _fused(model, example, workdir / "fused"), True, size_bytes)}
        return {
            "torch eager": (lambda: model, False, size_bytes),
            "onnxruntime": (lambda: _onnx(model, example, workdir / "onnx-fp32", None), True, size_bytes),
            **(fused if isinstance(example, dict) else {}),  # the fusions are for transformers (dict inputs)
            "openvino": target("openvino", None),
            "executorch xnnpack": target("executorch", None),
            "litert": target("litert", None),
        }
    if level == "bf16":  # OpenVINO's CPU plugin runs the fp32 IR in bf16 where the CPU has bf16 units
        return {"torch": (lambda: Quantizer(model, bit_width=16, dtype=level).compress(), False, size_bytes),
                "openvino bf16": (lambda: _openvino_bf16(model, example, workdir / "openvino-bf16", calib), False,
                                  size_bytes)}  # fmt: skip
    if level == "fp16":
        return {"torch": (lambda: Quantizer(model, bit_width=16, dtype=level).compress(), False, size_bytes)}
    if level == "int4":
        return {
            "torch (packed)": (lambda: Quantizer(model, bit_width=4).compress(), False, size_bytes),
            "onnxruntime MatMulNBits": (lambda: _onnx(model, example, workdir / "onnx-int4", "int4"), True, size_bytes),
        }  # fmt: skip
    return {
        f"pt2e static, {method}": (lambda: Quantizer(model, method, calib_data=calib, backend="pt2e").compress(), False, size_bytes),
        "torchao weight-only": (lambda: Quantizer(model, calib_data=calib, backend="torchao").compress(), False, size_bytes),
        "onnxruntime dynamic": (lambda: _onnx(model, example, workdir / "onnx-int8", "int8"), True, size_bytes),
        "openvino nncf": target("openvino", "int8"),
        "executorch xnnpack int8": target("executorch", "int8"),
        "litert int8": target("litert", "int8"),
    }  # fmt: skip


def _onnx(model: nn.Module, example: Any, workdir: Path, quantize: str | None) -> nn.Module:
    from deepseek.export import onnx_variant

    return onnx_variant(model, example, workdir, quantize)


def _fused(model: nn.Module, example: Any, workdir: Path) -> nn.Module:
    from deepseek.export.ort_fusion import fused_onnx_variant

    return fused_onnx_variant(model, example, workdir)


def _openvino_bf16(model: nn.Module, example: Any, workdir: Path, calib: list[Any]) -> nn.Module:
    """The fp32 IR compiled with ``INFERENCE_PRECISION_HINT=bf16`` (fp32 weights on disk, bf16 arithmetic)."""
    from deepseek.export.openvino import OpenVINOModule

    return OpenVINOModule(_export_target("openvino", model, example, workdir, None, calib).path, precision="bf16")


def _export_target(
    kind: str, model: nn.Module, example: Any, workdir: Path, quantize: str | None, calib: list[Any]
) -> nn.Module:
    """``deepseek.export.<kind>.<kind>_variant`` (the shared variant API), imported only when the row is built."""
    if kind == "openvino":
        from deepseek.export.openvino import openvino_variant as build
    elif kind == "executorch":
        from deepseek.export.executorch import executorch_variant as build
    else:
        from deepseek.export.litert import litert_variant as build
    workdir.mkdir(parents=True, exist_ok=True)
    return build(model, example, workdir, quantize=quantize, calib=calib or None)

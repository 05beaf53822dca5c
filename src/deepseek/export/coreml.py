"""Core ML export (``.mlpackage``, an ML program) through ``coremltools``, checked by reading the saved spec.

::

    path = export_coreml(model, (x,), "model.mlpackage")                    # fp32 compute precision
    path = export_coreml(model, (x,), "model.int8.mlpackage", quantize="int8")
    describe_coreml(path)   # {"inputs": [{name, shape, dtype, flexible}], "outputs": [...], "ops": {op: count}}

Running a Core ML model needs macOS (the Core ML framework); on Linux coremltools converts and saves but
cannot predict. So this module never predicts: :func:`describe_coreml` reads the saved program (inputs,
outputs, MIL op counts) and the tests check those. Verify predictions on a Mac with
``coremltools.models.MLModel(path).predict({...})``.

Conversion: ``ct.convert`` accepts a ``torch.export`` ExportedProgram or a TorchScript trace. Both work
with torch 2.13 on the CNNs (coremltools 9.0 warns that it was tested up to torch 2.7); ``source="export"``
(the default) is tried first and the trace second, and an error names both failures. The exported
program's inputs are renamed to ``input_names`` and a single output to ``output``. The batch axis is
flexible (1..``max_batch``; default: the example's batch, at least 32).
``quantize="int8"``: ``coremltools.optimize.coreml.linear_quantize_weights`` (symmetric per-channel INT8
weights, stored as ``constexpr_affine_dequantize`` ops for the iOS16/macOS13 target used here); activations
stay fp32. The compute precision is FLOAT32 so that outputs can be compared with torch's.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from deepseek.export.onnx import TensorInputs

INSTALL_HINT = "pip install 'deepseek-framework[coreml]'"
QUANTIZE_CHOICES = (None, "int8")
SOURCES = ("export", "trace")


def _ct() -> Any:
    log = logging.getLogger("coremltools")
    log.setLevel(max(log.level, logging.ERROR))  # the untested-torch/sklearn notices on import
    try:
        import coremltools as ct
    except ImportError as e:
        raise ImportError(f"Core ML export needs the coremltools package: {INSTALL_HINT} ({e})") from None
    return ct


def _tensors(inputs: Any, names: Sequence[str]) -> tuple[torch.Tensor, ...]:
    if isinstance(inputs, dict):
        return tuple(inputs[n] for n in names)
    return (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)


def _from_export(ct: Any, graph: nn.Module, tensors: tuple, names: list[str], max_batch: int) -> Any:
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    per_input = tuple({0: batch} for _ in tensors)
    shapes = (per_input,) if isinstance(graph, TensorInputs) else per_input
    program = torch.export.export(graph, tensors, dynamic_shapes=shapes).run_decompositions({})
    model = ct.convert(program, convert_to="mlprogram", compute_precision=ct.precision.FLOAT32,
                       minimum_deployment_target=ct.target.iOS16)  # fmt: skip
    return model


def _from_trace(ct: Any, graph: nn.Module, tensors: tuple, names: list[str], max_batch: int) -> Any:
    traced = torch.jit.trace(graph, tensors, strict=False)
    types = [
        ct.TensorType(
            name=n,
            shape=(ct.RangeDim(1, max_batch, t.shape[0]), *t.shape[1:]),
            dtype=np.int32 if t.dtype == torch.int64 else t.numpy().dtype,
        )
        for n, t in zip(names, tensors)
    ]  # fmt: skip  (Core ML has no int64 inputs: integer ids are fed as int32)
    return ct.convert(traced, inputs=types, convert_to="mlprogram", compute_precision=ct.precision.FLOAT32,
                      minimum_deployment_target=ct.target.iOS16)  # fmt: skip


def _rename(ct: Any, model: Any, names: list[str]) -> Any:
    """Inputs named ``names`` (the exported ones carry forward()'s argument names), a single output ``output``."""
    spec = model.get_spec()
    wanted = [(f.name, n) for f, n in zip(spec.description.input, names)]
    if len(spec.description.output) == 1:
        wanted.append((spec.description.output[0].name, "output"))
    for old, new in wanted:
        if old != new:
            ct.utils.rename_feature(spec, old, new)
    return ct.models.MLModel(spec, weights_dir=model.weights_dir, skip_model_load=True)


def _quantize_int8(ct: Any, model: Any) -> Any:
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

    # weight_threshold=0: quantize every weight, also the small first conv that the default (2048) would skip
    config = OptimizationConfig(global_config=OpLinearQuantizerConfig(mode="linear_symmetric", weight_threshold=0))
    return linear_quantize_weights(model, config=config)


def export_coreml(
    model: nn.Module,
    inputs: Any,
    path: str | Path,
    *,
    quantize: str | None = None,
    input_names: Sequence[str] | None = None,
    max_batch: int | None = None,
    source: str = "export",
) -> Path:
    """Convert ``model`` called on ``inputs`` (a tensor, a tuple or a dict of (N, ...) tensors) to an ML program
    saved as the ``.mlpackage`` directory ``path``; returns the path. Prediction needs macOS (see the module doc).

    ``source``: "export" (torch.export) or "trace" (TorchScript) tried first; the other is the fallback.
    Raises RuntimeError with one line per failed converter when neither converts.
    """
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize={quantize!r} is not supported; choose one of {list(QUANTIZE_CHOICES)}")
    if source not in SOURCES:
        raise ValueError(f"source={source!r} is not supported; choose one of {list(SOURCES)}")
    names = list(input_names or (list(inputs) if isinstance(inputs, dict) else []))
    tensors = _tensors(inputs, names)
    if not names:
        names = ["input"] if len(tensors) == 1 else [f"input_{i}" for i in range(len(tensors))]
    graph = TensorInputs(model, names).eval() if isinstance(inputs, dict) else model.eval()
    max_batch = max_batch or max(32, tensors[0].shape[0])
    if max_batch < tensors[0].shape[0]:
        raise ValueError(f"max_batch={max_batch} is smaller than the example's batch {tensors[0].shape[0]}")
    ct = _ct()
    converters = {"export": _from_export, "trace": _from_trace}
    errors: list[str] = []
    converted = None
    log = logging.getLogger("coremltools")
    level, log.level = log.level, logging.CRITICAL  # it logs a failing op's trace; the RuntimeError below says it
    for name in (source, *(s for s in SOURCES if s != source)):
        try:
            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
                warnings.catch_warnings(),
                torch.no_grad(),
            ):  # fmt: skip  (progress bars, renaming notices)
                warnings.simplefilter("ignore")
                converted = converters[name](ct, graph, tensors, names, max_batch)
            break
        except Exception as e:  # a converter's failure on this model: try the other, then report both
            errors.append(f"{name}: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}")
    log.level = level
    if converted is None:
        raise RuntimeError(f"Core ML conversion of {type(model).__name__} failed ({'; '.join(errors)})")
    converted = _rename(ct, converted, names)
    if quantize == "int8":
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = _quantize_int8(ct, converted)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    converted.save(str(path))
    return path


def _features(ct: Any, features: Any) -> list[dict[str, Any]]:
    array_type = ct.proto.FeatureTypes_pb2.ArrayFeatureType
    out = []
    for f in features:
        array = f.type.multiArrayType
        ranges = array.shapeRange.sizeRanges
        flexible = {i: [r.lowerBound, r.upperBound] for i, r in enumerate(ranges) if r.lowerBound != r.upperBound}
        out.append({"name": f.name, "shape": list(array.shape), "dtype": array_type.ArrayDataType.Name(array.dataType),
                    "flexible": flexible})  # fmt: skip
    return out


def _count_ops(block: Any, counts: Counter) -> None:
    for op in block.operations:
        counts[op.type] += 1
        for inner in op.blocks:  # control flow (cond, while_loop) holds nested blocks
            _count_ops(inner, counts)


def describe_coreml(path: str | Path) -> dict[str, Any]:
    """What a saved ``.mlpackage`` holds, read without loading it into Core ML (works on Linux).

    ``{"inputs": [{"name", "shape", "dtype", "flexible": {axis: [lo, hi]}}], "outputs": [...],
    "ops": {MIL op type: count}, "size_bytes": bytes on disk}``; ``shape`` is the default shape.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"path={str(path)!r} does not exist; expected a .mlpackage written by export_coreml")
    ct = _ct()
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    counts: Counter = Counter()
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            _count_ops(block, counts)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {"inputs": _features(ct, spec.description.input), "outputs": _features(ct, spec.description.output),
            "ops": dict(counts), "size_bytes": size}  # fmt: skip

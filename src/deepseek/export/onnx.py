"""ONNX export through ``torch.onnx.export(dynamo=True)``, verified in ONNX Runtime.

::

    path = export_onnx(model, (x,), "model.onnx", dynamic={"input": {0: "batch"}})
    diff = verify_onnx(path, model, (x_other_batch,))       # max |onnx - torch|
    optimize_onnx(path, "model.opt.onnx")                     # ORT graph optimizations, saved
    quantize_onnx(path, "model.int8.onnx", model, (x,))       # ORT dynamic INT8, the more accurate weight type

ds adds: ``dynamic`` in the familiar ``{input: {axis: name}}`` form (translated to
``torch.export.Dim``), verification against torch on real inputs, and a checked choice of the
INT8 weight type (unsigned per-channel weights stayed accurate on a transformer where signed
ones did not, so both are tried and compared).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from deepseek.export._variants import first_tensor, split_example


class TensorInputs(nn.Module):
    """Wraps a model that takes a dict of tensors (``{"input_ids": ..., "attention_mask": ...}``)
    so that it takes them positionally in ``names`` order, which export needs."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model, self.names = model, list(names)

    def forward(self, *tensors: torch.Tensor) -> Any:
        return self.model(dict(zip(self.names, tensors)))


def _dynamic_shapes(model: nn.Module, names: Sequence[str], dynamic: dict[str, dict[int, str]] | None) -> tuple | None:
    if not dynamic:
        return None
    unknown = set(dynamic) - set(names)
    if unknown:
        raise ValueError(f"dynamic names unknown inputs {sorted(unknown)}; the inputs are {list(names)}")
    dims: dict[str, torch.export.Dim] = {}
    shapes = tuple(
        {axis: dims.setdefault(label, torch.export.Dim(label)) for axis, label in dynamic.get(n, {}).items()} or None
        for n in names
    )
    kinds = [p.kind for p in inspect.signature(model.forward).parameters.values()]
    # forward(*tensors) (TensorInputs) is one input to torch.export: a tuple, so its shapes nest once
    return (shapes,) if kinds == [inspect.Parameter.VAR_POSITIONAL] else shapes


def export_onnx(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: str | Path,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] = ("output",),
    dynamic: dict[str, dict[int, str]] | None = None,
    opset: int | None = None,
) -> Path:
    """Export ``model`` (in eval mode) called on ``inputs`` to ``path``; returns the path.

    ``dynamic={"input": {0: "batch"}}`` makes axis 0 of input ``input`` dynamic; axes sharing a
    name share a size. A model whose weights fit ONNX's 2 GB protobuf limit is one self-contained
    file; a larger one keeps its weights in ``<path>.data`` beside it (a warning says so: copy both).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    external = needs_external_data(model)
    stale = external_data_path(path)
    if not external and stale.exists():  # left by an earlier export to this path; nothing reads it now
        stale.unlink()
    names = list(input_names or ([f"input_{i}" for i in range(len(inputs))] if len(inputs) > 1 else ["input"]))
    model = model.eval()
    kwargs: dict[str, Any] = {"opset_version": opset} if opset is not None else {}
    shapes = _dynamic_shapes(model, names, dynamic)  # a wrong name is the caller's error, not a reason to fall back
    progress = io.StringIO()  # the exporter prints its progress; show it only if it fails
    quiet = logging.getLogger("torch.onnx")  # and logs a warning per missing torchvision op
    level, quiet.level = quiet.level, logging.ERROR
    try:
        with contextlib.redirect_stdout(progress), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's own deprecation notices
            torch.onnx.export(
                model, tuple(inputs), str(path), dynamo=True, input_names=names, output_names=list(output_names),
                dynamic_shapes=shapes, verbose=False, external_data=external,
                **kwargs,
            )  # fmt: skip
    except Exception as err:
        if not _torchscript_export(model, inputs, path, names, output_names, dynamic, opset):
            print(progress.getvalue(), end="")
            raise
        warnings.warn(
            f"{path}: torch.export could not trace this model ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160]}); exported with torch's TorchScript exporter instead",
            stacklevel=2,
        )
    finally:
        quiet.level = level
    if external:
        warnings.warn(
            f"{path}: the weights exceed ONNX's 2 GB single-file limit, so they are in {external_data_path(path)}; "
            "keep that file beside the model (copy both)",
            stacklevel=2,
        )
    return path


def _torchscript_export(model: nn.Module, inputs: Sequence[torch.Tensor], path: Path, names: list[str],
                        output_names: Sequence[str], dynamic: dict[str, dict[int, str]] | None,
                        opset: int | None) -> bool:  # fmt: skip
    """The fallback for a graph torch.export cannot trace, e.g. one that branches on a tensor's values (onnx2torch's
    Reshape, so ``ds.models.from_onnx`` models): torch's tracing exporter. Opset 17 by default, which onnx2torch reads
    back (it has no converters for opset 19's Reshape/Shape/Cast). False when it fails too."""
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # its tracer warnings on shape arithmetic
            torch.onnx.export(model, tuple(inputs), str(path), dynamo=False, opset_version=opset or 17,
                              input_names=names, output_names=list(output_names), dynamic_axes=dynamic or None)  # fmt: skip
    except Exception:  # noqa: BLE001 - the caller raises torch.export's error, the one worth reading
        return False
    return True


# ONNX files are protobufs, which cannot exceed 2 GiB; leave room for the graph itself.
SINGLE_FILE_LIMIT = 2**31 - 2**26


def needs_external_data(model: nn.Module) -> bool:
    """Whether ``model``'s weights (parameters and buffers) are too large for one ONNX file."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}.values()  # shared weights once
    return sum(t.numel() * t.element_size() for t in tensors) > SINGLE_FILE_LIMIT


def external_data_path(path: str | Path) -> Path:
    """Where the exporter puts the weights of a model too large for one file: ``<path>.data``."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def onnx_size(path: str | Path) -> int:
    """Bytes on disk of an ONNX model, with the external-data file the exporter writes for large models."""
    path = Path(path)
    data = external_data_path(path)
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def onnx_session(model: str | Path | bytes) -> Any:
    """A CPU ONNX Runtime session for a model file or the model's bytes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), inputs)}
    return session.run(None, feeds)


class OnnxModule(nn.Module):
    """An ONNX Runtime session behind an ``nn.Module`` call, so torch code can evaluate and time it.

    ``module(*tensors)`` or ``module({name: tensor})`` -> the first output as a CPU torch tensor.
    ``model`` is a file (kept where it is) or the serialized model's bytes (held in memory).
    """

    def __init__(self, model: str | Path | bytes) -> None:
        super().__init__()
        self.path = None if isinstance(model, bytes) else Path(model)
        self.model_bytes = model if isinstance(model, bytes) else None
        self.session = onnx_session(model)

    def forward(self, *inputs: Any) -> torch.Tensor:
        if len(inputs) == 1 and isinstance(inputs[0], dict):
            inputs = tuple(inputs[0][i.name] for i in self.session.get_inputs())
        return torch.from_numpy(run_onnx(self.session, inputs)[0])

    def size_bytes(self) -> int:
        return len(self.model_bytes) if self.model_bytes is not None else onnx_size(self.path)  # type: ignore[arg-type]

    def save(self, path: str | Path) -> Path:
        """Write the model to ``path`` (with its external-data file, when it has one)."""
        path = Path(path)
        if self.model_bytes is not None:
            path.write_bytes(self.model_bytes)
            return path
        shutil.copy(self.path, path)  # type: ignore[arg-type]
        data = external_data_path(self.path)  # type: ignore[arg-type]
        if data.exists():
            shutil.copy(data, external_data_path(path))
        return path


def onnx_variant(model: nn.Module, example: Any, workdir: str | Path, quantize: str | None = None) -> OnnxModule:
    """``model`` exported (any batch size) and loaded in ONNX Runtime, optionally INT8 (dynamic) or INT4
    (MatMulNBits). ``example``: a tensor, a tuple of tensors or a dict of tensors (MiniLM's inputs)."""
    workdir = Path(workdir)
    names, tensors = split_example(example)
    if isinstance(example, dict):  # export takes the tensors positionally
        model = TensorInputs(model, names).eval()
    path = export_onnx(
        model, tensors, workdir / "model.onnx", input_names=names, dynamic={n: {0: "batch"} for n in names}
    )
    if quantize == "int8":
        path = quantize_onnx(path, workdir / "model.int8.onnx", model, tensors)["path"]
    elif quantize == "int4":
        path = quantize_onnx_int4(path, workdir / "model.int4.onnx")
    return OnnxModule(path)


@torch.no_grad()
def verify_onnx(path: str | Path, model: nn.Module, inputs: Sequence[torch.Tensor]) -> float:
    """Largest absolute difference between ONNX Runtime's first output and torch's on ``inputs``."""
    expected = first_tensor(model.eval()(*inputs)).float().cpu().numpy()
    got = run_onnx(onnx_session(path), inputs)[0]
    if got.shape != expected.shape:
        raise ValueError(f"ONNX output shape {got.shape} differs from torch's {expected.shape}")
    return float(np.abs(got.astype(np.float32) - expected).max())


def optimize_onnx(path: str | Path, out: str | Path) -> Path:
    """Apply ONNX Runtime's graph optimizations (all levels) and save the optimized model to ``out``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Path(out)


def quantize_onnx(
    path: str | Path, out: str | Path, model: nn.Module, inputs: Sequence[torch.Tensor]
) -> dict[str, Any]:
    """ORT dynamic INT8 (weights INT8 per channel, activations quantized at run time).

    Tries unsigned and signed weights, keeps the one closer to torch on ``inputs`` and returns
    ``{"path", "weight_type", "max_abs_diff", "tried": {type: diff}}``.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = Path(out)
    tried: dict[str, float] = {}
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # ORT logs a pre-processing hint on every call
    try:
        for weight_type in (QuantType.QUInt8, QuantType.QInt8):
            candidate = out.with_suffix(f".{weight_type.name.lower()}.onnx")
            quantize_dynamic(str(path), str(candidate), weight_type=weight_type, per_channel=True)
            tried[weight_type.name] = verify_onnx(candidate, model, inputs)
    finally:
        root.level = level
    best = min(tried, key=tried.__getitem__)
    for name in tried:
        candidate = out.with_suffix(f".{name.lower()}.onnx")
        if name == best:
            candidate.replace(out)
        else:
            candidate.unlink()
    return {"path": out, "weight_type": best, "max_abs_diff": tried[best], "tried": tried}


def quantize_onnx_int4(path: str | Path, out: str | Path, block_size: int = 32) -> Path:
    """ORT's 4-bit weight-only quantizer: MatMul weights become MatMulNBits blocks of ``block_size``."""
    import onnx

    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    root.level, root.handlers[:] = saved[0], saved[1]  # that module calls logging.basicConfig(INFO) on import

    chatty = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")  # one INFO line per node
    level, chatty.level = chatty.level, logging.WARNING
    try:
        quantizer = MatMulNBitsQuantizer(onnx.load(str(path)), bits=4, block_size=block_size, is_symmetric=True)
        quantizer.process()
    finally:
        chatty.level = level
    if not any(node.op_type == "MatMulNBits" for node in quantizer.model.model.graph.node):
        raise ValueError("no MatMul with constant weights to quantize (2-D Linear layers export as Gemm)")
    quantizer.model.save_model_to_file(str(out), use_external_data_format=False)
    return Path(out)


def export_program(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: str | Path,
    *,
    dynamic: dict[int, dict[int, str]] | None = None,
) -> Path:
    """``torch.export`` the model and save the ExportedProgram (``.pt2``; load with ``torch.export.load``).

    ``dynamic`` maps input positions to ``{axis: name}``.
    """
    names = [str(i) for i in range(len(inputs))]
    shapes = _dynamic_shapes(model, names, {str(k): v for k, v in (dynamic or {}).items()})
    program = torch.export.export(model.eval(), tuple(inputs), dynamic_shapes=shapes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path

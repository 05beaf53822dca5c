"""ExecuTorch export (``.pte``, XNNPACK delegate), fp32 or INT8, verified in ExecuTorch's own runtime.

::

    path = export_executorch(model, (x,), "model.pte")                          # fp32, XNNPACK
    path = export_executorch(model, (x,), "model.int8.pte", quantize="int8", calib=[x1, x2])
    module = ExecuTorchModule(path)          # runs in executorch.runtime, never in torch
    logits = module(x_any_batch)

The pipeline is ExecuTorch's own: ``torch.export`` -> ``to_edge_transform_and_lower`` with the
``XnnpackPartitioner`` -> ``to_executorch``. INT8 is ExecuTorch's ``XNNPACKQuantizer`` through torchao's
pt2e flow (``prepare_pt2e``, calibration on ``calib``, ``convert_pt2e``), symmetric per-channel weights;
activations are quantized statically from the calibration data (``dynamic_activations=True`` quantizes
them per batch at run time instead, the usual choice for transformers).

ds adds (no library does these): ``_restore_integer_constants``, because pt2e's ``prepare_pt2e`` (torchao
0.18) lifts integer scalars such as MiniLM's ``arange(L) + 0`` to float constants, so position ids became
floats and the INT8 export of any such model failed; dict inputs (MiniLM's ``input_ids``/``attention_mask``);
a batch-size-agnostic module; the delegation count (:func:`lower_executorch`), so a test can assert that
XNNPACK took the graph.

Batch size: the program is exported with a dynamic batch ``Dim("batch", min=1, max=max_batch)``. ExecuTorch
1.5.1 under torch 2.13 plans the input buffers by the trace's example size rather than the Dim's maximum
(exporting a batch of 2 with max 64 gave a program that took at most 15 rows), so the example is repeated
to ``max_batch`` rows before tracing. :class:`ExecuTorchModule` reads the planned capacity from the
program and runs larger batches in chunks of that size; a program with a static batch (export without
``dynamic_batch``) gets its last chunk zero-padded and the padding rows dropped.
Tolerances (tests): fp32 max |ExecuTorch - torch| <= 1e-4 on CNN logits; INT8 argmax agreement.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from deepseek.export._variants import SingleFileModule, as_tuple, require
from deepseek.export.onnx import TensorInputs

INSTALL_HINT = "pip install 'deepseek-framework[executorch]'"
QUANTIZE_CHOICES = (None, "int8")


def _require_executorch() -> None:
    require("executorch.exir", f"ExecuTorch export needs the executorch package: {INSTALL_HINT}")


def _grow_batch(tensors: tuple[torch.Tensor, ...], rows: int) -> tuple[torch.Tensor, ...]:
    """Repeat the rows of every tensor (N, ...) cyclically to (rows, ...)."""
    index = torch.arange(rows) % tensors[0].shape[0]
    return tuple(t[index] for t in tensors)


@dataclass
class LoweredProgram:
    """An ExecuTorch program and how much of it XNNPACK took.

    ``delegated_nodes``: graph nodes inside XNNPACK subgraphs; ``subgraphs``: lowered modules;
    ``portable_ops``: the ops left to ExecuTorch's portable kernels (outside the delegate), op -> count.
    """

    buffer: bytes
    delegated_nodes: int
    subgraphs: int
    portable_ops: dict[str, int] = field(default_factory=dict)


def _delegation(graph_module: torch.fx.GraphModule) -> tuple[int, int, dict[str, int]]:
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    # getitem unpacks a delegate's outputs and sym_size reads the batch: bookkeeping, not compute
    portable = Counter(
        str(n.target).split("(")[0].split("::")[-1]
        for n in graph_module.graph.nodes
        if n.op == "call_function" and "getitem" not in str(n.target) and "sym_size" not in str(n.target)
        and "executorch_call_delegate" not in str(n.target)
    )  # fmt: skip
    return info.num_delegated_nodes, info.num_delegated_subgraphs, dict(portable)


def _restore_integer_constants(graph: torch.fx.GraphModule) -> None:
    """Cast back to integer the scalar constants that ``prepare_pt2e`` lifted to float tensors where the op
    is integer (MiniLM's ``position_ids = arange(L) + 0``), which otherwise index with floats and fail."""
    for node in graph.graph.nodes:
        const = getattr(graph, str(node.target), None) if node.op == "get_attr" else None
        if not isinstance(const, torch.Tensor) or not const.is_floating_point():
            continue
        outs = [u.meta.get("val") for u in node.users]
        wanted = {v.dtype for v in outs if isinstance(v, torch.Tensor) and not v.is_floating_point()}
        if len(wanted) == 1 and len(outs) == len(node.users) and all(isinstance(v, torch.Tensor) for v in outs):
            setattr(graph, str(node.target), const.to(wanted.pop()))


def _quantize_pt2e(
    graph: nn.Module, tensors: tuple, shapes: Any, calib: Sequence[Any], names: list[str], max_batch: int, dyn: bool
) -> nn.Module:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dyn)
    prepared = prepare_pt2e(torch.export.export(graph, tensors, dynamic_shapes=shapes).module(), XNNPACKQuantizer()
                            .set_global(config))  # fmt: skip
    _restore_integer_constants(prepared)
    with torch.no_grad():
        for batch in calib:
            batch = as_tuple(batch, names)
            for start in range(0, batch[0].shape[0], max_batch):  # the traced batch is at most max_batch
                prepared(*(t[start : start + max_batch] for t in batch))
    return convert_pt2e(prepared)


def lower_executorch(
    model: nn.Module,
    inputs: Any,
    *,
    quantize: str | None = None,
    calib: Sequence[Any] | None = None,
    input_names: Sequence[str] | None = None,
    max_batch: int = 32,
    dynamic_batch: bool = True,
    dynamic_activations: bool = False,
) -> LoweredProgram:
    """``model`` on ``inputs`` (tensor, tuple or dict of (N, ...) tensors) lowered to an XNNPACK ExecuTorch program.

    ``quantize="int8"`` needs ``calib``: a list of inputs like ``inputs`` (any batch size).
    """
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize={quantize!r} is not supported; choose one of {list(QUANTIZE_CHOICES)}")
    if quantize == "int8" and not calib:
        raise ValueError("quantize='int8' needs calib: a non-empty list of example inputs for calibration")
    if max_batch < 1:
        raise ValueError(f"max_batch={max_batch} must be >= 1")
    _require_executorch()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    names = list(input_names or (list(inputs) if isinstance(inputs, dict) else []))
    graph = TensorInputs(model, names).eval() if isinstance(inputs, dict) else model.eval()
    tensors = as_tuple(inputs, names)
    if dynamic_batch:
        tensors = _grow_batch(tensors, max_batch)
        batch = torch.export.Dim("batch", min=1, max=max_batch)
        per_input = tuple({0: batch} for _ in tensors)
        shapes: Any = (per_input,) if isinstance(graph, TensorInputs) else per_input
    else:
        shapes = None
    progress = io.StringIO()  # the lowering prints pass progress; shown only when it fails
    try:
        with contextlib.redirect_stdout(progress), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # deprecation notices from torch/torchao internals
            if quantize == "int8":
                graph = _quantize_pt2e(graph, tensors, shapes, calib or [], names, max_batch, dynamic_activations)
                shapes = per_input if dynamic_batch else None  # the quantized graph takes the tensors flat
            program = torch.export.export(graph, tensors, dynamic_shapes=shapes)
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            delegated, subgraphs, portable = _delegation(edge.exported_program().graph_module)
            buffer = edge.to_executorch().buffer
    except Exception as e:
        print(progress.getvalue(), end="")
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise RuntimeError(f"ExecuTorch export of {type(model).__name__} failed: {type(e).__name__}: {first}") from e
    return LoweredProgram(bytes(buffer), delegated, subgraphs, portable)


def export_executorch(
    model: nn.Module,
    inputs: Any,
    path: str | Path,
    *,
    quantize: str | None = None,
    calib: Sequence[Any] | None = None,
    input_names: Sequence[str] | None = None,
    max_batch: int = 32,
    dynamic_batch: bool = True,
    dynamic_activations: bool = False,
) -> Path:
    """Write ``model`` as an XNNPACK-delegated ExecuTorch program (``.pte``) to ``path``; returns the path.

    ``inputs``: a tensor, a tuple of tensors or a dict of tensors, batch first. The program takes 1 to
    ``max_batch`` rows (:class:`ExecuTorchModule` chunks larger batches). See :func:`lower_executorch`.
    """
    lowered = lower_executorch(model, inputs, quantize=quantize, calib=calib, input_names=input_names,
                               max_batch=max_batch, dynamic_batch=dynamic_batch,
                               dynamic_activations=dynamic_activations)  # fmt: skip
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(lowered.buffer)
    return path


class ExecuTorchModule(SingleFileModule, nn.Module):
    """A ``.pte`` program run by ExecuTorch's Python runtime (``executorch.runtime``) behind an ``nn.Module`` call.

    ``module(*tensors)`` or ``module({name: tensor})`` (``input_names`` order, else the dict's order) -> the
    first output (N, ...) as a CPU float tensor, for any N: batches larger than the program's planned capacity
    run in chunks; a static-batch program gets its last chunk zero-padded (the padding rows are dropped).
    """

    def __init__(self, path: str | Path, input_names: Sequence[str] | None = None) -> None:
        super().__init__()
        _require_executorch()
        from executorch.runtime import Runtime

        self.path, self.input_names = Path(path), list(input_names or [])
        self.method = Runtime.get().load_program(self.path).load_method("forward")
        meta = self.method.metadata
        self.input_shapes = [tuple(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())]
        self.capacity = self.input_shapes[0][0]
        self.static_batch: bool | None = None  # found on the first chunk smaller than the capacity

    def _run(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        rows = tensors[0].shape[0]
        if rows < self.capacity and self.static_batch is not False:
            padded = [torch.cat([t, t.new_zeros((self.capacity - rows, *t.shape[1:]))]) for t in tensors]
            if self.static_batch is None:
                try:
                    out = self.method.execute(tensors)[0]
                    self.static_batch = False
                    return out
                except RuntimeError:  # the program's batch is fixed: it refuses to resize its input
                    self.static_batch = True
            return self.method.execute(padded)[0][:rows]
        return self.method.execute(tensors)[0]

    def _chunks(self, tensors: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
        for start in range(0, tensors[0].shape[0], self.capacity):
            yield [t[start : start + self.capacity].contiguous() for t in tensors]

    @torch.no_grad()
    def forward(self, *inputs: Any) -> torch.Tensor:
        if len(inputs) == 1 and isinstance(inputs[0], dict):
            inputs = as_tuple(inputs[0], self.input_names or None)
        tensors = [t.detach().cpu() for t in inputs]
        outs = [self._run(chunk) for chunk in self._chunks(tensors)]
        return torch.cat([o.clone() for o in outs]).float()  # clone: the runtime reuses its output buffers


def executorch_variant(
    model: nn.Module,
    example: Any,
    workdir: str | Path,
    quantize: str | None = None,
    calib: Sequence[Any] | None = None,
    *,
    max_batch: int | None = None,
) -> ExecuTorchModule:
    """``model`` exported for XNNPACK (fp32 or ``quantize="int8"`` calibrated on ``calib``) and loaded in
    ExecuTorch's runtime. ``example``: a tensor, a tuple of tensors or a dict of tensors (MiniLM's inputs).
    The program takes up to ``max_batch`` rows at once (default: the example's batch, at least 32).
    Dict inputs (token ids: transformers) get INT8 with activations quantized per batch at run time: static
    activation scales gave MiniLM a cosine of 0.47 to fp32 where dynamic ones gave 0.99."""
    names = list(example) if isinstance(example, dict) else None
    rows = as_tuple(example, names)[0].shape[0]
    name = "model.int8.pte" if quantize == "int8" else "model.pte"
    path = export_executorch(model, example, Path(workdir) / name, quantize=quantize, calib=calib, input_names=names,
                             max_batch=max_batch or max(32, rows), dynamic_activations=names is not None)  # fmt: skip
    return ExecuTorchModule(path, input_names=names)

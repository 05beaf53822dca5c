"""TensorRT engines on NVIDIA GPUs through Torch-TensorRT's ahead-of-time (dynamo) path, verified against torch.

::

    path = export_tensorrt(model, (x,), "model.trt.ep", max_batch=64)       # x on the CPU or the GPU
    diff = verify_tensorrt(path, model, (x_other_batch,))                     # max |tensorrt - torch|
    served = torch.export.load(str(path)).module()                            # a torch module on cuda:0

``torch_tensorrt.compile(ir="dynamo")`` builds the engine from ``torch.export``'s graph and ``torch_tensorrt.save``
writes it inside an ExportedProgram, so the file loads with plain ``torch.export.load`` wherever Torch-TensorRT is
installed. ds adds the dynamic batch (``torch_tensorrt.Input`` with a min/opt/max range from the example batch) and the
check against torch; fp16 casts the model and its inputs (Torch-TensorRT's explicit typing follows the model's dtypes).

Needs a CUDA build of torch and ``torch-tensorrt`` matching it (2.13.x for torch 2.13); its TensorRT libraries come from
NVIDIA's package index (``pypi.nvidia.com``), so the package is not in any extra and CI does not install it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn


def _torch_tensorrt() -> Any:
    if not torch.cuda.is_available():
        raise ValueError("TensorRT needs an NVIDIA GPU: torch sees no CUDA device")
    try:
        import torch_tensorrt
    except ImportError:
        series = ".".join(torch.__version__.split("+")[0].split(".")[:2])  # torch-tensorrt's minor follows torch's
        raise ValueError(
            f"TensorRT needs torch-tensorrt {series}.x for this torch {torch.__version__}, with NVIDIA's index for its "
            f"libraries: pip install 'torch-tensorrt=={series}.*' --extra-index-url https://pypi.nvidia.com"
        ) from None
    return torch_tensorrt


def export_tensorrt(
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    path: str | Path,
    *,
    max_batch: int | None = None,
    fp16: bool = False,
) -> Path:
    """Compile ``model`` on ``inputs`` (tensors with the batch first) into a TensorRT engine saved at ``path``.

    The engine takes any batch from 1 to ``max_batch`` (default: the example's batch), tuned for the example's.
    ``fp16=True`` builds half-precision kernels (inputs of floating dtype are cast too).
    """
    trt = _torch_tensorrt()
    device = torch.device("cuda", torch.cuda.current_device())
    model = model.eval().to(device)
    tensors = [t.to(device) for t in inputs]
    if fp16:
        model = copy.deepcopy(model).half()  # the caller's model stays fp32
        tensors = [t.half() if t.is_floating_point() else t for t in tensors]
    batch = tensors[0].shape[0]
    top = max(batch, max_batch or batch)
    specs = [
        trt.Input(min_shape=(1, *t.shape[1:]), opt_shape=tuple(t.shape), max_shape=(top, *t.shape[1:]), dtype=t.dtype)
        for t in tensors
    ]
    engine = trt.compile(model, ir="dynamo", arg_inputs=specs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    trt.save(engine, str(path), arg_inputs=tensors)
    return path


@torch.no_grad()
def verify_tensorrt(path: str | Path, model: nn.Module, inputs: Sequence[torch.Tensor], *, fp16: bool = False) -> float:
    """Largest absolute difference between the saved engine's first output and ``model``'s (fp32) on ``inputs``;
    ``fp16``: the engine was built with ``fp16=True`` (its floating inputs are cast to half)."""
    _torch_tensorrt()  # registers the TensorRT ops that torch.export.load needs
    device = torch.device("cuda", torch.cuda.current_device())
    engine = torch.export.load(str(path)).module()
    tensors = [t.to(device) for t in inputs]
    floats = [t.half() if fp16 and t.is_floating_point() else t for t in tensors]
    got = _first(engine(*floats)).float()
    want = _first(model.eval().to(device)(*tensors)).float()
    return float((got - want).abs().max())


def _first(out: Any) -> torch.Tensor:
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out

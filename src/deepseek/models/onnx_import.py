"""ONNX models as trainable torch modules: the bridge from TensorFlow / Keras (``tf2onnx``) and other exporters.

::

    model = ds.models.from_onnx("digits_keras.onnx")   # a torch.fx.GraphModule (an nn.Module)
    ds.Trainer(model, ...).fit(train)                  # fine-tunes it; deepseek.export.export_onnx exports it again

The graph is rebuilt by ``onnx2torch`` (one torch module per ONNX node). ds adds what fine-tuning needs:
onnx2torch keeps the weights that feed ``MatMul``/``Add``/``Mul``... (how tf2onnx writes a Keras ``Dense``) as
frozen buffers, so those become ``nn.Parameter`` here (Conv and Gemm weights already are), and a one-line
``ValueError`` for a missing file, a file that is not an ONNX model or an op onnx2torch cannot convert.

Loading never executes code from the file: an ONNX model is a protobuf of tensors and a graph of standard ops,
parsed by ``onnx.load`` and mapped op by op onto onnx2torch's own modules (no pickle, no custom-op libraries), so
there is no ``trust_code`` switch to set.

onnx2torch imports torchvision at start-up for its two detection ops (``NonMaxSuppression``, ``RoiAlign``).
Where torchvision is absent (a CPU-only torch gets only CUDA torchvision wheels from PyPI, which cannot load
beside it), those two converters are left out and every other op still converts; a model using them gets the
unsupported-op error.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import types
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

# Ops whose floating-point initializer inputs are learned weights (a tf2onnx Dense is MatMul + Add): these
# become parameters. Shapes, indices and single numbers (epsilons, clip bounds, Resize scales) stay buffers.
WEIGHT_OPS = frozenset(
    {"MatMul", "Gemm", "Add", "Sub", "Mul", "Conv", "ConvTranspose", "PRelu", "Einsum",
     "LayerNormalization", "InstanceNormalization", "GroupNormalization"}
)  # fmt: skip

_TORCHVISION_CONVERTERS = ("onnx2torch.node_converters.nms", "onnx2torch.node_converters.roialign")


def _onnx2torch() -> Any:
    """The ``onnx2torch`` package; without torchvision, its two torchvision-backed converters are left out."""
    if "onnx2torch" in sys.modules:
        return sys.modules["onnx2torch"]
    if importlib.util.find_spec("onnx2torch") is None:
        raise ModuleNotFoundError(
            "from_onnx needs onnx2torch: pip install onnx2torch (with a CPU-only torch: pip install --no-deps "
            "onnx2torch, as PyPI's torchvision wheels need CUDA torch)",
            name="onnx2torch",
        )
    if importlib.util.find_spec("torchvision") is None:
        for name in _TORCHVISION_CONVERTERS:  # empty modules in their place: `from ... import *` adds nothing
            sys.modules.setdefault(name, types.ModuleType(name))
    try:
        return importlib.import_module("onnx2torch")
    except RuntimeError as exc:  # torchvision's ops failing to register: a wheel built for another torch
        raise ImportError(
            f"onnx2torch failed to import ({exc}): torchvision does not match this torch (PyPI's CUDA wheels beside "
            "a CPU-only torch do this); uninstall torchvision or install the build that matches torch"
        ) from None


def _load(path: Path) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise ValueError(f"from_onnx: path '{path}' is not a file; give an .onnx model file")
    try:
        model = onnx.load(str(path))  # reads external weights (<name>.data) beside the file too
        onnx.checker.check_model(model)
    except (DecodeError, onnx.checker.ValidationError, RuntimeError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"from_onnx: '{path}' is not a valid ONNX model ({reason})") from None
    if not model.graph.node:
        raise ValueError(f"from_onnx: '{path}' is not an ONNX model (its graph has no nodes)")
    return model


def _check_ops(model: Any, path: Path) -> None:
    """Raise one ValueError naming every op (with its opset) that onnx2torch has no converter for."""
    from onnx2torch.node_converters import get_converter

    opsets = {o.domain: o.version for o in model.opset_import}
    missing = set()
    for node in model.graph.node:
        version = opsets.get(node.domain, 0)
        try:
            get_converter(domain=node.domain, operation_type=node.op_type, version=version)
        except NotImplementedError:
            missing.add(f"{node.domain + '.' if node.domain else ''}{node.op_type} (opset {version})")
    if missing:
        raise ValueError(
            f"from_onnx: '{path}' uses ops onnx2torch cannot convert: {', '.join(sorted(missing))} "
            "(for a standard op at a newer opset, export the model again at a lower one, such as 17)"
        )


def _weight_initializers(model: Any) -> set[str]:
    """Names of floating-point initializers with more than one element that feed a :data:`WEIGHT_OPS` node."""
    from onnx import TensorProto

    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
    candidates = {t.name for t in model.graph.initializer if t.data_type in floats and math.prod(t.dims) > 1}
    return {
        name for node in model.graph.node if node.op_type in WEIGHT_OPS for name in node.input if name in candidates
    }


def _make_trainable(module: torch.fx.GraphModule, weights: set[str]) -> int:
    """Turn the buffers holding ``weights`` (ONNX initializer names) into parameters; returns how many."""
    container = module.get_submodule("initializers")
    promoted: set[str] = set()
    for node in module.graph.nodes:
        if node.op != "call_module":
            continue
        mapping = getattr(module.get_submodule(node.target), "onnx_mapping", None)
        if mapping is None:
            continue
        # args follow the ONNX node's inputs in order (onnx2torch's converter builds them so)
        for arg, value in zip(node.args, mapping.inputs):
            if isinstance(arg, torch.fx.Node) and arg.op == "get_attr" and value in weights:
                promoted.add(arg.target.rsplit(".", 1)[-1])
    for name in sorted(promoted):
        if name in container._buffers:
            tensor = container._buffers.pop(name)
            container.register_parameter(name, nn.Parameter(tensor.detach().clone()))
    for sub in module.modules():  # the ONNX names were needed only for the mapping above
        if "onnx_mapping" in sub.__dict__:
            del sub.__dict__["onnx_mapping"]
    return len(promoted)


def from_onnx(path: str | Path) -> torch.fx.GraphModule:
    """The ONNX model in ``path`` as a trainable ``torch.fx.GraphModule``, in training mode.

    Inputs and outputs keep the ONNX graph's order and layout (a Keras model converted by tf2onnx takes
    channels-last images, (N, H, W, C)). Learned weights are parameters with ``requires_grad``; see
    :data:`WEIGHT_OPS`. Raises ``ValueError`` for a missing file, a file that is not a valid ONNX model, or
    ops onnx2torch has no converter for (each named with its opset).
    """
    path = Path(path)
    model = _load(path)
    onnx2torch = _onnx2torch()
    _check_ops(model, path)
    try:
        module = onnx2torch.convert(model, attach_onnx_mapping=True)
    except NotImplementedError as exc:  # a converter that exists but not for this node's attributes
        raise ValueError(f"from_onnx: '{path}': onnx2torch cannot convert it: {exc}") from None
    _make_trainable(module, _weight_initializers(model))
    return module.train()

"""ONNX Runtime's transformer graph fusions (``onnxruntime.transformers.optimizer``), saved and counted.

::

    fused = fuse_transformer_onnx("model.onnx", "model.fused.onnx", num_heads=12, hidden_size=384)
    fused_ops(fused)                       # {"Attention": 6, "SkipLayerNormalization": 12, ...}
    module = fused_onnx_variant(model, {"input_ids": ids, "attention_mask": mask}, workdir)  # an OnnxModule

The optimizer (``model_type="bert"``) rewrites BERT-like subgraphs into ORT's contrib kernels: Attention
(Q/K/V projections, scaled softmax and the mask in one op), EmbedLayerNormalization, SkipLayerNormalization
(residual add + layer norm), BiasGelu / FastGelu. ds adds: the export that lets those patterns match,
the attention shape read from the model's own config, and a count of what fused.

Why :func:`fused_onnx_variant` uses the TorchScript exporter: measured on MiniLM (torch 2.13, onnxruntime
1.32, transformers 5.24), the dynamo exporter's graph fuses only SkipLayerNormalization (12) and BiasGelu (6),
never Attention: with SDPA, the softmax scale is folded into two constant Muls (ORT's "sdpa" pattern wants
Mul(Sqrt)), and with eager attention the mask is Where(And(GatherND(Cast(mask)))), which none of ORT's mask
patterns match. ``torch.onnx.export(dynamo=False)`` with transformers' eager attention gives Attention (6),
EmbedLayerNormalization (1), SkipLayerNormalization (12) and BiasGelu (6). Its Reshape shapes are computed, so
ORT cannot detect the head count: it is read from the model's config (``num_attention_heads``). Where the
TorchScript exporter fails, the dynamo export is fused instead (fewer fusions; :func:`fused_ops` says which).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from deepseek.export.onnx import OnnxModule, TensorInputs, export_onnx

CONTRIB_DOMAIN = "com.microsoft"  # ORT's own (fused) kernels live in this ONNX domain


def fuse_transformer_onnx(src: str | Path, dst: str | Path, *, num_heads: int = 0, hidden_size: int = 0) -> Path:
    """ORT's BERT fusions applied to the ONNX model ``src``, saved at ``dst``; 0 = let ORT detect the shape.

    Only the fusions are applied (``opt_level=0``): ORT's own graph optimizations run when a session loads
    the file, so it stays portable (level-99 files hold hardware-specific layouts)."""
    from onnxruntime.transformers.optimizer import optimize_model

    quiet = logging.getLogger("onnxruntime.transformers")  # "Failed to detect num_heads" and the like
    level, quiet.level = quiet.level, logging.ERROR
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the symbolic shape inference prints its failures
            optimized = optimize_model(
                str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=0
            )
    finally:
        quiet.level = level
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    optimized.save_model_to_file(str(dst), use_external_data_format=False)
    return dst


def fused_ops(path: str | Path) -> dict[str, int]:
    """How many nodes of each ORT contrib (fused) op type the model at ``path`` holds, most frequent first."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return dict(Counter(n.op_type for n in graph.node if n.domain == CONTRIB_DOMAIN).most_common())


def attention_dims(model: nn.Module) -> tuple[int, int]:
    """``(num_heads, hidden_size)`` from the first submodule with a transformers-style ``config``; ``(0, 0)``
    (ORT detects them) when there is none."""
    for module in model.modules():
        config = getattr(module, "config", None)
        heads, hidden = getattr(config, "num_attention_heads", 0), getattr(config, "hidden_size", 0)
        if isinstance(heads, int) and isinstance(hidden, int) and heads and hidden:
            return heads, hidden
    return 0, 0


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[nn.Module]:
    """transformers models inside ``model`` switched to eager (MatMul/Softmax) attention for the block, then back."""
    switched = []
    for module in model.modules():
        config = getattr(module, "config", None)
        current = getattr(config, "_attn_implementation", None)
        if current not in (None, "eager") and hasattr(module, "set_attn_implementation"):
            module.set_attn_implementation("eager")
            switched.append((module, current))
    try:
        yield model
    finally:
        for module, current in switched:
            module.set_attn_implementation(current)


def _export_torchscript(model: nn.Module, tensors: tuple[torch.Tensor, ...], names: list[str], path: Path) -> Path:
    """The TorchScript exporter, batch axis dynamic (see the module docstring for why not dynamo here)."""
    with eager_attention(model), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice and tracer warnings
        torch.onnx.export(
            model, tensors, str(path), dynamo=False, input_names=names, output_names=["output"],
            dynamic_axes={n: {0: "batch"} for n in names}, opset_version=17,
        )  # fmt: skip
    return path


def fused_onnx_variant(model: nn.Module, example: Any, workdir: str | Path) -> OnnxModule:
    """``model`` exported (any batch size), fused by :func:`fuse_transformer_onnx` and loaded in ONNX Runtime.

    ``example``: a dict of tensors (MiniLM's ``input_ids``/``attention_mask``), a tensor or a tuple of them.
    The returned module's ``fused_ops`` (dict) and ``exporter`` ("torchscript" or "dynamo") say what happened.
    fp32 tolerance: cosine to torch >= 0.9999 (tests/export/test_ort_fusion.py)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if isinstance(example, dict):
        names, tensors = list(example), tuple(example.values())
        wrapped: nn.Module = TensorInputs(model, names).eval()
    else:
        tensors = example if isinstance(example, tuple) else (example,)
        names = ["input"] if len(tensors) == 1 else [f"input_{i}" for i in range(len(tensors))]
        wrapped = model.eval()
    src = workdir / "model.unfused.onnx"
    try:
        _export_torchscript(wrapped, tensors, names, src)
        exporter = "torchscript"
    except Exception:  # noqa: BLE001 - the legacy exporter may be gone or fail on a graph: dynamo still fuses some
        export_onnx(wrapped, tensors, src, input_names=names, dynamic={n: {0: "batch"} for n in names})
        exporter = "dynamo"
    heads, hidden = attention_dims(model)
    path = fuse_transformer_onnx(src, workdir / "model.fused.onnx", num_heads=heads, hidden_size=hidden)
    module = OnnxModule(path)
    module.fused_ops, module.exporter = fused_ops(path), exporter
    return module

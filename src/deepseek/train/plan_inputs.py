"""The plan's model and activation estimate, both on the meta device (no memory for weights or activations).

Activation estimate: one forward pass of a per-rank batch (``data.batch_size`` copies of the first training
sample, moved to the meta device) under ``torch.autograd.graph.saved_tensors_hooks``; the estimate is the sum
of ``numel x element_size`` of every tensor autograd saves for backward (a view counts as the storage it holds,
once), parameters and views of them excluded. Gradient checkpointing (``train.gradient_checkpointing``) is
applied first, so its savings show. Mixed precision is not modelled (fp32 activations: an upper bound for
bf16/fp16). Kernels differ by device (CPU or flash attention save their own): an estimate, not a measurement.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.utils._pytree import tree_map

from deepseek.config import Config
from deepseek.data import build_dataset
from deepseek.runs import build_model


def meta_model(cfg: Config) -> nn.Module:
    """The config's model built on the meta device: shapes and dtypes, no storage."""
    with torch.device("meta"):
        model = build_model(cfg)
    if cfg.train.gradient_checkpointing and callable(getattr(model, "gradient_checkpointing_enable", None)):
        model.gradient_checkpointing_enable()
    return model


def sample_batch(cfg: Config) -> Any:
    """A per-rank batch of model inputs on the meta device: the first training sample, ``batch_size`` times."""
    from torch.utils.data import default_collate

    splits = build_dataset(cfg.data.name, **cfg.data.kwargs)
    sample = splits.train[0]
    inputs = sample[0] if isinstance(sample, (tuple, list)) else sample
    batch = default_collate([inputs] * cfg.data.batch_size)
    return tree_map(lambda t: t.to("meta") if torch.is_tensor(t) else t, batch)


def activation_bytes(model: nn.Module, inputs: Any) -> int:
    """Bytes autograd saves for backward in ``model(inputs)`` (parameters excluded), on the meta device."""
    params = {id(p) for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t if t._base is None else t._base  # a view holds its base's storage: count that, once
        if id(base) not in params:  # a weight's transpose saved by a matmul costs nothing
            saved[id(base)] = base.numel() * base.element_size()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(inputs)
    del out
    return sum(saved.values())


def estimate_activations(cfg: Config, model: nn.Module) -> int | None:
    """:func:`activation_bytes` of a per-rank batch, or None where the data or the forward cannot run on meta."""
    try:
        return activation_bytes(model, sample_batch(cfg))
    except Exception:  # noqa: BLE001 - data-dependent control flow (.item()) or a dataset that needs a download
        return None


def boundary_shape(model: nn.Module, blocks: nn.ModuleList | None, inputs: Any) -> tuple[tuple[int, ...], int] | None:
    """(shape, element size) of the first block's output for ``inputs`` (``(N, L, dim)`` for a transformer):
    what a pipeline stage sends and a tensor-parallel block all-reduces. None without blocks, or where the
    forward cannot run on the meta device."""
    if blocks is None or len(blocks) == 0:
        return None
    seen: list[torch.Tensor] = []

    def grab(module: nn.Module, args: Any, out: Any) -> None:
        first = out[0] if isinstance(out, (tuple, list)) else out
        if torch.is_tensor(first) and not seen:
            seen.append(first)

    handle = blocks[0].register_forward_hook(grab)
    try:
        with torch.no_grad():
            model(inputs)
    except Exception:  # noqa: BLE001 - as estimate_activations: data-dependent control flow on meta
        return None
    finally:
        handle.remove()
    return (tuple(seen[0].shape), seen[0].element_size()) if seen else None

"""Batch plumbing for the training loop: device moves, accumulation windows, loss averaging."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import torch


def move_to(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) tuple/list/dict batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(move_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if callable(getattr(batch, "to", None)):  # objects that move their own tensors: ds.data.graph.Graph batches
        return batch.to(device)
    return batch


def windows(batches: Iterable[Any], size: int) -> Iterator[tuple[list[Any], bool]]:
    """Accumulation windows of ``size`` micro-batches, each with "is this the epoch's last" (one window of look-ahead)."""
    it = iter(batches)
    current = list(islice(it, size))
    while current:
        following = list(islice(it, size))
        yield current, not following
        current = following


def mean_loss(values: list[Any]) -> float:
    """Mean of Python floats or of device scalars (one transfer for all of them)."""
    if not values:
        return math.nan
    if isinstance(values[0], float):
        return sum(values) / len(values)
    return torch.stack(values).float().mean().item()


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` of a default-step batch; a clear error for any other batch type."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(
        f"the default step expects (inputs, targets) batches, got {type(batch).__name__}; "
        "pass step_fn(model, batch) -> loss | (loss, outputs, targets) for other batch types"
    )

"""The validation pass: loss and metrics over a loader, summed across ranks before dividing."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager as ContextManager
from typing import Any

import torch
import torch.nn as nn

from deepseek.train.batching import move_to
from deepseek.train.distributed import DistInfo, all_reduce_sum
from deepseek.train.metrics import batch_size_of

EvalStep = Callable[[nn.Module, Any], tuple[torch.Tensor, Any, Any]]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Iterable[Any],
    eval_step: EvalStep,
    metrics: Sequence[Any],
    *,
    device: torch.device,
    autocast: Callable[[], ContextManager[Any]],
    dist: DistInfo = DistInfo(),
) -> dict[str, float]:
    """``{"val/loss": ..., "val/<metric.name>": ...}`` of ``model`` (in eval mode) over ``data``.

    ``eval_step(model, batch) -> (mean loss, outputs, targets)``; metrics see outputs as float32.
    The model is called directly (never through DDP), so ranks may hold uneven validation shards.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64)
    for m in metrics:
        m.reset()
    for batch in data:
        if batch_size_of(batch) == 0:  # a rank's empty share of a streamed split's end: its mean loss is nan
            continue
        batch = move_to(batch, device)
        with autocast():
            loss, outputs, targets = eval_step(model, batch)
        n = batch_size_of(batch)
        sums += torch.tensor([float(loss) * n, n], dtype=torch.float64)
        if outputs is not None and metrics:
            outputs = as_float32(outputs)
            for m in metrics:
                m.update(outputs, targets)
    all_reduce_sum(sums, dist)
    result = {"val/loss": sums[0].item() / max(sums[1].item(), 1.0)}
    for m in metrics:
        if hasattr(m, "state"):
            all_reduce_sum(m.state, dist)
        result[f"val/{m.name}"] = float(m.compute())
    model.train(was_training)
    return result


def as_float32(outputs: Any) -> Any:
    """Outputs as metrics see them: a tensor as float32; in a tuple, list or dict (a VAE's ``(recon, mu,
    logvar)``) each floating tensor as float32 and other items (e.g. integer ids) as they are."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    if isinstance(outputs, (tuple, list)):
        items = [_floating_as_float32(o) for o in outputs]
        return type(outputs)(*items) if hasattr(outputs, "_fields") else type(outputs)(items)  # namedtuple
    if isinstance(outputs, dict):
        return {k: _floating_as_float32(v) for k, v in outputs.items()}
    return outputs


def _floating_as_float32(item: Any) -> Any:
    return item if isinstance(item, torch.Tensor) and not item.is_floating_point() else as_float32(item)

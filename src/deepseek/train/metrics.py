"""Registered metrics (the losses are in :mod:`deepseek.train.losses`).

A metric is any object with ``update(output, target)``, ``compute() -> float`` and ``reset()``.
If it also has a ``state`` tensor of sums, the Trainer all-reduces it across ranks before
``compute()``, so validation under DDP reports the metric of the whole validation set.
"""

from __future__ import annotations

from typing import Any

import torch

from deepseek.registry import register_metric


class SumRatio:
    """Base for metrics of the form sum(numerator) / sum(denominator); ``state = [num, den]``."""

    def __init__(self) -> None:
        self.state = torch.zeros(2, dtype=torch.float64)

    def reset(self) -> None:
        self.state.zero_()

    def compute(self) -> float:
        num, den = self.state.tolist()
        return num / den if den else float("nan")


@register_metric("accuracy", aliases=("acc",))
class Accuracy(SumRatio):
    """Top-k classification accuracy from logits ``(N, C)`` and integer targets ``(N,)``."""

    name = "accuracy"

    def __init__(self, top_k: int = 1) -> None:
        super().__init__()
        self.top_k = top_k

    @torch.no_grad()
    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        if self.top_k == 1:
            correct = (output.argmax(dim=-1) == target).sum()
        else:
            top = output.topk(self.top_k, dim=-1).indices
            correct = (top == target.unsqueeze(-1)).any(dim=-1).sum()
        self.state += torch.stack([correct.double().cpu(), torch.tensor(float(target.numel()), dtype=torch.float64)])


@register_metric("mae")
class MeanAbsoluteError(SumRatio):
    """Mean absolute error between outputs and targets of the same shape."""

    name = "mae"

    @torch.no_grad()
    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        err = (output.float() - target.float()).abs()
        self.state += torch.stack([err.sum().double().cpu(), torch.tensor(float(err.numel()), dtype=torch.float64)])


def batch_size_of(batch: Any) -> int:
    """Number of samples in a batch: dim 0 of its first tensor (tuple, list, dict or tensor)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, (tuple, list)):
        for item in batch:
            if isinstance(item, torch.Tensor):
                return item.shape[0]
            if isinstance(item, (tuple, list, dict)):
                return batch_size_of(item)
    if isinstance(batch, dict):
        for item in batch.values():
            return batch_size_of(item)
    raise TypeError(f"cannot tell the batch size of a {type(batch).__name__}: it holds no tensor")
